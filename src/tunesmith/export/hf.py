"""Hugging Face formats: the merged model (a standard transformers folder that vLLM, TGI and plain
`from_pretrained` load with no tunesmith installed) and the PEFT adapter alone, pointed at its base."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from tunesmith.errors import ConfigError
from tunesmith.export.source import RunSource
from tunesmith.models.load import load_causal_lm

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def merged_dtype(setting: str, source: RunSource) -> str:
    """--dtype auto: the dtype the base checkpoint declares (bf16 for most hub models), else fp32."""
    if setting != "auto":
        return setting
    config_file = Path(source.base_path) / "config.json"
    base = json.loads(config_file.read_text()) if config_file.is_file() else {}
    declared = base.get("dtype") or base.get("torch_dtype")  # transformers 5 / 4 spelling
    by_name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    return by_name.get(declared or "float32", "fp32")


def generation_config(source: RunSource, tokenizer, end_of_turn: str | None):
    """The base's generation settings, with the stop ids the fine-tuned chat model needs: the tokenizer's EOS,
    the end-of-turn token of its chat template, and the base's own EOS ids."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(source.base_path)
    except (OSError, ValueError):
        config = GenerationConfig()
    base_eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos = [tokenizer.eos_token_id]
    if end_of_turn is not None:
        eos.append(tokenizer.convert_tokens_to_ids(end_of_turn))
    eos = list(dict.fromkeys(i for i in eos + base_eos if i is not None))
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    return config


def save_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer files, readable by transformers 4.x too (vLLM and TGI releases pin older versions):
    transformers 5 writes the class name TokenizersBackend, which 4.x does not know, and keeps the chat
    template only in chat_template.jinja, which 4.x before 4.50 does not read."""
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the same class under its 4.x name
    config["chat_template"] = tokenizer.chat_template
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_merged(model, tokenizer, folder: Path, dtype: str, generation) -> None:
    """Save the merged fp32 model as safetensors in `dtype`, with tokenizer, chat template and generation config.
    A cast copy is saved so the caller's fp32 model keeps its values for the parity reference."""
    target = model if dtype == "fp32" else copy.deepcopy(model).to(DTYPES[dtype])
    target.config.pad_token_id = tokenizer.pad_token_id
    target.generation_config = generation
    target.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    del target


def load_merged(folder: Path, device: str):
    """The merged export as a user gets it from plain transformers, upcast to fp32 for the comparison."""
    from transformers import AutoTokenizer

    return load_causal_lm(str(folder), torch.float32).to(device).eval(), AutoTokenizer.from_pretrained(folder)


def require_adapter(source: RunSource) -> None:
    if not source.is_adapter:
        raise ConfigError(f"run '{source.run_dir}' fine-tuned all weights (method.kind: full), so it has no adapter "
                          "to export", "use --format merged (or gguf/ollama)")


def write_adapter(source: RunSource, tokenizer, folder: Path) -> None:
    require_adapter(source)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(source.weights_dir / name, folder / name)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    # PEFT loads the base from here: the folder (or hub id) this run trained on, not the path it had at train time.
    config["base_model_name_or_path"] = source.base_path
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    save_tokenizer(tokenizer, folder)


def load_adapter(folder: Path, device: str):
    """The adapter export loaded the way PEFT users do: the base named in adapter_config.json, then the adapter."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(load_causal_lm(base_path, torch.float32), folder)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder)
