"""Scale-out on the CPU: two processes under torchrun (gloo) train the same project as one process would."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from helpers import cli
from tunesmith.cli_launch import torchrun_command
from tunesmith.config import load_config

SAME = ["--set", "train.precision=fp32", "--set", "train.micro_batch_size=4", "--set", "train.global_batch_size=8",
        "--set", "train.max_steps=4", "--set", "train.lr=0.003"]


def torchrun(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = torchrun_command(project, 2) + list(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_launch_prints_the_torchrun_command(tiny_project):
    result = cli("launch", tiny_project, "--nproc", "2", "--set", "train.max_steps=1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "torch.distributed.run --nproc_per_node=2 --nnodes=1 --standalone -m tunesmith.cli train" in result.stdout
    assert "--set train.max_steps=1" in result.stdout
    multi = torchrun_command(tiny_project, 8, nnodes=4, node_rank=3, master_addr="10.0.0.1")
    assert "--node_rank=3" in multi and "--master_addr=10.0.0.1" in multi and "--standalone" not in multi
    bad = cli("launch", tiny_project, "--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--dry-run")
    assert bad.returncode == 1 and "--node-rank" in bad.stderr


def test_two_process_ddp_matches_one_process(tiny_project, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = cli("train", tiny_project, *SAME, "--set", f"output={one}")
    assert single.returncode == 0, single.stderr
    double = torchrun(tiny_project, *SAME, "--set", f"output={two}")
    assert double.returncode == 0, double.stderr[-3000:]
    assert len(losses(one)) == len(losses(two)) == 4
    # Same micro-batches, same global normalization; only the order of float additions differs.
    assert losses(one) == pytest.approx(losses(two), rel=1e-4)
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (one, two))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    card = json.loads((two / "run_card.json").read_text())
    assert card["train"]["processes"] == 2
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 0 wrote it all


def test_two_process_fsdp_full_finetuning_trains_saves_and_evaluates(tiny_project, tmp_path):
    run, single = tmp_path / "fsdp", tmp_path / "single"
    full = ["--set", "method.kind=full", "--set", "train.precision=fp32", "--set", "train.max_steps=3"]
    result = torchrun(tiny_project, *full, "--set", "train.distributed=fsdp", "--set", f"output={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    alone = cli("train", tiny_project, *full, "--set", f"output={single}")
    assert alone.returncode == 0, alone.stderr
    # Sharded, the loss goes through whole-vocabulary logits instead of the chunked head: same math.
    assert losses(run) == pytest.approx(losses(single), rel=1e-4)
    weights = load_file(run / "adapter" / "model.safetensors")
    assert any("layers.0.self_attn.q_proj" in name for name in weights)  # a whole model, gathered to rank 0
    assert len(losses(run)) == 3 and all(x == x for x in losses(run))
    evaluated = cli("eval", run)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((run / "eval" / "metrics.json").read_text())["n"] == 12


def test_a_killed_rank_stops_the_job_and_two_processes_resume(tiny_project, tmp_path):
    run = tmp_path / "killed"
    args = ["--set", "train.max_steps=40", "--set", "train.checkpoint_every_steps=2", "--set", "train.micro_batch_size=4",
            "--set", f"output={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(torchrun_command(tiny_project, 2) + args, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not list((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else True:
            assert time.time() < deadline and job.poll() is None, "no checkpoint appeared"
            time.sleep(0.2)
        rank1 = next(p for p in psutil.Process(job.pid).children(recursive=True)
                     if p.environ().get("RANK") == "1")
        rank1.send_signal(signal.SIGKILL)
        job.wait(timeout=180)  # torchrun stops the surviving rank: no hang
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            job.kill()
        job.communicate()
    resumed = torchrun(tiny_project, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step-" in resumed.stdout + resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 41))  # each step logged once, none lost, none repeated
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert load_config(tiny_project).name == "tiny"
