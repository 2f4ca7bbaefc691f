"""Compute settings: bf16 where the hardware has it, and the loss agrees with fp32."""

import torch

from conftest import make_pairs
from tunesmith.data.batching import collate
from tunesmith.data.tokenize import tokenize_example
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.train.loop import label_loss_sum
from tunesmith.train.precision import resolve_compute, row_width


def test_compute_choices():
    assert resolve_compute("fp32", "auto", "lora", "cpu").weights == torch.float32
    forced = resolve_compute("bf16", "auto", "lora", "cpu")
    assert forced.weights == torch.bfloat16 and forced.autocast is None and forced.attention == "eager"
    full = resolve_compute("bf16", "auto", "full", "cpu")
    assert full.weights == torch.float32 and full.autocast == torch.bfloat16  # fp32 master weights
    assert resolve_compute("auto", "auto", "lora", "cuda").weights == torch.bfloat16
    assert resolve_compute("bf16", "float32", "lora", "cpu").autocast == torch.bfloat16


def test_cpu_attention_follows_the_row_length():
    """Eager for short rows (faster there), SDPA for long ones (eager keeps heads x s x s scores per layer)."""
    assert resolve_compute("auto", "auto", "lora", "cpu", row_tokens=120).attention == "eager"
    assert resolve_compute("auto", "auto", "lora", "cpu", row_tokens=512).attention == "sdpa"
    assert resolve_compute("auto", "auto", "lora", "cuda", row_tokens=512).attention is None
    assert row_width([10] * 95 + [500] * 5) == 10 and row_width([10] * 85 + [500] * 15) == 500


def test_bf16_loss_agrees_with_fp32(tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    rows = [tokenize_example(tokenizer, [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}], 128)
            for r in make_pairs(8, seed=5)]
    batch = collate(rows, tokenizer.pad_token_id)
    losses = {}
    for precision in ("fp32", "bf16"):
        compute = resolve_compute(precision, "auto", "lora", "cpu")
        model = load_causal_lm(str(tiny_llama), compute.weights, compute.attention)
        with torch.no_grad(), compute.context("cpu"):
            total, n = label_loss_sum(model, batch)
        losses[precision] = float(total) / n
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 0.01, losses
