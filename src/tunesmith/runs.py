"""The run directory: the contract between stages (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunesmith.config import ProjectConfig
from tunesmith.errors import RunDirError


def load_run_config(run_dir: Path) -> ProjectConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"'{run_dir}' is not a tunesmith run directory (no config.yaml)",
                          "pass the folder that `tunesmith train` or `tunesmith run` wrote (the project's output)")
    return ProjectConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
