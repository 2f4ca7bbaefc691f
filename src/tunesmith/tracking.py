"""metrics.jsonl, always, and the same records mirrored to TensorBoard or MLflow (train.tracking).

Both backends are optional dependencies, imported only when chosen; a missing one is named with its extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.errors import ConfigError


def _missing(kind: str, package: str) -> ConfigError:
    return ConfigError(f"train.tracking is '{kind}' but the '{package}' package is not installed",
                       "pip install 'tunesmith[tracking]' (or set train.tracking: none)")


class _TensorBoard:
    def __init__(self, run_dir: Path, params: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, run_dir: Path, params: dict, name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow-skinny") from None
        # A client on a local file store, not mlflow's global "active run": a sweep may train several runs in
        # one process, and nothing is sent anywhere but RUN_DIR/mlruns. MLflow 3 keeps the file store only
        # behind this switch (its database store needs SQLAlchemy, which mlflow-skinny does not bring).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])  # mlflow caps a param value's length

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class MetricsLog:
    """Appends records to metrics.jsonl (flushed, so `tail -f` follows a run) and mirrors their numbers."""

    def __init__(self, path: Path, kind: str = "none", params: dict | None = None, name: str = "tunesmith"):
        self.handle = open(path, "a", encoding="utf-8")
        self.backend = None
        if kind == "tensorboard":
            self.backend = _TensorBoard(path.parent, params or {})
        elif kind == "mlflow":
            self.backend = _MLflow(path.parent, params or {}, name)

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.backend is not None:
            numbers = {k: float(v) for k, v in record.items()
                       if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.backend.log(record["step"], numbers)

    def close(self) -> None:
        self.handle.close()
        if self.backend is not None:
            self.backend.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
