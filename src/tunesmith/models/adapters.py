"""Apply the fine-tuning method through PEFT (LoRA, DoRA) or unfreeze everything (full)."""

from __future__ import annotations

from tunesmith.config import MethodConfig
from tunesmith.errors import ConfigError

# target_modules: auto, per architecture: every attention and MLP projection, the QLoRA paper's finding
# that adapting all linear layers matters more than the rank.
AUTO_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
}


def target_modules(model, setting: str | list[str]) -> str | list[str]:
    if isinstance(setting, list):
        return setting
    if setting == "all-linear":
        return "all-linear"
    return AUTO_TARGETS.get(model.config.model_type, "all-linear")


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def apply_method(model, method: MethodConfig, device: str):
    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method.kind == "qlora":
        raise ConfigError("method.kind 'qlora' needs a CUDA GPU with bitsandbytes, and this version trains "
                          "lora, dora and full only",
                          "set method.kind: lora (same adapters on a full-precision base; fits in memory on "
                          "this model size)")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=method.r, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout,
                        target_modules=target_modules(model, method.target_modules), task_type="CAUSAL_LM",
                        use_dora=method.kind == "dora")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"method.target_modules does not match this model: {str(exc).splitlines()[0]}",
                          "set method.target_modules: auto, or list module names that exist in the model") from None
