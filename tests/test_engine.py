"""Training-engine options: token-budget micro-batches and gradient checkpointing."""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import make_pairs
from helpers import cli
from tunesmith.config import MethodConfig, load_config
from tunesmith.data.batching import collate, length_grouped_batches, step_groups, token_budget_split
from tunesmith.data.tokenize import IGNORE_INDEX, Tokenized, tokenize_example
from tunesmith.models.adapters import apply_method
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.train.loop import enable_checkpointing, label_loss_sum
from tunesmith.train.lora_fast import use_fast_lora


def test_token_budget_split_keeps_every_row_within_the_budget():
    lengths = [100, 20, 30, 250, 60, 40, 45, 10]
    micro = token_budget_split(list(range(len(lengths))), lengths, budget=200)
    assert sorted(i for m in micro for i in m) == list(range(len(lengths)))
    assert micro[0] == [3]  # longer than the budget: alone, never cut
    for m in micro[1:]:
        assert len(m) * max(lengths[i] for i in m) <= 200
        assert lengths[m[0]] == max(lengths[i] for i in m)  # the first row sets the padded width
    assert len(micro) < len(lengths)  # short rows really share a pass


def test_step_groups_without_a_token_budget_are_the_row_count_batches():
    lengths = [(i * 37) % 101 + 5 for i in range(50)]
    batches = length_grouped_batches(lengths, 4, seed=3)
    assert step_groups(lengths, 4, 8, seed=3) == [batches[i:i + 2] for i in range(0, len(batches), 2)]
    budgeted = step_groups(lengths, 4, 8, seed=3, micro_batch_tokens=300)
    assert len(budgeted) == 7  # ceil(50 / 8) optimizer steps either way
    assert sorted(i for step in budgeted for m in step for i in m) == list(range(50))
    assert all(sum(len(m) for m in step) <= 8 for step in budgeted)


def _rows(tokenizer, n):
    rows = [tokenize_example(tokenizer, [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}], 128)
            for r in make_pairs(n, seed=21)]
    return [Tokenized(r.input_ids[:len(r.input_ids) - 2 * i], r.labels[:len(r.labels) - 2 * i], False)
            for i, r in enumerate(rows)]


def _step_gradients(model, micro_batches, pad_id):
    """Gradients of one optimizer step as the trainer computes them: each micro-batch's summed loss divided by
    the labelled tokens of the whole step."""
    tensors = [collate(rows, pad_id) for rows in micro_batches]
    n_labels = sum(int((t["labels"][:, 1:] != IGNORE_INDEX).sum()) for t in tensors)
    for batch in tensors:
        loss, _ = label_loss_sum(model, batch)
        (loss / n_labels).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _lora_model(tiny_llama):
    torch.manual_seed(5)
    model = apply_method(load_causal_lm(str(tiny_llama), torch.float32, "eager"), MethodConfig(r=8), "cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # PEFT starts B at zero; a non-zero B exercises both adapter gradients
    use_fast_lora(model)
    return model.train()


def test_a_step_has_the_same_gradient_however_its_rows_are_split(tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    rows = _rows(tokenizer, 8)
    model = _lora_model(tiny_llama)
    whole = _step_gradients(model, [rows], tokenizer.pad_token_id)
    lengths = [len(r.input_ids) for r in rows]
    split = token_budget_split(list(range(8)), lengths, budget=3 * max(lengths))
    assert len(split) > 1
    parts = _step_gradients(model, [[rows[i] for i in m] for m in split], tokenizer.pad_token_id)
    for name, grad in whole.items():
        assert torch.allclose(parts[name], grad, rtol=1e-4, atol=1e-7), name


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    rows = _rows(tokenizer, 6)
    plain = _step_gradients(_lora_model(tiny_llama), [rows], tokenizer.pad_token_id)
    model = _lora_model(tiny_llama)
    enable_checkpointing(model)
    assert model.get_base_model().is_gradient_checkpointing
    checkpointed = _step_gradients(model, [rows], tokenizer.pad_token_id)
    for name, grad in plain.items():
        assert torch.allclose(checkpointed[name], grad, rtol=1e-4, atol=1e-7), name


def test_training_with_a_token_budget_and_checkpointing_runs(tiny_project):
    result = cli("train", tiny_project, "--set", "train.micro_batch_tokens=300", "--set",
                 "train.gradient_checkpointing=true", "--set", "train.epochs=1", "--ignore-plan")
    assert result.returncode == 0, result.stderr
    run = Path(load_config(tiny_project).output)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and r.get("loss") is not None]
    train_rows = sum(1 for _ in (run / "data" / "train.tokens.jsonl").open())
    global_batch = load_config(tiny_project).train.global_batch_size
    assert len(steps) == -(-train_rows // global_batch)  # ceil: one optimizer step per global batch of rows
    assert records[-1]["train_tokens_per_s"] > 0


def test_compiled_layers_give_the_same_loss_and_gradients(tiny_llama):
    """train.compile: torch.compile (inductor, a C++ compiler on CPU) on each layer; same numbers as eager."""
    from tunesmith.train.loop import compile_layers

    tokenizer = load_tokenizer(str(tiny_llama))
    rows = _rows(tokenizer, 4)
    plain = _step_gradients(_lora_model(tiny_llama), [rows], tokenizer.pad_token_id)
    model = _lora_model(tiny_llama)
    assert compile_layers(model) == 2
    compiled = _step_gradients(model, [rows], tokenizer.pad_token_id)
    for name, grad in plain.items():
        assert torch.allclose(compiled[name], grad, rtol=1e-3, atol=1e-6), name


def test_the_onednn_primitive_cache_is_capped_before_the_first_product_unless_the_user_set_it(monkeypatch, tmp_path):
    """train_project caps oneDNN's cache first thing (the plan's GEMM benchmark would fix its size otherwise);
    a value the user exported stays."""
    import tunesmith.plan as plan
    from tunesmith.pipeline import train_project
    from tunesmith.train.loop import ONEDNN_PRIMITIVE_CACHE

    seen = []

    def stop(*args, **kwargs):
        seen.append(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))
        raise RuntimeError("stop before the run")

    monkeypatch.setattr(plan, "enforce_plan", stop)
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in make_pairs(20)))
    config = load_config(raw={"name": "x", "data": {"train": str(data)}, "output": str(tmp_path / "run")})
    for exported, expected in ((None, ONEDNN_PRIMITIVE_CACHE), ("8", "8")):
        if exported is None:
            monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", exported)
        with pytest.raises(RuntimeError, match="stop before the run"):
            train_project(config)
        assert seen[-1] == expected
