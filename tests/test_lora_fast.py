"""The trainer's fused LoRA layers (train/lora_fast.py) compute what PEFT's layers compute."""

import pytest
import torch

from conftest import make_pairs
from tunesmith.config import MethodConfig
from tunesmith.data.batching import collate
from tunesmith.data.tokenize import tokenize_example
from tunesmith.models.adapters import apply_method
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.train import lora_fast
from tunesmith.train.loop import label_loss_sum


def _batch(tiny_llama, n=6):
    tokenizer = load_tokenizer(str(tiny_llama))
    rows = [tokenize_example(tokenizer, [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}], 128)
            for r in make_pairs(n, seed=11)]
    return collate(rows, tokenizer.pad_token_id)


def _model(tiny_llama, dtype, **method):
    torch.manual_seed(3)
    model = apply_method(load_causal_lm(str(tiny_llama), dtype, "eager"), MethodConfig(**method), "cpu")
    # B starts at zero in PEFT, which would hide a wrong B path: give every adapter weight a value.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)
    model.train()
    return model


def _loss_and_grads(model, batch):
    total, n = label_loss_sum(model, batch)
    (total / n).backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return float(total.detach()) / n, grads


@pytest.mark.parametrize("method", [{}, {"use_rslora": True}, {"target_modules": ["q_proj", "v_proj"]}])
def test_fused_loss_and_gradients_equal_peft_in_fp32(tiny_llama, method):
    batch = _batch(tiny_llama)
    reference = _loss_and_grads(_model(tiny_llama, torch.float32, **method), batch)
    fused = _model(tiny_llama, torch.float32, **method)
    assert lora_fast.use_fast_lora(fused) > 0
    loss, grads = _loss_and_grads(fused, batch)
    assert abs(loss - reference[0]) < 1e-5 * abs(reference[0])
    assert grads.keys() == reference[1].keys()
    for name, grad in grads.items():
        scale = reference[1][name].abs().max()
        assert (grad - reference[1][name]).abs().max() <= 1e-5 * scale + 1e-9, name


def test_fused_bf16_agrees_with_peft_bf16(tiny_llama):
    """bf16 base weights, fp32 adapters (the CPU default): PEFT computes the adapter path in fp32, the fused
    layers in bf16; the loss agrees to bf16 precision and the adapter gradients stay fp32."""
    batch = _batch(tiny_llama)
    reference = _loss_and_grads(_model(tiny_llama, torch.bfloat16), batch)
    fused = _model(tiny_llama, torch.bfloat16)
    lora_fast.use_fast_lora(fused)
    loss, grads = _loss_and_grads(fused, batch)
    assert abs(loss - reference[0]) / reference[0] < 0.01
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        ref = reference[1][name]
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), ref.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))


def test_the_fused_path_runs_only_where_it_is_exact(tiny_llama, monkeypatch):
    """Dropout, DoRA and disabled adapters go through PEFT's own forward; the plain case does not."""
    batch = _batch(tiny_llama, 2)
    calls = []
    original = lora_fast._LoraLinear.apply
    monkeypatch.setattr(lora_fast._LoraLinear, "apply", lambda *a: calls.append(1) or original(*a))

    plain = _model(tiny_llama, torch.float32)
    lora_fast.use_fast_lora(plain)
    label_loss_sum(plain, batch)
    assert calls, "the plain LoRA layers did not take the fused path"
    calls.clear()
    with torch.no_grad(), plain.disable_adapter():
        disabled, _ = label_loss_sum(plain, batch)
    assert not calls
    base = load_causal_lm(str(tiny_llama), torch.float32, "eager")
    with torch.no_grad():
        assert abs(float(disabled) - float(label_loss_sum(base, batch)[0])) < 1e-4

    for method in ({"lora_dropout": 0.1}, {"kind": "dora"}):
        model = _model(tiny_llama, torch.float32, **method)
        lora_fast.use_fast_lora(model)
        label_loss_sum(model, batch)
        assert not calls, method
