"""`tunesmith sweep` on the tiny Llama: trials are 2-step runs (eval loss only, no generation), so a trial takes
seconds. Workers are real CLI subprocesses where the test is about processes (sharing a study, dying)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli
from tunesmith.config import SweepParam, load_config
from tunesmith.errors import ConfigError

# 58 train rows in one 32-row micro-batch... two steps per epoch; max_steps=2 makes every trial one epoch.
FAST = ["--set", "train.max_steps=2", "--set", "train.micro_batch_size=32", "--set", "train.global_batch_size=32"]
# A small space keeps the trials quick: only lr and r vary. No pruner here, so every trial completes and the
# counts are exact (pruning has its own test).
SPACE = ["--set", "sweep.params={train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, method.r: {choices: [4, 8]}}",
         "--set", "sweep.pruner=none"]


def study(project: Path, name: str = "tiny"):
    import optuna

    folder = Path(load_config(project).output).resolve() / "sweep"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'sweep.db'}")


def started_trials(stdout: str) -> list[int]:
    return [int(line.split()[1].rstrip(":")) for line in stdout.splitlines() if line.startswith("trial ")
            and line.split()[1].endswith(":")]


def test_sweep_runs_trials_writes_best_yaml_and_resumes_to_more_trials(tiny_project):
    result = cli("sweep", tiny_project, "--trials", "3", *FAST, *SPACE)
    assert result.returncode == 0, result.stderr
    assert started_trials(result.stdout) == [0, 1, 2]
    assert "study 'tiny'" in result.stdout and "eval_loss" in result.stdout and "train.lr" in result.stdout
    folder = Path(load_config(tiny_project).output) / "sweep"
    for n in range(3):
        trial = json.loads((folder / f"trial-{n}" / "trial.json").read_text())
        assert trial["number"] == n and trial["state"] == "COMPLETE" and trial["value"] > 0
        assert (folder / f"trial-{n}" / "adapter" / "adapter_model.safetensors").is_file()
        assert load_config(folder / f"trial-{n}" / "config.yaml").train.max_steps == 2
    best = load_config(folder / "best.yaml")
    leaderboard = json.loads((folder / "leaderboard.json").read_text())
    top = leaderboard["rows"][0]
    assert top["state"] == "COMPLETE" and top["value"] == min(r["value"] for r in leaderboard["rows"])
    assert best.train.lr == pytest.approx(top["params"]["train.lr"]) and best.method.r == top["params"]["method.r"]
    assert best.output == str(folder.resolve() / "best") and best.train.max_steps == 2

    first_trial_log = (folder / "trial-0" / "metrics.jsonl").read_text()
    again = cli("sweep", tiny_project, "--trials", "4", *FAST, *SPACE)
    assert again.returncode == 0, again.stderr
    assert started_trials(again.stdout) == [3]  # only the missing trial runs
    assert "3 of 4 trials" in again.stdout
    assert (folder / "trial-0" / "metrics.jsonl").read_text() == first_trial_log
    states = [t.state.name for t in study(tiny_project).trials]
    assert states == ["COMPLETE"] * 4


def test_a_pruned_trial_stops_training_early_and_is_marked_pruned(tiny_project, capsys):
    from tunesmith.sweep import run_sweep

    # Two epochs of two steps; the threshold pruner stops any trial at its first evaluation (end of epoch 1).
    sets = ["train.micro_batch_size=32", "train.global_batch_size=32", "train.epochs=2", "sweep.pruner=threshold",
            "sweep.prune_threshold=0.0", "sweep.params={train.lr: {choices: [0.003]}}"]
    result = run_sweep(tiny_project, 1, sets)
    assert [row["state"] for row in result["rows"]] == ["PRUNED"] and result["best"] is None
    run = Path(result["rows"][0]["run_dir"])
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps) == 2  # of 4 planned
    assert json.loads((run / "run_card.json").read_text())["train"]["stopped_early"] is True
    assert json.loads((run / "trial.json").read_text())["state"] == "PRUNED"
    assert study(tiny_project).trials[0].state.name == "PRUNED"
    assert not (run.parent / "best.yaml").exists()


def test_the_plain_project_still_trains_beside_its_sweep_and_force_keeps_the_sweep(tiny_project):
    from tunesmith.pipeline import train_project

    folder = Path(load_config(tiny_project).output) / "sweep"
    (folder / "trial-0").mkdir(parents=True)
    (folder / "sweep.db").write_text("a study")
    config = load_config(tiny_project, ["train.max_steps=1", "train.micro_batch_size=32",
                                        "train.global_batch_size=32"])
    train_project(config)  # the sweep folder alone does not count as a run in the way
    train_project(config, force=True)
    assert (folder / "sweep.db").read_text() == "a study" and (folder / "trial-0").is_dir()
    assert (Path(config.output) / "adapter").is_dir()


def test_two_workers_share_one_study_without_duplicates(tiny_project):
    command = [sys.executable, "-m", "tunesmith.cli", "sweep", str(tiny_project), "--trials", "4", *FAST, *SPACE]
    env = {**os.environ, "COLUMNS": "200"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    ran = [started_trials(out) for out, _ in outputs]
    assert not set(ran[0]) & set(ran[1]), ran  # no trial number ran in both workers
    trials = [t for t in study(tiny_project).trials if not t.user_attrs.get("surplus")]
    assert sorted(t.number for t in trials if t.state.name == "COMPLETE") == sorted(ran[0] + ran[1])
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 4
    folder = Path(load_config(tiny_project).output) / "sweep"
    dirs = sorted(p.name for p in folder.glob("trial-*"))
    assert dirs == sorted(f"trial-{n}" for n in ran[0] + ran[1])
    for name in dirs:
        assert json.loads((folder / name / "trial.json").read_text())["number"] == int(name.split("-")[1])


def test_a_killed_worker_leaves_its_trial_failed_not_running(tiny_project):
    beat = ["--set", "sweep.heartbeat_interval_s=1", "--set", "sweep.grace_period_s=2"]
    slow = ["--set", "train.max_steps=40", "--set", "train.micro_batch_size=8", "--set", "train.global_batch_size=8"]
    worker = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "sweep", str(tiny_project), "--trials", "1",
                               *slow, *SPACE, *beat], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = Path(load_config(tiny_project).output) / "sweep" / "trial-0" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not log.is_file() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.poll() is None, "the worker ended before it could be killed mid-trial"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert study(tiny_project).trials[0].state.name == "RUNNING"  # nobody has noticed yet
    time.sleep(3)  # past the 2 s grace period: trial 0's last heartbeat is now stale
    result = cli("sweep", tiny_project, "--trials", "1", *FAST, *SPACE, *beat)
    assert result.returncode == 0, result.stderr
    assert "trial 0 stopped beating" in result.stdout
    states = {t.number: t.state.name for t in study(tiny_project).trials}
    assert states == {0: "FAIL", 1: "COMPLETE"}


def test_sweep_config_errors_name_the_key_and_exit_1(tiny_project):
    result = cli("sweep", tiny_project, "--trials", "2", "--set", "sweep.params={train.lrr: {low: 1, high: 2}}")
    assert result.returncode == 1 and "sweep.params.train.lrr" in result.stderr and "train.lr" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("sweep", tiny_project, "--trials", "2", "--metric", "accuracy")  # not a generation metric
    assert result.returncode == 1 and "sweep.metric" in result.stderr and "eval_loss" in result.stderr
    result = cli("sweep", tiny_project, "--trials", "2", "--storage", "postgresql+psycopg2://me:secret@db/x")
    assert result.returncode == 1 and "psycopg2" in result.stderr and "secret" not in result.stderr
    tiny_project.write_text(tiny_project.read_text() + "sweep:\n  params:\n    method.r: {low: 8}\n")
    with pytest.raises(ConfigError, match="low' and 'high"):
        load_config(tiny_project)


def test_grid_points_and_batch_size_fix():
    from tunesmith.sweep import grid_values

    assert grid_values("train.lr", SweepParam(low=1e-5, high=1e-3, log=True)) == [1e-5, 1e-4, 1e-3]
    assert grid_values("method.r", SweepParam(low=4, high=16, step=4)) == [4, 8, 12, 16]
    assert grid_values("method.r", SweepParam(low=4, high=16)) == [4, 10, 16]
    assert grid_values("train.epochs", SweepParam(choices=[1, 2])) == [1, 2]


def test_trial_config_applies_values_through_set_and_keeps_batch_sizes_consistent(tiny_project):
    from tunesmith.sweep import Sweep, trial_config

    base = load_config(tiny_project)
    sweep = Sweep(project=tiny_project, overrides=["train.max_steps=3"], base=base, folder=Path("/tmp/s"),
                  space={}, trials=1, direction="minimize")
    config = trial_config(sweep, {"train.lr": 1e-5, "train.global_batch_size": 12, "method.r": 4}, "t", Path("/x"))
    assert config.train.lr == 1e-5 and config.method.r == 4 and config.train.max_steps == 3
    assert config.output == "/x" and config.name == "t"
    assert config.train.global_batch_size == 12 and config.train.micro_batch_size == 6  # divides 12, <= 8


def test_grid_sweep_visits_each_point_once_and_maximizes_an_eval_metric(tiny_project, capsys):
    from tunesmith.sweep import run_sweep

    sets = ["train.max_steps=1", "train.micro_batch_size=32", "train.global_batch_size=32", "sweep.sampler=grid",
            "sweep.metric=rougeL", "sweep.params={method.r: {choices: [4, 8]}, train.lr: {choices: [0.003]}}",
            "eval.max_examples=2", "eval.max_new_tokens=4", "eval.compare_base=false",
            "eval.metrics=[rougeL]"]
    result = run_sweep(tiny_project, 5, sets)
    assert "the grid has 2 points" in capsys.readouterr().out
    assert result["direction"] == "maximize" and result["metric"] == "rougeL"
    assert sorted(row["params"]["method.r"] for row in result["rows"]) == [4, 8]
    for row in result["rows"]:
        metrics = json.loads((Path(row["run_dir"]) / "eval" / "metrics.json").read_text())
        assert row["state"] == "COMPLETE" and row["value"] == metrics["finetuned"]["rougeL"]
    assert load_config(result["best"]).method.r == result["rows"][0]["params"]["method.r"]


def test_crashing_trials_are_marked_fail_and_a_broken_setup_stops_the_sweep(tiny_project, monkeypatch):
    import tunesmith.pipeline
    from tunesmith.sweep import SweepError, run_sweep

    def crash(config, **_):
        raise RuntimeError("boom")

    monkeypatch.setattr(tunesmith.pipeline, "train_project", crash)
    with pytest.raises(SweepError, match="3 trials in a row failed"):
        run_sweep(tiny_project, 10, ["sweep.params={method.r: {choices: [4, 8]}}"])
    trials = study(tiny_project).trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert trials[0].user_attrs["error"] == "RuntimeError: boom"

    def user_error(config, **_):
        raise ConfigError("data.train is not set", "set it")

    monkeypatch.setattr(tunesmith.pipeline, "train_project", user_error)
    with pytest.raises(ConfigError, match="data.train"):  # every trial would fail alike: stop at the first
        run_sweep(tiny_project, 10, ["sweep.params={method.r: {choices: [4, 8]}}"])
    assert [t.state.name for t in study(tiny_project).trials] == ["FAIL"] * 4


def test_a_trial_folder_left_by_another_study_is_not_overwritten(tiny_project):
    from tunesmith.errors import RunDirError
    from tunesmith.sweep import run_sweep

    stranger = Path(load_config(tiny_project).output) / "sweep" / "trial-0"
    stranger.mkdir(parents=True)
    (stranger / "config.yaml").write_text("name: someone-else\n")
    with pytest.raises(RunDirError, match="not trial 0"):
        run_sweep(tiny_project, 2, ["sweep.params={method.r: {choices: [4, 8]}}"])
    assert (stranger / "config.yaml").read_text() == "name: someone-else\n"
    assert sorted(p.name for p in stranger.iterdir()) == ["config.yaml"]


def test_workers_opening_a_new_study_database_at_once_all_get_it(tmp_path):
    # Each creates the tables and stamps the schema of the same new SQLite file; without the retry about a
    # quarter of them failed here with "UNIQUE constraint failed: alembic_version" or "table already exists".
    code = ("import sys, optuna; from tunesmith.config import ProjectConfig; from tunesmith.sweep import _optuna, "
            "_storage; _optuna(); optuna.create_study(storage=_storage(sys.argv[1], ProjectConfig()), "
            "study_name='s', load_if_exists=True); print('opened')")
    url = f"sqlite:///{tmp_path / 'new.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(4)]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0 and "opened" in out, err
