"""tunesmith: fine-tune, evaluate and report on language models from one YAML project file.

The Python API mirrors the CLI. Heavy imports (torch, transformers) happen inside the functions, so
`import tunesmith` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The subpackage first, so the train() function below is what `tunesmith.train` names: importing a module of a
# package that is not yet loaded binds the package as an attribute of its parent, which would replace train().
importlib.import_module("tunesmith.train")

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


def evaluate(run_dir: str | Path, data: str | None = None) -> dict:
    """`tunesmith eval`: base vs fine-tuned metrics on the run's held-out data (or `data`)."""
    from tunesmith.eval.evaluate import evaluate as _evaluate

    return _evaluate(None, Path(run_dir), data)
