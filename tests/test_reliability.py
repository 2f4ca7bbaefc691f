"""Crash safety, exact resume, bad steps, disk and config checks, security and reproducibility
(docs/reliability.md). Training runs use the tiny random Llama: a few seconds each."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import cli
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, ModelError, RunDirError, TrainingError

SRC = Path(__file__).resolve().parents[1] / "src"


def read_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def train(project: Path, *overrides: str, resume: bool = False, force: bool = False, on_eval=None) -> dict:
    from tunesmith.pipeline import train_project

    return train_project(load_config(project, list(overrides)), resume=resume, force=force, on_eval=on_eval)


# ---------------------------------------------------------------------------------------------------------
# Fault injection: SIGKILL at random moments (one inside a checkpoint write), a corrupted checkpoint, a
# SIGTERM; every interruption resumed; the end result equals an uninterrupted run bit for bit.

FAULT_SETTINGS = ["train.epochs=4", "train.checkpoint_every_steps=2", "train.eval_every_steps=5",
                  "train.keep_checkpoints=2", "method.lora_dropout=0.1"]  # dropout: resume must restore the RNG


def _env(**extra: str) -> dict:
    # One thread everywhere, so reductions add up in the same order in every process.
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200"}
    env.pop("TUNESMITH_TEST_CHECKPOINT_PAUSE_S", None)
    return {**env, **extra}


def _start(project: Path, out: Path, tag: str, resume: bool, **env: str) -> tuple[subprocess.Popen, Path, Path]:
    stdout, stderr = out / f"{tag}.out", out / f"{tag}.err"
    args = [sys.executable, "-m", "tunesmith.cli", "train", str(project)]
    for setting in FAULT_SETTINGS:
        args += ["--set", setting]
    args += ["--set", f"output={out / 'run'}"] + (["--resume"] if resume else [])
    process = subprocess.Popen(args, stdout=open(stdout, "w"), stderr=open(stderr, "w"), env=_env(**env))
    return process, stdout, stderr


def _max_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    steps = [0]
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError):
                pass  # a line being written
    return max(steps)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until condition() holds (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def test_killed_and_resumed_run_equals_the_uninterrupted_run(tiny_project, tmp_path):
    reference_dir, faulty = tmp_path / "reference", tmp_path / "faulty"
    reference_dir.mkdir(), faulty.mkdir()
    process, out, err = _start(tiny_project, reference_dir, "reference", resume=False)
    assert process.wait(timeout=600) == 0, err.read_text()
    reference = adapter(reference_dir / "run" / "adapter")
    reference_records = read_records(reference_dir / "run")

    rng = random.Random(1234)
    run = faulty / "run"
    plan = ["kill", "kill", "kill_in_checkpoint_write", "kill", "corrupt_newest_then_kill", "kill", "term"]
    killed, seen = 0, 0
    for n, action in enumerate(plan):
        env = {"TUNESMITH_TEST_CHECKPOINT_PAUSE_S": "600"} if action == "kill_in_checkpoint_write" else {}
        if action.startswith("corrupt"):
            newest = sorted((run / "checkpoints").glob("step-*"))
            assert len(newest) >= 2, "need two checkpoints to fall back on"
            weights = newest[-1] / "adapter_model.safetensors"
            data = bytearray(weights.read_bytes())
            data[-5] ^= 0xFF  # one flipped bit pattern inside a tensor: the file still parses
            weights.write_bytes(bytes(data))
            corrupted, fallback = newest[-1].name, newest[-2].name
        started = time.time()
        process, out, err = _start(tiny_project, faulty, f"{n}-{action}", resume=n > 0, **env)
        if action == "kill_in_checkpoint_write":
            def paused() -> bool:
                return any((tmp / "trainer_state.json").is_file() and tmp.stat().st_mtime >= started - 1
                           for tmp in (run / "checkpoints").glob(".tmp-step-*"))
            landed = _wait_for(paused, process)
        else:
            target = seen + rng.randint(1, 2)
            landed = _wait_for(lambda: _max_step(run) >= target, process)
            time.sleep(rng.uniform(0, 0.02))  # anywhere in the next step: forward, backward, update, write
        assert landed, f"run {n} finished before the fault: {err.read_text()[-2000:]}"
        if action == "term":
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=300) == 0, err.read_text()
            stdout = out.read_text()
            assert "SIGTERM" in stdout and "--resume" in stdout and "checkpoint step-" in stdout, stdout
            stopped_at = re.search(r"checkpoint (step-\d+) written", stdout).group(1)
            assert (run / "checkpoints" / stopped_at / "manifest.json").is_file()
        else:
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
            killed += 1
        if action == "kill_in_checkpoint_write":
            assert list((run / "checkpoints").glob(".tmp-step-*")), "the kill should have left a partial write"
        if n > 0:
            text = out.read_text()
            resumed = re.search(r"resumed from (step-\d+): steps 1-(\d+) are not run again", text)
            assert resumed or "no complete checkpoint" in text, text + err.read_text()
        if n > 0 and plan[n - 1] == "kill_in_checkpoint_write":
            assert "unfinished checkpoint write" in err.read_text()
        if action.startswith("corrupt"):
            assert f"skipping checkpoint {corrupted}" in err.read_text() and "sha256" in err.read_text()
            assert f"resumed from {fallback}" in out.read_text()
        seen = max(seen, _max_step(run))

    process, out, err = _start(tiny_project, faulty, "final", resume=True)
    assert process.wait(timeout=600) == 0, err.read_text()
    assert "resumed from step-" in out.read_text()
    assert killed >= 6

    assert_same_tensors(adapter(run / "adapter"), reference)
    records = read_records(run)
    assert [(r["step"], r["loss"]) for r in records if "loss" in r] == \
        [(r["step"], r["loss"]) for r in reference_records if "loss" in r]
    assert [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r] == \
        [(r["step"], r["eval_loss"]) for r in reference_records if "eval_loss" in r]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 33))  # no step logged twice


# ---------------------------------------------------------------------------------------------------------
# Checkpoint contents, verification, retention


def test_checkpoints_hold_a_verifiable_manifest_and_the_full_training_state(tiny_project):
    from tunesmith.train.checkpoint import CheckpointInvalid, load_checkpoint, verify_checkpoint

    train(tiny_project, "train.max_steps=5", "train.checkpoint_every_steps=1", "train.keep_checkpoints=2")
    run = Path(load_config(tiny_project).output)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    checkpoint = run / "checkpoints" / "step-000005"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"adapter_model.safetensors", "adapter_config.json", "training_state.pt",
                                      "trainer_state.json"}
    state, training = load_checkpoint(checkpoint)
    assert state["step"] == 5 and state["step_in_epoch"] == 5 and state["epoch_index"] == 0
    assert len(state["config_sha256"]) == 64 and state["data_sha256"]
    assert set(training) == {"optimizer", "scheduler", "rng"}
    assert {"python", "numpy", "torch"} <= set(training["rng"])

    (checkpoint / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointInvalid, match="sha256"):
        verify_checkpoint(checkpoint)
    other = run / "checkpoints" / "step-000004"
    verify_checkpoint(other)
    (other / "training_state.pt").unlink()
    with pytest.raises(CheckpointInvalid, match="training_state.pt is missing"):
        verify_checkpoint(other)
    with pytest.raises(CheckpointInvalid, match="manifest"):
        verify_checkpoint(run / "checkpoints" / "no-such-folder")


def test_resume_with_only_broken_checkpoints_starts_over_and_says_so(tiny_project):
    train(tiny_project, "train.max_steps=2", "train.checkpoint_every_steps=1")
    run = Path(load_config(tiny_project).output)
    for checkpoint in (run / "checkpoints").iterdir():
        (checkpoint / "manifest.json").unlink()  # as if each write had been cut short
    card = train(tiny_project, "train.max_steps=2", "train.checkpoint_every_steps=1", resume=True)
    assert card["train"]["steps"] == 2
    assert [r["step"] for r in read_records(run) if "loss" in r] == [1, 2]


# ---------------------------------------------------------------------------------------------------------
# Non-finite loss


def test_nan_steps_are_skipped_and_too_many_in_a_row_stop_the_run(tiny_project, monkeypatch):
    from tunesmith.train import loop
    from tunesmith.train.checkpoint import checkpoints, verify_checkpoint

    real, calls = loop.label_loss_sum, {"n": 0}

    def poisoned(model, batch):
        loss, n = real(model, batch)
        if model.training:
            calls["n"] += 1  # one micro-batch per step here: call n is step n
            if calls["n"] == 3 or calls["n"] >= 5:
                loss = loss * float("nan")
        return loss, n

    monkeypatch.setattr(loop, "label_loss_sum", poisoned)
    with pytest.raises(TrainingError) as caught:
        train(tiny_project, "train.max_steps=14", "train.checkpoint_every_steps=2", "train.max_bad_steps=5")
    message = str(caught.value)
    # Step 3 is skipped, step 4 is fine (the count restarts), steps 5-10 are bad: the 6th in a row stops it.
    assert "step 10" in message and "learning rate" in message and "max_bad_steps=5" in message
    assert "train.lr" in message and "fp32" in message and "data check" in message
    run = Path(load_config(tiny_project).output)
    records = [r for r in read_records(run) if "loss" in r]
    assert [r["step"] for r in records if r.get("skipped")] == [3, 5, 6, 7, 8, 9, 10]
    assert all(r["loss"] is not None for r in records if not r.get("skipped"))
    assert not (run / "adapter").exists()
    for checkpoint in checkpoints(run):
        verify_checkpoint(checkpoint)
        assert all(torch.isfinite(t).all() for t in adapter(checkpoint).values())
    # Skipped steps change no weight: the checkpoints after step 4 all hold step 4's adapter.
    assert sorted(p.name for p in checkpoints(run)) == ["step-000006", "step-000008"]  # step 10 never saved
    assert_same_tensors(adapter(run / "checkpoints" / "step-000006"), adapter(run / "checkpoints" / "step-000008"))


# ---------------------------------------------------------------------------------------------------------
# Disk full, unwritable output


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tiny_project, monkeypatch):
    from tunesmith.train import checkpoint as checkpoint_module

    real, calls = checkpoint_module.save_weights, {"n": 0}

    def full_disk(model, folder):
        calls["n"] += 1
        if calls["n"] == 2:
            real(model, folder)  # part of the checkpoint is written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, folder)

    monkeypatch.setattr(checkpoint_module, "save_weights", full_disk)
    with pytest.raises(RunDirError) as caught:
        train(tiny_project, "train.max_steps=6", "train.checkpoint_every_steps=2")
    assert "No space left on device" in str(caught.value) and "step-000002 is intact" in str(caught.value)
    assert "--resume" in str(caught.value)
    run = Path(load_config(tiny_project).output)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]  # no .tmp- left behind
    checkpoint_module.verify_checkpoint(run / "checkpoints" / "step-000002")


def test_too_little_free_space_is_refused_before_the_first_step(tiny_project, monkeypatch):
    from types import SimpleNamespace

    from tunesmith.train import guard

    monkeypatch.setattr(guard.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=1000))
    with pytest.raises(RunDirError, match="not enough free disk space"):
        train(tiny_project, "train.max_steps=2")
    run = Path(load_config(tiny_project).output)
    assert not (run / "metrics.jsonl").exists() and not list((run / "checkpoints").glob("step-*"))


def test_an_output_folder_under_a_file_is_a_clear_error(tiny_project, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output's parent should be")
    with pytest.raises(RunDirError, match="cannot create the output folder"):
        train(tiny_project, f"output={blocker / 'run'}")


# ---------------------------------------------------------------------------------------------------------
# What may change on --resume


def test_resume_refuses_result_changing_config_unless_forced(tiny_project):
    train(tiny_project, "train.max_steps=4", "train.checkpoint_every_steps=2")
    run = Path(load_config(tiny_project).output)
    with pytest.raises(ConfigError) as caught:
        train(tiny_project, "train.max_steps=4", "train.checkpoint_every_steps=2", "train.lr=0.01",
              "method.r=4", resume=True)
    assert "train.lr" in str(caught.value) and "method.r" in str(caught.value) and "--force" in str(caught.value)
    # Logging and checkpoint cadence change nothing the run computes: allowed.
    card = train(tiny_project, "train.max_steps=4", "train.checkpoint_every_steps=1", "train.log_every_steps=2",
                 resume=True)
    assert card["train"]["steps"] == 4
    card = train(tiny_project, "train.max_steps=6", "train.checkpoint_every_steps=2", resume=True, force=True)
    assert card["train"]["steps"] == 6
    assert (run / "checkpoints" / "step-000006").is_dir()


# ---------------------------------------------------------------------------------------------------------
# Evaluation during training, early stopping, best weights


def test_eval_every_steps_early_stopping_keeps_and_uses_the_best_weights(tiny_project):
    seen = []

    def on_eval(step, loss):
        seen.append(step)
        return False

    # min_delta 10: no later evaluation counts as an improvement, so patience 2 stops at the third evaluation.
    card = train(tiny_project, "train.max_steps=12", "train.eval_every_steps=2", "train.early_stopping_patience=2",
                 "train.early_stopping_min_delta=10", "train.keep_checkpoints=1", on_eval=on_eval)
    run = Path(load_config(tiny_project).output)
    assert seen == [2, 4, 6]
    assert [(r["step"], r["epoch"]) for r in read_records(run) if "eval_loss" in r] == \
        [(2, 0.25), (4, 0.5), (6, 0.75)]
    summary = card["train"]
    assert summary["stopped_early"] and summary["stop_reason"] == "early_stopping" and summary["steps"] == 6
    assert summary["best_step"] == 2 and card["adapter_step"] == 2
    assert json.loads((run / "run_card.json").read_text())["adapter_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000006"]  # best+last
    assert_same_tensors(adapter(run / "adapter"), adapter(run / "checkpoints" / "step-000002"))
    # Resuming a run that early stopping ended does not train on past the stop.
    again = train(tiny_project, "train.max_steps=12", "train.eval_every_steps=2", "train.early_stopping_patience=2",
                  "train.early_stopping_min_delta=10", "train.keep_checkpoints=1", resume=True)
    assert again["train"]["steps"] == 6 and again["adapter_step"] == 2
    assert max(r["step"] for r in read_records(run)) == 6


def test_load_best_without_early_stopping(tiny_project):
    # min_delta 10 makes the first evaluation the best one; no patience, so the run goes on to the end.
    card = train(tiny_project, "train.max_steps=6", "train.eval_every_steps=2", "train.early_stopping_min_delta=10",
                 "train.load_best=true")
    run = Path(load_config(tiny_project).output)
    assert card["train"]["steps"] == 6 and not card["train"]["stopped_early"]
    assert card["adapter_step"] == card["train"]["best_step"] == 2
    assert_same_tensors(adapter(run / "adapter"), adapter(run / "checkpoints" / "step-000002"))


# ---------------------------------------------------------------------------------------------------------
# Security


def test_pickle_only_weights_are_refused_unless_allowed(tiny_llama, tiny_project, tmp_path):
    import shutil

    from tunesmith.models.load import load_causal_lm

    pickled = tmp_path / "pickled-model"
    shutil.copytree(tiny_llama, pickled)
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")

    result = cli("train", tiny_project, "--set", f"model.base={pickled}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pytorch_model.bin" in result.stderr and "--allow-pickle" in result.stderr
    assert "model.allow_pickle" in result.stderr
    with pytest.raises(ModelError, match="pickle"):
        load_causal_lm(str(pickled), torch.float32)
    model = load_causal_lm(str(pickled), torch.float32, allow_pickle=True)
    assert torch.equal(model.state_dict()["model.norm.weight"], weights["model.norm.weight"])


def test_every_torch_load_is_weights_only():
    calls = [(path, line) for path in SRC.rglob("*.py") for line in path.read_text().splitlines()
             if "torch.load(" in line]
    assert calls, "expected the checkpoint loader to use torch.load"
    assert all("weights_only=True" in line for _, line in calls), calls


def test_trust_remote_code_is_off_by_default_and_warns_naming_the_repository(tiny_project, capsys):
    from tunesmith.models.load import warn_remote_code

    assert load_config(tiny_project).model.trust_remote_code is False
    warn_remote_code("some-org/custom-model", True)
    assert "some-org/custom-model" in capsys.readouterr().err
    warn_remote_code("some-org/custom-model", False)
    assert capsys.readouterr().err == ""


def test_secrets_never_reach_the_run_directory(tiny_project, monkeypatch):
    secrets = {"HF_TOKEN": "hf_FakeTokenForTestsOnly0123456789abcd", "MY_SERVICE_API_KEY": "key-9f8e7d6c5b4a",
               "DB_SECRET": "s3cr3t-passphrase-xyz"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    prompt_token = "sk-FakeOpenAIKeyForTests0123456789"
    card = train(tiny_project, "train.max_steps=2", "train.tracking=mlflow",
                 f"data.system_prompt=Call the API with {secrets['DB_SECRET']} or {prompt_token}")
    run = Path(load_config(tiny_project).output)
    needles = [*secrets.values(), prompt_token]
    for path in run.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not [s for s in needles if s.encode() in blob], path
    assert "[redacted]" in (run / "config.yaml").read_text()
    assert card["seed"] == 0


def test_pii_policy_maps_onto_clean_and_is_recorded(tiny_project, tiny_llama, tmp_path):
    from tunesmith.models.load import load_tokenizer
    from tunesmith.pipeline import prepare_data

    train_file = tiny_project.parent / "data" / "train.jsonl"
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    for row in rows[:5]:
        row["prompt"] += " Mail me at ana.smith@example.com please."
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = load_tokenizer(str(tiny_llama))
    found = {}
    for policy in ("redact", "warn", "drop"):
        config = load_config(tiny_project, [f"data.pii={policy}"])
        run = tmp_path / policy
        found[policy] = prepare_data(config, run, tokenizer, str(tiny_llama))["pii"]
        text = "".join((run / "data" / f"{part}.jsonl").read_text() for part in ("train", "eval"))
        assert ("ana.smith@example.com" in text) == (policy == "warn"), policy
    assert found["redact"]["policy"] == "redact" and found["redact"]["rows_masked"] == 5
    assert found["warn"]["rows_flagged"] == 5 and found["drop"]["rows_dropped"] == 5
    # The older key still works and is reported under the new name.
    legacy = load_config(tiny_project, ["data.clean.redact_pii=mask"])
    assert prepare_data(legacy, tmp_path / "legacy", tokenizer, str(tiny_llama))["pii"]["policy"] == "redact"


# ---------------------------------------------------------------------------------------------------------
# Reproducibility


def test_same_config_data_and_seed_give_the_same_adapter_bit_for_bit(tiny_project, tmp_path):
    cards = [train(tiny_project, "train.max_steps=4", "method.lora_dropout=0.1", f"output={tmp_path / name}")
             for name in ("first", "second")]
    assert_same_tensors(adapter(tmp_path / "first" / "adapter"), adapter(tmp_path / "second" / "adapter"))
    card = cards[0]
    assert card["seed"] == 0 and len(card["datasets_sha256"]) == 2
    assert all(len(h) == 64 for h in card["datasets_sha256"].values())
    assert {"torch", "transformers", "peft", "numpy", "python"} <= set(card["versions"])
    assert card["hardware"]["cpu_count"] and "git" in card and card["pii"]["policy"] == "off"
    different = train(tiny_project, "train.max_steps=4", "method.lora_dropout=0.1", "train.seed=1",
                      f"output={tmp_path / 'third'}")
    assert different["seed"] == 1
    third = adapter(tmp_path / "third" / "adapter")
    assert any(not torch.equal(third[k], v) for k, v in adapter(tmp_path / "first" / "adapter").items())


def test_pruning_never_deletes_outside_the_run_directory(tmp_path):
    from tunesmith.train.checkpoint import prune_checkpoints

    run, outside = tmp_path / "run", tmp_path / "precious"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "keep.txt").write_text("must survive")
    folder = run / "checkpoints"
    for step in (1, 2, 3, 4):
        (folder / f"step-{step:06d}").mkdir(parents=True)
    (folder / "step-000000").symlink_to(outside)  # oldest by name: first in line for pruning
    (folder / ".tmp-step-000005").mkdir()
    prune_checkpoints(run, keep=2, best_step=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000", "step-000001", "step-000003", "step-000004"]
    assert (outside / "data" / "keep.txt").read_text() == "must survive"


def test_sigint_asks_for_a_stop_and_a_second_one_stops_at_once():
    from tunesmith.train.guard import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as request:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert request.signal == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before
    with StopRequest() as request:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert request.signal == "SIGINT"
