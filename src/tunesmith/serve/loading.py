"""What to serve: a run directory (base model + LoRA adapter, merged once at load) or an exported Hugging Face
model folder (`tunesmith export --format merged`, or any causal LM folder with config.json + tokenizer).

The loader is chosen by task from `LOADERS`, so classification runs can plug in later: a loader returns a
`Served` whose `kind` says which endpoints the server exposes ("generate": /v1/chat/completions and
/v1/completions; "classify": /v1/classify).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError, RunDirError

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Served:
    kind: str  # "generate" | "classify"
    model_id: str  # what /v1/models lists and requests must name
    model: Any
    tokenizer: Any
    source: Path
    system_prompt: str | None  # prepended when a request has no system message, as in training
    max_context: int  # positions the model supports (prompt + generated)


def pick_dtype(setting: str, device: str):
    """auto: float32 on CPU, bfloat16 on CUDA.

    float32 on CPU serves the merged weights exactly (the LoRA update is merged in fp32). Whether bf16 weights
    decode faster here is unsettled: two runs of SmolLM2-135M decode steps on the shared 2-core AVX512-BF16 box
    disagreed (fp32 6x faster in one, bf16 ~1.2x faster in the other), the other jobs' noise being larger than
    the difference. `--dtype bfloat16` is there to try; note that `tunesmith eval` generates with bf16 weights
    on such CPUs (train/precision.py), so its greedy outputs can differ slightly from a float32 server's."""
    import torch

    if setting == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, setting)


def _device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA GPU is visible", "use --device cpu (or auto)")
    return setting


def _max_context(model) -> int:
    model = getattr(model, "model", model)  # a Classifier wraps its model
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def _load_generation_run(run_dir: Path, config, dtype, device: str) -> tuple[Any, Any]:
    from tunesmith.data.tokenize import ensure_chat_template
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve

    adapter_dir = run_dir / "adapter"
    if not adapter_dir.is_dir():
        raise RunDirError(f"'{adapter_dir}' is missing: the run has not finished training",
                          "run `tunesmith train PROJECT.yaml` (or `--resume` an interrupted run) first")
    tokenizer = load_tokenizer(str(adapter_dir))
    ensure_chat_template(tokenizer)
    if (adapter_dir / "adapter_config.json").is_file():
        import torch
        from peft import PeftModel

        # Merge in fp32, then cast: folding B·A into bf16 weights directly would round the update twice.
        base = load_causal_lm(resolve(config.model.base).path, torch.float32)
        model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        model = model.to(dtype)
    else:  # full fine-tuning saved the whole model in adapter/
        model = load_causal_lm(str(adapter_dir), dtype)
    return model.to(device).eval(), tokenizer


def _load_export(folder: Path, dtype, device: str) -> tuple[Any, Any]:
    from tunesmith.data.tokenize import ensure_chat_template
    from tunesmith.models.load import load_causal_lm, load_tokenizer

    architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise ModelError(f"'{folder}' holds a {architectures[0]}, not a text-generation model; serving "
                         "classifiers (/v1/classify) is not built yet",
                         "serve a generation run or a merged export of one")
    try:
        tokenizer = load_tokenizer(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"'{folder}' has no usable tokenizer: {str(exc).splitlines()[0]}",
                         "export with `tunesmith export RUN_DIR --format merged`, which saves the tokenizer") from None
    ensure_chat_template(tokenizer)
    return load_causal_lm(str(folder), dtype).to(device).eval(), tokenizer


def _generation_loader(source: Path, config, dtype, device: str) -> tuple[str, Any, Any]:
    model, tokenizer = _load_generation_run(source, config, dtype, device)
    return "generate", model, tokenizer


def _classifier_loader(source: Path, config, dtype, device: str) -> tuple[str, Any, Any]:
    """A classification, multilabel or regression run: POST /v1/classify (labels or values + probabilities)."""
    from tunesmith.models.classifier import load_classifier

    classifier = load_classifier(source, device)
    return "classify", classifier, classifier.tokenizer


# task -> loader returning (kind, model, tokenizer); a classifier loader plugs in here.
LOADERS: dict[str, Callable[..., tuple[str, Any, Any]]] = {
    "generation": _generation_loader,
    "classification": _classifier_loader,
    "multilabel": _classifier_loader,
    "regression": _classifier_loader,
}


def load_served(source: Path, *, model_id: str | None = None, dtype: str = "auto", device: str = "auto",
                system_prompt: str | None = None) -> Served:
    source = Path(source)
    if not source.is_dir():
        raise RunDirError(f"'{source}' is not a folder",
                          "pass a run directory (written by `tunesmith train`) or an exported model folder")
    device = _device(device)
    torch_dtype = pick_dtype(dtype, device)
    if (source / "config.yaml").is_file():
        from tunesmith.runs import load_run_config

        config = load_run_config(source)
        kind, model, tokenizer = LOADERS[config.task](source, config, torch_dtype, device)
        default_id, prompt = config.name, config.data.system_prompt
    elif is_generative_export(source):  # `tunesmith export` of a generative classifier: /v1/classify
        from tunesmith.models.genclass import load_generative_classifier

        model = load_generative_classifier(source, device)
        kind, tokenizer, default_id, prompt = "classify", model.tokenizer, source.resolve().name, None
    elif (source / "config.json").is_file():
        model, tokenizer = _load_export(source, torch_dtype, device)
        kind, default_id, prompt = "generate", source.resolve().name, None
    else:
        raise RunDirError(f"'{source}' is neither a run directory (config.yaml) nor a model folder (config.json)",
                          "pass the folder `tunesmith train` wrote, or one `tunesmith export --format merged` wrote")
    return Served(kind, model_id or default_id, model, tokenizer, source, system_prompt or prompt,
                  _max_context(model))


def is_generative_export(folder: Path) -> bool:
    """An exported decoder with a generative classifier's labels.json beside it."""
    labels = Path(folder) / "labels.json"
    return (Path(folder) / "config.json").is_file() and labels.is_file() and \
        json.loads(labels.read_text()).get("classifier") == "generative"


def render_chat(served: Served, messages: list[dict]) -> list[int]:
    """Token ids of a conversation up to the assistant's turn, rendered exactly as training and eval do."""
    from tunesmith.data.tokenize import prompt_text, with_system_prompt

    text = prompt_text(served.tokenizer, with_system_prompt(messages, served.system_prompt))
    return served.tokenizer(text, add_special_tokens=False)["input_ids"]


def render_completion(served: Served, prompt: str) -> list[int]:
    """A raw prompt, tokenized as a plain text (with the tokenizer's BOS where it adds one)."""
    return served.tokenizer(prompt)["input_ids"]
