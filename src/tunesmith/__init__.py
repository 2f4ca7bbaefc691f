"""tunesmith: fine-tune, evaluate and report on language models from one YAML project file.

The Python API mirrors the CLI. Heavy imports (torch, transformers) happen inside the functions, so
`import tunesmith` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tunesmith.config import ProjectConfig


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, raw: dict | None = None):
    from tunesmith.config import load_config as _load

    return _load(path, overrides, raw)


def _as_config(config: ProjectConfig | str | Path | dict, overrides: list[str] | None) -> ProjectConfig:
    if isinstance(config, dict):
        return load_config(raw=config, overrides=overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    return config


def run(config: ProjectConfig | str | Path | dict, overrides: list[str] | None = None, resume: bool = False,
        force: bool = False) -> dict:
    """`tunesmith run`: train, evaluate base vs fine-tuned, report. Returns eval/metrics.json as a dict."""
    from tunesmith.pipeline import run_project

    return run_project(_as_config(config, overrides), resume=resume, force=force)


def train(config: ProjectConfig | str | Path | dict, overrides: list[str] | None = None, resume: bool = False,
          force: bool = False) -> dict:
    """`tunesmith train`: prepare the data and fine-tune. Returns the run card."""
    from tunesmith.pipeline import train_project

    return train_project(_as_config(config, overrides), resume=resume, force=force)


# `tunesmith.train` is also the name of the training package, which replaces the function above as the attribute
# once any of its modules is imported; the package is callable and calls this (tunesmith/train/__init__.py).
train_project_api = train


def evaluate(run_dir: str | Path, data: str | None = None) -> dict:
    """`tunesmith eval`: base vs fine-tuned metrics on the run's held-out data (or `data`)."""
    from tunesmith.eval.evaluate import evaluate as _evaluate

    return _evaluate(None, Path(run_dir), data)
