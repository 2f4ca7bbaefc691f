"""train.tracking mirrors metrics.jsonl to TensorBoard or MLflow; both stay optional."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.tracking import MetricsLog


def test_tensorboard_gets_the_same_records(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLog(tmp_path / "metrics.jsonl", "tensorboard", {"train.lr": 0.001}) as log:
        log.write({"step": 1, "epoch": 0.5, "loss": 2.5, "lr": 0.001})
        log.write({"step": 2, "epoch": 1.0, "eval_loss": 2.25})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    assert {"loss", "lr", "eval_loss"} <= set(accumulator.Tags()["scalars"])
    assert [(e.step, e.value) for e in accumulator.Scalars("eval_loss")] == [(2, 2.25)]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "epoch": 0.5, "loss": 2.5, "lr": 0.001}, {"step": 2, "epoch": 1.0, "eval_loss": 2.25}]


def test_mlflow_run_has_the_metrics_and_the_config_params(tmp_path):
    from mlflow.tracking import MlflowClient

    with MetricsLog(tmp_path / "metrics.jsonl", "mlflow", {"train.lr": 0.001, "method.r": 16}, "tiny") as log:
        log.write({"step": 1, "epoch": 0.5, "loss": 2.5, "lr": 0.001, "skipped": None})
        log.write({"step": 2, "epoch": 1.0, "eval_loss": 2.25})
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny")
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.data.metrics["loss"] == 2.5 and run.data.metrics["eval_loss"] == 2.25
    assert run.data.params == {"train.lr": "0.001", "method.r": "16"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 2.5)]
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("kind, module", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_backend_names_the_tracking_extra(tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    if kind == "mlflow":
        monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"tunesmith\[tracking\]"):
        MetricsLog(tmp_path / "metrics.jsonl", kind)


def test_training_with_tensorboard_writes_event_files_next_to_metrics(tiny_project):
    from tunesmith.pipeline import train_project

    config = load_config(tiny_project, ["train.max_steps=2", "train.tracking=tensorboard"])
    train_project(config)
    run = Path(config.output)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "metrics.jsonl").is_file()
