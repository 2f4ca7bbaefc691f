"""The training engine on a CUDA GPU: packed = unpacked loss, bf16 against fp32, Liger against transformers' own
layers, and a whole run. Skipped without a GPU (CI has none); run them where one is lent:

    python -m pytest -q tests/test_cuda.py
"""

import json
from pathlib import Path

import pytest
import torch

from conftest import rows_for
from tunesmith.config import MethodConfig
from tunesmith.data.batching import collate, collate_packed, packed_micro_batches
from tunesmith.models.adapters import apply_method, unwrap
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.train import liger
from tunesmith.train.loop import label_loss_sum
from tunesmith.train.lora_fast import use_fast_lora

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def lora_model(folder, dtype, fast: bool = True):
    """The tiny Llama with LoRA on CUDA, the same adapter weights every call; B drawn at random too (PEFT starts it
    at zero, which leaves A no gradient)."""
    model = apply_method(load_causal_lm(str(folder), dtype), MethodConfig(), "cuda").cuda()
    generator = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    if fast:
        use_fast_lora(model)
    return model


def loss_and_grads(model, batches):
    model.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    for batch in batches:
        loss_sum, n = label_loss_sum(model, {k: v.cuda() for k, v in batch.items()})
        loss_sum.backward()
        total, count = total + float(loss_sum.detach()), count + n
    return total / count, {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


def packed_batches(tokenizer, rows):
    micro = packed_micro_batches(rows, list(range(len(rows))), max_seq_len=128, micro_batch_size=4)
    assert len(micro[0][0]) > 1  # several examples share a row
    return [collate_packed([[rows[i] for i in row] for row in batch], tokenizer.pad_token_id) for batch in micro]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.fixture
def llama_module_restored(monkeypatch):
    """Liger patches transformers' Llama module for the whole process; put it back after the test."""
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    yield modeling_llama


def test_packed_loss_equals_one_by_one_loss_on_cuda(tiny_llama):
    """CUDA's default attention (SDPA) with the block-diagonal mask derived from packed position ids."""
    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_causal_lm(str(tiny_llama), torch.float32).cuda().eval()
    rows = rows_for(tokenizer, 12, seed=9)
    with torch.no_grad():
        packed = [label_loss_sum(model, {k: v.cuda() for k, v in b.items()}) for b in packed_batches(tokenizer, rows)]
        single = [label_loss_sum(model, {k: v.cuda() for k, v in collate([r], tokenizer.pad_token_id).items()})
                  for r in rows]
    packed_n, single_n = sum(n for _, n in packed), sum(n for _, n in single)
    assert packed_n == single_n
    assert abs(sum(float(s) for s, _ in packed) / packed_n - sum(float(s) for s, _ in single) / single_n) < 1e-4


def test_bf16_fast_lora_agrees_with_fp32_peft(tiny_llama):
    """What tunesmith runs on CUDA (bf16 weights, fp32 adapters, its fused LoRA path) against PEFT in fp32."""
    tokenizer = load_tokenizer(str(tiny_llama))
    batches = packed_batches(tokenizer, rows_for(tokenizer, 12, seed=5))
    loss32, grads32 = loss_and_grads(lora_model(tiny_llama, torch.float32, fast=False), batches)
    loss16, grads16 = loss_and_grads(lora_model(tiny_llama, torch.bfloat16), batches)
    assert abs(loss16 - loss32) / loss32 < 1e-2
    assert min(cosine(grads16[n], grads32[n]) for n in grads32) > 0.99


@pytest.mark.skipif(not liger.installed(), reason="liger-kernel is not installed (the [liger] extra)")
def test_liger_agrees_with_transformers_layers(tiny_llama, llama_module_restored):
    tokenizer = load_tokenizer(str(tiny_llama))
    batches = packed_batches(tokenizer, rows_for(tokenizer, 12, seed=6))
    assert llama_module_restored.apply_rotary_pos_emb.__module__ == llama_module_restored.__name__
    plain_loss, plain_grads = loss_and_grads(lora_model(tiny_llama, torch.bfloat16), batches)
    model = lora_model(tiny_llama, torch.bfloat16)
    liger.apply(unwrap(model))
    assert llama_module_restored.apply_rotary_pos_emb.__module__ != llama_module_restored.__name__  # it did patch
    liger_loss, liger_grads = loss_and_grads(model, batches)
    assert abs(liger_loss - plain_loss) / plain_loss < 1e-2
    assert min(cosine(liger_grads[n], plain_grads[n]) for n in plain_grads) > 0.99


def test_training_run_on_cuda(tiny_project, llama_module_restored):
    import tunesmith

    config = tunesmith.load_config(tiny_project)
    tunesmith.train(config)
    run = Path(config.output)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train_tokens_per_s" in r][-1]
    assert last["device"] == "cuda" and last["liger"] == liger.installed()
    assert last["peak_memory_mb"] > 0 and last["train_tokens_per_s"] > 0
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    assert losses[-1] < losses[0]  # it learns
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_the_chunked_head_loss_never_makes_the_host_wait():
    """On CUDA the chunked cross-entropy reads no device value (no branch on one, no nonzero): each such read would
    make the host wait for the GPU, at every chunk. torch raises on any synchronizing call in "error" mode."""
    from tunesmith.train.loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    hidden = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(1000, 64, device="cuda", dtype=torch.bfloat16) / 8
    labels = torch.randint(0, 1000, (300,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = linear_cross_entropy_sum(hidden, weight, labels, chunk_elements=64_000)  # 64 rows a chunk: 5 chunks
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    reference = torch.nn.functional.cross_entropy((hidden.detach().float() @ weight.float().T), labels, reduction="sum")
    assert abs(loss.item() - reference.item()) < 1e-2 * reference.item()
