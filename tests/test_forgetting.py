"""The forgetting check and the teacher-forced metrics, on the tiny random Llama after a few training steps."""

import json
import math
from pathlib import Path

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.data.tokenize import Tokenized
from tunesmith.eval import likelihood
from tunesmith.eval.evaluate import evaluate
from tunesmith.eval.forgetting import forgetting_result, probe_paragraphs
from tunesmith.pipeline import train_project


def test_probe_is_thirty_varied_paragraphs_shipped_with_the_package():
    paragraphs = probe_paragraphs()
    assert len(paragraphs) == 30
    assert all(40 <= len(p.split()) <= 90 for p in paragraphs)
    text = " ".join(paragraphs).lower()
    for topic in ("photosynthesis", "football", "omelette", "roman", "sleep", "marathon"):
        assert topic in text


def test_threshold_logic():
    rose = forgetting_result(100.0, 115.0, 10.0, tokens=500, paragraphs=30)
    assert rose["change_pct"] == 15.0 and rose["warning"] and "lower lr" in rose["message"]
    at = forgetting_result(100.0, 110.0, 10.0, tokens=500, paragraphs=30)
    assert at["change_pct"] == 10.0 and not at["warning"]  # "above the threshold" warns, equal does not
    fell = forgetting_result(100.0, 90.0, 10.0, tokens=500, paragraphs=30)
    assert fell["change_pct"] == -10.0 and not fell["warning"] and "-10.0%" in fell["message"]


def test_likelihood_matches_the_full_logits_computed_directly(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    rows = [Tokenized([5, 9, 14, 30, 2, 7], [-100, -100, 14, 30, 2, -100], False),
            Tokenized([3, 8, 11, 40], [-100, 8, 11, 40], False)]
    got = likelihood.score(model, rows, batch_size=2, pad_id=0)
    nll, count, correct = 0.0, 0, 0
    for row in rows:
        with torch.no_grad():
            logits = model(torch.tensor([row.input_ids])).logits[0, :-1]
        labels = torch.tensor(row.labels[1:])
        keep = labels != -100
        nll += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        count += int(keep.sum())
        correct += int((logits[keep].argmax(-1) == labels[keep]).sum())
    assert got.tokens == count == 6
    assert got.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert got.correct == correct


@pytest.fixture
def trained_run(tiny_project) -> Path:
    config = load_config(tiny_project, ["train.max_steps=6"])
    train_project(config)
    return Path(config.output)


def test_forgetting_and_model_metrics_after_training(trained_run):
    metrics = evaluate(None, trained_run)
    forgetting = json.loads((trained_run / "eval" / "forgetting.json").read_text())
    base, tuned = forgetting["base_perplexity"], forgetting["finetuned_perplexity"]
    assert math.isfinite(base) and math.isfinite(tuned) and base > 1 and tuned > 1
    assert tuned != base  # training moved the weights, so general-text perplexity moved too
    assert forgetting["change_pct"] == pytest.approx((tuned - base) / base * 100, abs=0.01)
    assert forgetting["paragraphs"] == 30 and forgetting["tokens"] > 1000
    assert forgetting["warning"] == (forgetting["change_pct"] > 10.0)
    # Teacher-forced on the references: training on this pattern lowers perplexity, raises token accuracy.
    assert metrics["finetuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert metrics["finetuned"]["token_accuracy"] > metrics["base"]["token_accuracy"]
    assert set(metrics) == {"task", "n", "base", "finetuned", "delta"}
    source = json.loads((trained_run / "eval" / "source.json").read_text())
    assert source["same_as_watched_eval"] is False  # tiny_project gives data.test

    # A threshold below the measured change warns; the switch turns the check (and its file) off.
    config = load_config(trained_run / "config.yaml",
                         [f"eval.forgetting_threshold_pct={forgetting['change_pct'] - 1}", "eval.metrics=[rougeL]"])
    evaluate(config, trained_run)
    assert json.loads((trained_run / "eval" / "forgetting.json").read_text())["warning"] is True
    config = load_config(trained_run / "config.yaml", ["eval.forgetting=false", "eval.metrics=[rougeL]"])
    assert set(evaluate(config, trained_run)["finetuned"]) == {"rougeL"}
    assert not (trained_run / "eval" / "forgetting.json").exists()
