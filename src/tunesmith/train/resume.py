"""What may change between a run and its `--resume`.

A resumed run must compute what the uninterrupted run would have, so any config key that changes the result
(data, model, method, learning rate and schedule, batch sizes, seed, precision, device, evaluation and early
stopping, ...) is refused unless --force, naming the keys. These keys only change what is logged, kept or
checked, never the weights, and may change freely:
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from tunesmith.config import ProjectConfig, dump_config
from tunesmith.console import err_console
from tunesmith.errors import ConfigError
from tunesmith.redact import redact_text

RESULT_NEUTRAL_KEYS = {
    "name",  # a label
    "train.log_every_steps", "train.tracking",  # what is logged, and where
    "train.checkpoint_every_steps", "train.keep_checkpoints",  # writing a checkpoint draws no randomness
    "train.max_bad_steps",  # only decides when a diverging run gives up
    "model.allow_pickle",  # the same weights, read from another file format
    # ddp on 1, 2 or 8 processes takes the same optimizer steps (train/distributed.py), up to float order
    "train.distributed",
    # the same computation: recomputed activations, or compiled or Liger kernels (float order only)
    "train.gradient_checkpointing", "train.compile", "train.liger", "train.cpu_kernels",
}
# eval.* is the generation stage after training (metrics, max_new_tokens, ...) and sweep.* drives `tunesmith
# sweep` around runs: neither touches the training of this run.
NEUTRAL_PREFIXES = ("eval.", "sweep.")


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "columns":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_keys(config: dict) -> dict:
    """The flattened config without the keys that cannot change the trained weights."""
    return {k: v for k, v in flatten(config).items()
            if k not in RESULT_NEUTRAL_KEYS and not k.startswith(NEUTRAL_PREFIXES) and k != "output"}


def config_hash(config: ProjectConfig) -> str:
    text = json.dumps(result_keys(config.model_dump(mode="json")), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def changed_keys(old: dict, new: dict) -> list[str]:
    before, after = result_keys(old), result_keys(new)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def check_resume_config(run_dir: Path, config: ProjectConfig, force: bool) -> None:
    """Compare the config a run started with (run_dir/config.yaml) to the one it is resumed with."""
    path = Path(run_dir) / "config.yaml"
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    new = yaml.safe_load(redact_text(dump_config(config)))  # config.yaml is written redacted too
    changed = changed_keys(old, new)
    if not changed:
        return
    detail = ", ".join(f"{k} ({flatten(old).get(k)!r} -> {flatten(new).get(k)!r})" for k in changed)
    if force:
        err_console.print(f"[yellow]warning: resuming with a changed config (--force): {detail}; the result "
                          "will differ from an uninterrupted run[/yellow]")
        return
    raise ConfigError(f"the config differs from the one the run in '{run_dir}' started with, in keys that "
                      f"change the result: {detail}",
                      "resume with the original values, or pass --force to continue with the new ones "
                      "(the run then differs from an uninterrupted one)", where=str(path))
