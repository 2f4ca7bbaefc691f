"""Atomic checkpoints: written to a temporary folder, fsynced, then renamed, so a crash never leaves a
half-written checkpoint under its final name."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"


def save_weights(model, folder: Path) -> None:
    # PEFT models write adapter_config.json + adapter_model.safetensors; full models a transformers folder.
    model.save_pretrained(folder, safe_serialization=True) if not hasattr(model, "peft_config") \
        else model.save_pretrained(folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def rng_state() -> dict:
    # Python and torch generators only (tunesmith draws no numpy randomness), so the file loads with
    # torch.load(weights_only=True): no pickle code execution on resume.
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    final = run_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / TRAINING_STATE)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    complete = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file())
    return complete[-1] if complete else None


def load_training_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / TRAINING_STATE, weights_only=True)


def load_weights(model, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(shard))
    model.load_state_dict(state, strict=False)
