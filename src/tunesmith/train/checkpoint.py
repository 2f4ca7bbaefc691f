"""Atomic, verifiable checkpoints (docs/reliability.md).

checkpoints/step-000012/ holds:
    adapter_model.safetensors, adapter_config.json   the adapter (full fine-tuning: the model's *.safetensors)
    training_state.pt     optimizer, LR scheduler and RNG states; tensors and plain containers only, so it
                          loads with torch.load(weights_only=True): no pickle code runs on resume
    trainer_state.json    step, epoch, position in the epoch, eval loss, best-so-far, config and data hashes
    manifest.json         sha256 and size of every other file, written last

Everything is written to checkpoints/.tmp-step-000012, fsynced, then renamed, so a crash never leaves a
half-written checkpoint under its final name; a folder without a manifest, or whose files no longer match it,
is skipped on resume and never loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tunesmith.console import err_console
from tunesmith.errors import RunDirError
from tunesmith.io import sha256_file

STATE_FILE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"
MANIFEST = "manifest.json"
# Test hook for the fault-injection test: seconds to sleep inside a checkpoint write (weights written, manifest
# not yet), so a SIGKILL can be made to land there. Unset in normal use.
PAUSE_ENV = "TUNESMITH_TEST_CHECKPOINT_PAUSE_S"


class CheckpointInvalid(Exception):
    """A checkpoint folder that must not be loaded (incomplete, altered or unreadable)."""


def save_weights(model, folder: Path) -> None:
    # PEFT models write adapter_config.json + adapter_model.safetensors; full models a transformers folder.
    model.save_pretrained(folder, safe_serialization=True) if not hasattr(model, "peft_config") \
        else model.save_pretrained(folder)


def _fsync(path: Path) -> None:
    # A folder is fsynced too, so the names of its new entries (the rename) reach the disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Python, numpy, torch and CUDA generators, as tensors and plain containers (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def _step_of(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    """Write checkpoints/step-N atomically. On a write failure (disk full, folder gone) the temporary folder is
    removed and a RunDirError names the previous checkpoint, which is left as it was."""
    folder = run_dir / "checkpoints"
    final = folder / checkpoint_name(step)
    tmp = folder / f".tmp-{final.name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_weights(model, tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / TRAINING_STATE)
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
        if os.environ.get(PAUSE_ENV):
            time.sleep(float(os.environ[PAUSE_ENV]))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {"step": step, "files": {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p),
                                                                             "bytes": p.stat().st_size}
                                            for p in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for path in files + [tmp / MANIFEST]:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync(tmp)
        if final.exists():  # a leftover from a run resumed from an earlier step: this one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in sorted(folder.glob("step-*")) if p != final] if folder.is_dir() else []
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise RunDirError(f"could not write checkpoint {final.name} in '{folder}': {exc.strerror or exc}; {kept}",
                          "free disk space (or set output to a folder on a larger disk), then continue with "
                          "`tunesmith train PROJECT.yaml --resume`") from None
    return final


def verify_checkpoint(checkpoint: Path) -> None:
    """Raise CheckpointInvalid unless every file the manifest lists is there with its recorded sha256."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointInvalid("no manifest.json (the write did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointInvalid(f"manifest.json is unreadable ({exc})") from None
    for name in (STATE_FILE, TRAINING_STATE):
        if name not in files:
            raise CheckpointInvalid(f"the manifest does not list {name}")
    for name, entry in files.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointInvalid(f"{name} is missing")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise CheckpointInvalid(f"{name} does not match its sha256 in the manifest")


def load_checkpoint(checkpoint: Path) -> tuple[dict, dict]:
    """(trainer_state.json, training_state.pt) of a verified checkpoint; CheckpointInvalid when unreadable."""
    verify_checkpoint(checkpoint)
    try:
        trainer_state = json.loads((checkpoint / STATE_FILE).read_text())
        training = torch.load(checkpoint / TRAINING_STATE, weights_only=True)
    except Exception as exc:  # any unpickling or decoding failure means: do not use this checkpoint
        raise CheckpointInvalid(f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
            from None
    return trainer_state, training


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders under their final names, oldest first (a .tmp- folder is never one)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step-*") if p.is_dir() and p.name[5:].isdigit()), key=_step_of)


def newest_loadable(run_dir: Path) -> tuple[Path | None, dict | None, dict | None]:
    """The newest checkpoint that verifies and loads, with its states. Each one skipped is named in a warning,
    and so is any unfinished .tmp- folder (a write that a crash interrupted)."""
    for tmp in sorted((run_dir / "checkpoints").glob(".tmp-step-*")) if (run_dir / "checkpoints").is_dir() else []:
        err_console.print(f"[yellow]warning: skipping {tmp.name}: an unfinished checkpoint write "
                          "(the run was stopped while writing it)[/yellow]")
    for checkpoint in reversed(checkpoints(run_dir)):
        try:
            trainer_state, training = load_checkpoint(checkpoint)
        except CheckpointInvalid as exc:
            err_console.print(f"[yellow]warning: skipping checkpoint {checkpoint.name}: {exc}; it is not "
                              "loaded[/yellow]")
            continue
        return checkpoint, trainer_state, training
    return None, None, None


def latest_checkpoint(run_dir: Path) -> Path | None:
    return newest_loadable(run_dir)[0]


def prune_checkpoints(run_dir: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest `keep` checkpoints and the best one; remove the others and any unfinished .tmp- folder.
    Only plain folders directly inside checkpoints/ are removed: a symlink there is left alone, so nothing
    outside the run directory is ever deleted."""
    folder = run_dir / "checkpoints"
    found = checkpoints(run_dir)
    keep_names = {p.name for p in found[-keep:]}
    if best_step is not None:
        keep_names.add(checkpoint_name(best_step))
    stale = [p for p in found if p.name not in keep_names] + list(folder.glob(".tmp-step-*"))
    for path in stale:
        if path.is_symlink() or path.resolve().parent != folder.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)


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
