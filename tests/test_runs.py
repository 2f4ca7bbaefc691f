"""`tunesmith runs list|compare` on two tiny evaluated runs that differ only in lr."""

import json
from pathlib import Path

import pytest

from helpers import cli
from tunesmith.config import load_config
from tunesmith.runs import compare_runs, find_runs, flatten, run_summary

# 2 steps, and a short generation on 4 test rows: the eval metrics exist but cost a second or two.
QUICK = ["train.max_steps=2", "train.micro_batch_size=32", "train.global_batch_size=32", "eval.max_examples=4",
         "eval.max_new_tokens=6", "eval.forgetting=false"]


@pytest.fixture
def two_runs(tiny_project) -> tuple[Path, Path]:
    from tunesmith.pipeline import run_project

    root = tiny_project.parent / "runs"
    runs = []
    for name, lr in (("low-lr", "1.0e-4"), ("high-lr", "1.0e-2")):
        config = load_config(tiny_project, QUICK + [f"train.lr={lr}", f"output={root / name}", f"name={name}"])
        run_project(config)
        runs.append(root / name)
    return runs[0], runs[1]


def test_runs_list_and_compare_show_the_lr_difference_and_metric_deltas(two_runs):
    low, high = two_runs
    root = low.parent
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text((low / "config.yaml").read_text())  # a run that never trained

    listed = cli("runs", "list", root, "--json")
    assert listed.returncode == 0, listed.stderr
    runs = {Path(r["run"]).name: r for r in json.loads(listed.stdout)["runs"]}
    assert set(runs) == {"low-lr", "high-lr", "broken"}
    assert runs["low-lr"]["status"] == "evaluated" and runs["broken"]["status"] == "incomplete"
    assert runs["high-lr"]["steps"] == 2 and runs["high-lr"]["method"] == "lora"
    assert runs["high-lr"]["best_eval_loss"] > 0 and runs["high-lr"]["train_tokens_per_s"] > 0
    assert {"rouge1", "rougeL", "exact_match"} <= set(runs["high-lr"]["finetuned"])
    assert runs["high-lr"]["main_metric"] == "rougeL" and "rougeL" in runs["high-lr"]["delta"]

    table = cli("runs", "list", root)
    assert table.returncode == 0 and "low-lr" in table.stdout and "incomplete" in table.stdout

    compared = cli("runs", "compare", low, high, "--json")
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["config_differences"] == {"train.lr": [1.0e-4, 1.0e-2]}  # name and output are left out
    best = result["metrics"]["best_eval_loss"]
    assert best["delta"][0] == 0 and best["delta"][1] == pytest.approx(best["values"][1] - best["values"][0])
    assert best["values"][0] != best["values"][1]
    assert "eval.rougeL" in result["metrics"]

    text = cli("runs", "compare", low, high)
    assert text.returncode == 0 and "train.lr" in text.stdout and "best_eval_loss" in text.stdout
    assert "0.0001" in text.stdout and "0.01" in text.stdout


def test_compare_needs_two_runs_and_real_run_directories(tmp_path):
    assert cli("runs", "compare", tmp_path).returncode == 2
    (tmp_path / "a").mkdir()
    result = cli("runs", "compare", tmp_path / "a", tmp_path)
    assert result.returncode == 1 and "config.yaml" in result.stderr and "Traceback" not in result.stderr
    missing = cli("runs", "list", tmp_path / "nowhere")
    assert missing.returncode == 1 and "not a folder" in missing.stderr


def test_summary_reads_a_run_killed_mid_write(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\ntask: generation\nmethod: {kind: lora}\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "epoch": 0.5, "loss": 2.5, "lr": 0.1}\n'
                                       '{"step": 1, "epoch": 0.5, "eval_loss": 2.4}\n{"step": 2, "lo')
    summary = run_summary(run)
    assert summary["status"] == "incomplete" and summary["final_train_loss"] == 2.5
    assert summary["best_eval_loss"] == 2.4 and summary["steps"] == 1
    (tmp_path / "other-tool").mkdir()
    (tmp_path / "other-tool" / "config.yaml").write_text("- a list, not a run config\n")
    assert find_runs(tmp_path) == [run]


def test_flatten_and_compare_only_keep_differing_keys(tmp_path):
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    for name, r in (("a", 8), ("b", 8), ("c", 16)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"name: {name}\nmethod: {{r: {r}}}\noutput: {tmp_path / name}\n")
    result = compare_runs([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert result["config_differences"] == {"method.r": [8, 8, 16]}


def test_numbers_are_shown_without_losing_digits():
    from tunesmith.cli_runs import _num, _signed

    assert _num(99.66, 0) == "100" and _num(5.50) == "5.5" and _num(0.000495) == "0.000495" and _num(2) == "2"
    assert _signed(-0.25) == "-0.25" and _signed(0.0) == "+0" and _num(None) == ""
