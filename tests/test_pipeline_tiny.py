"""The whole pipeline on a tiny random Llama, through the real CLI: seconds, not minutes."""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import cli
from tunesmith.config import load_config


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_end_to_end_writes_the_run_directory_contract(tiny_project):
    result = cli("run", tiny_project)
    assert result.returncode == 0, result.stderr
    run = Path(load_config(tiny_project).output)
    for name in ("config.yaml", "run_card.json", "data/train.jsonl", "data/eval.jsonl", "data/test.jsonl",
                 "data/removed.jsonl", "data/stats.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/tokenizer.json", "eval/metrics.json",
                 "eval/predictions.jsonl", "eval/source.json", "eval/comparison.json", "eval/forgetting.json",
                 "report.md", "report.html", "loss_curve.svg"):
        assert (run / name).is_file(), name
    assert (run / "adapter" / "chat_template.jinja").is_file() or \
        "chat_template" in (run / "adapter" / "tokenizer_config.json").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000008", "step-000016"]

    records = read_metrics(run)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all({"step", "epoch", "loss", "lr"} <= set(r) for r in steps)
    assert steps[-1]["train_tokens_per_s"] > 0 and steps[-1]["peak_memory_mb"] > 0
    first, last = sum(r["loss"] for r in steps[:3]) / 3, sum(r["loss"] for r in steps[-3:]) / 3
    assert last < first - 0.2, (first, last)
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"task", "n", "base", "finetuned", "delta"}
    assert metrics["n"] == 12 and metrics["task"] == "generation"
    assert set(metrics["base"]) == set(metrics["finetuned"]) == {
        "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "meteor", "exact_match", "perplexity",
        "token_accuracy"}
    predictions = (run / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 12
    assert {"input", "reference", "base_output", "finetuned_output"} <= set(json.loads(predictions[0]))

    card = json.loads((run / "run_card.json").read_text())
    assert card["rows"]["train"]["kept"] + card["rows"]["eval"]["kept"] == 64 and card["rows"]["test"]["rows"] == 12
    assert len(card["datasets_sha256"]) == 2 and card["versions"]["torch"]
    report = (run / "report.md").read_text()
    assert "| rougeL |" in report and "loss_curve.svg" in report and "Most improved" in report
    assert "rougeL" in result.stdout  # the metric table is printed at the end


def test_a_finished_run_is_not_overwritten_without_force(tiny_project):
    assert cli("train", tiny_project, "--set", "train.max_steps=2").returncode == 0
    again = cli("train", tiny_project, "--set", "train.max_steps=2")
    assert again.returncode == 1 and "--force" in again.stderr
    assert cli("train", tiny_project, "--set", "train.max_steps=2", "--force").returncode == 0


def test_resume_from_an_epoch_checkpoint_matches_the_uninterrupted_run(tiny_project, tmp_path):
    assert cli("train", tiny_project).returncode == 0
    run = Path(load_config(tiny_project).output)
    reference = load_file(run / "adapter" / "adapter_model.safetensors")
    reference_losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    # Simulate a crash after the first epoch's checkpoint: the second epoch and the adapter are lost.
    shutil.rmtree(run / "checkpoints" / "step-000016")
    shutil.rmtree(run / "adapter")
    result = cli("train", tiny_project, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed from step-000008" in result.stdout
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=1e-6)
    assert [r["loss"] for r in read_metrics(run) if "loss" in r] == reference_losses


def test_eval_on_another_file_and_report_rerun_alone(tiny_project, tmp_path):
    assert cli("train", tiny_project, "--set", "train.max_steps=3").returncode == 0
    run = Path(load_config(tiny_project).output)
    other = tiny_project.parent / "data" / "train.jsonl"
    result = cli("eval", run, "--data", other)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "eval" / "metrics.json").read_text())["n"] == 64
    assert cli("report", run).returncode == 0 and (run / "report.md").is_file()


def test_unusable_rows_stop_the_run_with_their_lines(tiny_project):
    train = tiny_project.parent / "data" / "train.jsonl"
    train.write_text(train.read_text() + '{"prompt": "q", "completion": ""}\n')
    result = cli("train", tiny_project)
    assert result.returncode == 1
    assert f"{train}:65" in result.stderr and "empty" in result.stderr and "Traceback" not in result.stderr
    assert not (Path(load_config(tiny_project).output) / "adapter").exists()
