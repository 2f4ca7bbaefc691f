"""The trainer's fused RMSNorm / SwiGLU / RoPE + attention (train/fused_layers.py) compute what the model's own
layers compute, take their fast path where they should, and fall back where they cannot be exact."""

import pytest
import torch

from conftest import cpu_kernels_or_skip, make_pairs
from tunesmith.config import MethodConfig
from tunesmith.data.batching import collate
from tunesmith.data.tokenize import tokenize_example
from tunesmith.models.adapters import apply_method
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.train import fused_layers, lora_fast
from tunesmith.train.lora_fast import use_fast_lora
from tunesmith.train.loop import label_loss_sum


def _batch(tiny_llama, n=6):
    tokenizer = load_tokenizer(str(tiny_llama))
    rows = [tokenize_example(tokenizer, [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}], 128)
            for r in make_pairs(n, seed=11)]
    return collate(rows, tokenizer.pad_token_id)  # right-padded rows of different lengths


def _kernels(use: bool):
    """The fused CPU kernels when asked for (skipping where they cannot be built), else None."""
    return cpu_kernels_or_skip() if use else None


def _model(tiny_llama, dtype, fused: bool, kernels=None, **method):
    torch.manual_seed(3)
    model = apply_method(load_causal_lm(str(tiny_llama), dtype, "eager"), MethodConfig(**method), "cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)  # B starts at zero in PEFT, which would hide a wrong adapter path
            elif "norm" in name:
                p.uniform_(0.5, 1.5)  # random init leaves the norm weights at 1, which would hide a wrong scaling
    use_fast_lora(model)
    if fused:
        counts = fused_layers.use_fused_layers(model, kernels)
        assert counts == {"norm": 5, "mlp": 2, "attention": 2}  # 2 layers x 2 norms + the final norm
        if not method:  # every projection adapted: q/k/v and gate/up weights now share one buffer each
            layer = model.get_base_model().model.layers[0]
            assert lora_fast._joined_weight([layer.self_attn.q_proj, layer.self_attn.k_proj,
                                             layer.self_attn.v_proj]) is not None
            assert lora_fast._joined_weight([layer.mlp.gate_proj, layer.mlp.up_proj]) is not None
    model.train()
    return model


def _loss_and_grads(model, batch):
    total, n = label_loss_sum(model, batch)
    (total / n).backward()
    grads = {k: p.grad.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return float(total.detach()) / n, grads


@pytest.mark.parametrize("use_kernels", [False, True])
@pytest.mark.parametrize("eager_max, method, groups", [
    (fused_layers.EAGER_MAX_TOKENS, {}, 4),  # matmul attention; q/k/v and gate/up as grouped LoRA products
    (4, {}, 4),  # SDPA attention
    (fused_layers.EAGER_MAX_TOKENS, {"target_modules": ["q_proj", "v_proj"]}, 0),  # k is frozen: one by one
])
def test_fused_layers_equal_the_model_in_fp32(tiny_llama, monkeypatch, eager_max, method, groups, use_kernels):
    kernels = _kernels(use_kernels)
    monkeypatch.setattr(fused_layers, "EAGER_MAX_TOKENS", eager_max)
    calls, norms = [], []
    original = lora_fast._LoraGroup.apply
    monkeypatch.setattr(lora_fast._LoraGroup, "apply", lambda *a: calls.append(1) or original(*a))
    if kernels is None:
        normalize = fused_layers._normalize
        monkeypatch.setattr(fused_layers, "_normalize", lambda *a: norms.append(1) or normalize(*a))
    else:  # the kernels' forward pass normalizes in rms_norm_forward; rms_norm_apply is the rebuild alone
        apply = kernels.rms_norm_apply
        monkeypatch.setattr(kernels, "rms_norm_apply", lambda *a: norms.append(1) or apply(*a))
    batch = _batch(tiny_llama)
    loss_ref, grads_ref = _loss_and_grads(_model(tiny_llama, torch.float32, fused=False, **method), batch)
    loss, grads = _loss_and_grads(_model(tiny_llama, torch.float32, fused=True, kernels=kernels, **method), batch)
    assert len(calls) == groups
    # 5 norms forward; each grouped product rebuilt its input from its norm in backward instead of keeping it
    assert len(norms) == (0 if kernels else 5) + groups
    assert abs(loss - loss_ref) < 1e-5 * abs(loss_ref)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        scale = grads_ref[name].abs().max()
        assert (grad - grads_ref[name]).abs().max() <= 1e-5 * scale + 1e-9, name


@pytest.mark.parametrize("use_kernels", [False, True])
def test_fused_bf16_is_as_close_to_fp32_as_the_model_in_bf16(tiny_llama, use_kernels):
    """bf16 rounds differently in the fused layers (softmax written in bf16, the scale folded into RoPE; the
    kernels round each output once), so both bf16 paths are measured against the fp32 result: the fused one may
    not stray further than the model's."""
    kernels = _kernels(use_kernels)
    batch = _batch(tiny_llama)
    truth, truth_grads = _loss_and_grads(_model(tiny_llama, torch.float32, fused=False), batch)
    plain, plain_grads = _loss_and_grads(_model(tiny_llama, torch.bfloat16, fused=False), batch)
    fused, fused_grads = _loss_and_grads(_model(tiny_llama, torch.bfloat16, fused=True, kernels=kernels), batch)
    assert abs(fused - truth) <= 1.5 * abs(plain - truth) + 2e-3 * truth
    for name, grad in fused_grads.items():
        error = (grad - truth_grads[name]).norm() / truth_grads[name].norm()
        reference = (plain_grads[name] - truth_grads[name]).norm() / truth_grads[name].norm()
        assert error <= 1.5 * reference + 1e-3, (name, float(error), float(reference))


@pytest.mark.parametrize("function, shapes", [
    (lambda gate_up: fused_layers._SiluMul.apply(gate_up, None), [(3, 5, 16)]),
    (fused_layers._Rope.apply, [(2, 5, 3, 8), (2, 5, 1, 8), (2, 5, 1, 8)]),
])
def test_hand_written_backward_passes_gradcheck(function, shapes):
    torch.manual_seed(0)
    inputs = [torch.randn(*s, dtype=torch.float64, requires_grad=i == 0) for i, s in enumerate(shapes)]
    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("gate_up_grad", [True, False])
def test_swiglu_lora_backward_gradchecks(gate_up_grad):
    """down_proj(silu(gate) * up) from the joined gate/up product, with the product rebuilt in backward, against
    autograd's numerical gradient; also when only the adapters want gradients (gate and up frozen)."""
    torch.manual_seed(0)
    gate_up = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=gate_up_grad)
    weight, bias = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    a = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)

    def swiglu(x, la, lb):
        return fused_layers._SwiGLULora.apply(x, None, weight, bias, la, lb, 2.0)

    assert torch.autograd.gradcheck(swiglu, (gate_up, a, b))


