"""Resolve a `model.base` (embedded name, local directory, hub id) and load tokenizer and model from it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tunesmith.errors import ModelError
from tunesmith.models.registry import EMBEDDED

HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class ResolvedModel:
    name: str  # what the user wrote
    path: str  # a local directory, or a hub id when the hub is reachable
    source: str  # "embedded" | "local" | "hub"


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def resolve(name: str) -> ResolvedModel:
    if name in EMBEDDED:
        return ResolvedModel(name, str(EMBEDDED[name].locate()), "embedded")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder '{path}' has no config.json",
                             "point model.base at a Hugging Face model folder (config.json + weights)")
        return ResolvedModel(name, str(path.resolve()), "local")
    if name.count("/") != 1 or path.suffix or name.startswith((".", "/", "~")):
        raise ModelError(f"model.base '{name}' is neither an embedded model, a local folder, nor a hub id",
                         f"use one of {', '.join(EMBEDDED)}, a folder with config.json, or an 'org/name' hub id")
    # Probe first: transformers retries an unreachable hub for ~25 s before it gives up.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return ResolvedModel(name, str(Path(cached).parent), "hub")
    if not _hub_reachable():
        raise ModelError(f"model.base '{name}' is a hub id, but the Hugging Face hub cannot be reached "
                         "(offline, or HF_HUB_OFFLINE is set) and the model is not in the local cache",
                         f"use an embedded model ({', '.join(EMBEDDED)}) or download the model elsewhere and "
                         "point model.base at its folder")
    return ResolvedModel(name, name, "hub")


# Weight files that hold only tensors, and pickle-based ones, which can run arbitrary code when unpickled.
SAFE_WEIGHTS = (".safetensors", ".gguf")
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(path: str, allow_pickle: bool = False) -> None:
    """Refuse a local model folder whose only weights are pickle-based, unless allowed. A hub id is not
    checked here: load_causal_lm asks transformers for safetensors only."""
    folder = Path(path)
    if not folder.is_dir():
        return
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.name.endswith(SAFE_WEIGHTS) for p in files):
        return
    pickled = sorted(p.name for p in files if p.name.endswith(PICKLE_WEIGHTS))
    if not pickled:
        return
    if not allow_pickle:
        raise ModelError(f"model folder '{folder}' holds only pickle-based weights ({folder / pickled[0]}); "
                         "loading a pickle file can run arbitrary code",
                         "convert the weights to safetensors (transformers: load, then save_pretrained with "
                         "safe_serialization=True), or, only for weights you trust, pass --allow-pickle "
                         "(model.allow_pickle: true)")
    from tunesmith.console import err_console

    err_console.print(f"[yellow]warning: loading pickle-based weights {folder / pickled[0]} "
                      "(model.allow_pickle is on); they are read with torch.load(weights_only=True)[/yellow]")


def warn_remote_code(path: str, trust_remote_code: bool) -> None:
    if trust_remote_code:
        from tunesmith.console import err_console

        err_console.print(f"[yellow]warning: model.trust_remote_code is on: Python code shipped with '{path}' "
                          "will run on this machine with your permissions[/yellow]")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype, attention: str | None = None, *, allow_pickle: bool = False,
                   trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    check_weight_files(path, allow_pickle)
    extra = {"attn_implementation": attention} if attention else {}
    try:
        # safetensors only unless pickle is allowed: pickle-based .bin weights can execute code when loaded
        # (transformers reads them with torch.load(weights_only=True), which narrows but does not end the risk).
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=None if allow_pickle else True,
                                                    trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a causal language model from '{path}': {str(exc).splitlines()[0]}",
                         "check that the folder holds config.json and *.safetensors weights of a decoder model "
                         "(GPT-2, Llama, Qwen, ...)") from None
