"""Apply the fine-tuning method through PEFT (LoRA, DoRA, rsLoRA, QLoRA) or unfreeze weights (full).

Two entry points: `apply_method` for a causal LM (generation) and `apply_task_method` for a sequence
classification / regression model, whose freshly initialized head must train in full beside the adapters.
"""

from __future__ import annotations

from tunesmith.config import MethodConfig
from tunesmith.errors import ConfigError

# target_modules: auto, per architecture: every attention and MLP projection, the QLoRA paper's finding
# that adapting all linear layers matters more than the rank. GPT-2 uses Conv1D layers (c_attn holds q, k and v
# in one matrix; c_proj is both the attention output and the MLP output; c_fc the MLP input). BERT/RoBERTa name
# their attention projections query/key/value and every output and MLP projection `dense`.
_DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_ENCODER_PROJECTIONS = ["query", "key", "value", "dense"]
AUTO_TARGETS: dict[str, list[str]] = {
    "llama": _DECODER_PROJECTIONS,
    "mistral": _DECODER_PROJECTIONS,
    "qwen2": _DECODER_PROJECTIONS,
    "qwen3": _DECODER_PROJECTIONS,
    "gemma": _DECODER_PROJECTIONS,
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": _ENCODER_PROJECTIONS,
    "roberta": _ENCODER_PROJECTIONS,
    "xlm-roberta": _ENCODER_PROJECTIONS,
    "electra": _ENCODER_PROJECTIONS,
}


def target_modules(model, setting: str | list[str]) -> str | list[str]:
    if isinstance(setting, list):
        return setting
    if setting == "all-linear":
        return "all-linear"
    return AUTO_TARGETS.get(model.config.model_type, "all-linear")


def unwrap(model):
    """The transformers model inside a PEFT wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def describe_parameters(model, kind: str) -> str:
    """The line printed at the start of training: how much of the model this method trains."""
    trainable, total = count_parameters(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%), method {kind}"


def check_qlora(device: str) -> None:
    """QLoRA stores the frozen base in 4-bit NF4 through bitsandbytes, whose kernels need CUDA."""
    if device != "cuda":
        raise ConfigError("method.kind 'qlora' needs a CUDA GPU (bitsandbytes 4-bit kernels), and this run is on "
                          "the CPU",
                          "set method.kind: lora (the same adapters on a full-precision base; a model this size "
                          "fits in memory without 4-bit weights)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("method.kind 'qlora' needs the bitsandbytes package, which is not installed",
                          "pip install bitsandbytes (on the CUDA machine), or set method.kind: lora") from None


def quantization_config(method: MethodConfig, device: str):
    """The 4-bit loading settings for qlora (None for other methods): NF4, double quantization, bf16 compute,
    as in the QLoRA paper. Pass it as from_pretrained(quantization_config=...)."""
    if method.kind != "qlora":
        return None
    check_qlora(device)
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _lora_config(method: MethodConfig, targets, task_type: str, modules_to_save: list[str] | None = None):
    from peft import LoraConfig

    return LoraConfig(r=method.r, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout,
                      target_modules=targets, task_type=task_type, use_dora=method.kind == "dora",
                      use_rslora=method.use_rslora, modules_to_save=modules_to_save)


def _wrap(model, config):
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"method.target_modules does not match this model: {str(exc).splitlines()[0]}",
                          "set method.target_modules: auto, or list module names that exist in the model") from None


def _prepare_quantized(model, method: MethodConfig, device: str):
    """qlora: the base must already be loaded in 4-bit (see quantization_config)."""
    check_qlora(device)
    if not getattr(model, "is_loaded_in_4bit", False):
        raise ConfigError("method.kind 'qlora' needs the base model loaded in 4-bit, and this model was loaded "
                          "in full precision",
                          "set method.kind: lora, or load the model with quantization_config(...)")
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model)


def apply_method(model, method: MethodConfig, device: str):
    """A causal LM for generation: LoRA/DoRA (optionally rsLoRA) adapters, or every weight trainable."""
    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method.kind == "qlora":
        model = _prepare_quantized(model, method, device)
    config = _lora_config(method, target_modules(model, method.target_modules), "CAUSAL_LM")
    return _wrap(model, config)


# ---- sequence classification / regression models -------------------------------------------------------


def transformer_layers(model):
    """The stack of transformer blocks (BERT encoder.layer, Llama layers, GPT-2 h): the ModuleList whose
    length is the config's layer count."""
    import torch

    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(f"cannot find the transformer layers of this {model.config.model_type} model",
                      "use method.freeze: none or head_only")


def _layer_targets(model, names: list[str], head_modules: list[str]) -> list[str]:
    """Full module names that end with one of `names`, outside the head: RoBERTa's head has its own `dense`,
    which must train in full (modules_to_save), not through an adapter."""
    import torch

    out = []
    for full, module in model.named_modules():
        parts = full.split(".")
        if any(h in parts for h in head_modules):
            continue
        if parts[-1] in names and len(list(module.children())) == 0 and any(
                isinstance(p, torch.Tensor) for p in module.parameters(recurse=False)):
            out.append(full)
    return out


def apply_task_method(model, method: MethodConfig, device: str, head_modules: list[str]):
    """A sequence classification model: adapters on the layers with the head (`head_modules`, e.g.
    ["classifier", "pooler"]) trained in full, or a full-model variant (all, head only, head + top k layers)."""
    if method.freeze != "none" and method.kind != "full":
        raise ConfigError(f"method.freeze: {method.freeze} applies to method.kind: full, not {method.kind}",
                          "set method.kind: full, or method.freeze: none")
    if method.kind == "full":
        trainable_layers = []
        if method.freeze == "top_k":
            layers = transformer_layers(model)
            k = method.unfreeze_top_k_layers
            if not 0 <= k <= len(layers):
                raise ConfigError(f"method.unfreeze_top_k_layers is {k}, the model has {len(layers)} layers",
                                  f"set it between 0 and {len(layers)}")
            trainable_layers = list(layers)[len(layers) - k:]
        for name, p in model.named_parameters():
            in_head = any(h in name.split(".") for h in head_modules)
            p.requires_grad_(method.freeze == "none" or in_head)
        for layer in trainable_layers:
            for p in layer.parameters():
                p.requires_grad_(True)
        return model
    if method.kind == "qlora":
        model = _prepare_quantized(model, method, device)
    setting = target_modules(model, method.target_modules)
    targets = setting if setting == "all-linear" else _layer_targets(model, setting, head_modules)
    if not targets:
        raise ConfigError(f"method.target_modules {setting} matches no layer of this {model.config.model_type} "
                          "model", "set method.target_modules: auto, or list module names that exist in the model")
    return _wrap(model, _lora_config(method, targets, "SEQ_CLS", list(head_modules)))