@pytest.mark.parametrize("weight_grad", [False, True])
def test_rmsnorm_backward_gradchecks(weight_grad):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(8, dtype=torch.float64) + 0.5).requires_grad_(weight_grad)
    assert torch.autograd.gradcheck(lambda a, w: fused_layers.rms_norm(a, w, 1e-6), (x, weight))


@pytest.mark.parametrize("use_kernels", [False, True])
def test_fast_paths_run_for_training_and_fall_back_for_masks_and_caches(tiny_llama, monkeypatch, use_kernels):
    kernels = _kernels(use_kernels)
    calls = {"attention": 0, "norm": 0, "mlp": 0}

    def counting(name, function):
        return lambda *a, **k: calls.__setitem__(name, calls[name] + 1) or function(*a, **k)

    if kernels is None:
        monkeypatch.setattr(fused_layers, "causal_attention", counting("attention", fused_layers.causal_attention))
        monkeypatch.setattr(fused_layers._RMSNorm, "apply", counting("norm", fused_layers._RMSNorm.apply))
    else:
        monkeypatch.setattr(fused_layers._KernelAttention, "apply",
                            counting("attention", fused_layers._KernelAttention.apply))
        monkeypatch.setattr(fused_layers._RMSNormKernel, "apply", counting("norm", fused_layers._RMSNormKernel.apply))
    monkeypatch.setattr(fused_layers._SwiGLULora, "apply", counting("mlp", fused_layers._SwiGLULora.apply))
    plain = _model(tiny_llama, torch.float32, fused=False)
    fused = _model(tiny_llama, torch.float32, fused=True, kernels=kernels)
    label_loss_sum(fused, _batch(tiny_llama, 2))
    assert calls == {"attention": 2, "norm": 5, "mlp": 2}

    # A padding mask (left-padded batch) and a KV cache (generation) go through the model's own attention,
    # with the same results as the unpatched model.
    batch = _batch(tiny_llama, 3)
    mask = batch["attention_mask"].flip(1)
    ids = batch["input_ids"].flip(1)
    calls["attention"] = 0
    plain.eval(), fused.eval()
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask).logits
        got = fused(input_ids=ids, attention_mask=mask).logits
        assert calls["attention"] == 0
        real = mask.bool()
        assert torch.allclose(got[real], expected[real], atol=1e-5)
        prompt = batch["input_ids"][:1, :5]
        assert torch.equal(fused.generate(input_ids=prompt, max_new_tokens=6, do_sample=False),
                           plain.generate(input_ids=prompt, max_new_tokens=6, do_sample=False))
