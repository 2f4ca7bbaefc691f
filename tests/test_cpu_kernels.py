"""The fused CPU kernels (train/cpu_kernels.c) compute what the PyTorch ops they replace compute, forward and
backward, on the strided layouts the trainer hands them; and a machine that cannot build them trains without."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import cpu_kernels_or_skip
from tunesmith.errors import ConfigError
from tunesmith.train import cpu_kernels, fused_layers


@pytest.fixture(scope="module")
def kernels():
    return cpu_kernels_or_skip()


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype):
    """fp32: float order only. bf16: each output rounded once to bf16 (8 bits), so within a few bf16 steps of
    the value computed in fp64 from the same inputs."""
    tolerance = 2e-5 if dtype == torch.float32 else 2e-2
    scale = want.abs().max().clamp_min(1e-6)
    error = (got.double() - want.double()).abs().max() / scale
    assert error <= tolerance, float(error)


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 37), (2 * 7, 160)])  # odd widths: the vector loops' tails
def test_swiglu_forward_and_backward_match_pytorch(kernels, dtype, rows, cols):
    torch.manual_seed(0)
    gate_up = (torch.randn(2, rows, 2 * cols) * 3).to(dtype)  # x3: reaches sigmoid's flat ends
    grad = torch.randn(2, rows, cols).to(dtype)
    reference = gate_up.double().requires_grad_()
    gate, up = reference.chunk(2, dim=-1)
    product = F.silu(gate) * up
    product.backward(grad.double())
    _close(kernels.swiglu_forward(gate_up), product.detach(), dtype)
    grad_gate_up, rebuilt = kernels.swiglu_backward(grad, gate_up, want_product=True)
    _close(grad_gate_up, reference.grad, dtype)
    _close(rebuilt, product.detach(), dtype)
    assert kernels.swiglu_backward(grad, gate_up, want_product=False)[1] is None
    # gate and up as the two halves of a wider joined product (the grouped LoRA output): rows 2 * cols apart
    assert torch.equal(kernels.swiglu_forward(gate_up), kernels.swiglu_forward(gate_up.contiguous()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_pytorch_and_its_rebuild_is_exact(kernels, dtype):
    torch.manual_seed(1)
    x = (torch.randn(3, 5, 67) * 4).to(dtype)
    weight = (torch.rand(67) + 0.5).to(dtype)
    grad = torch.randn(3, 5, 67).to(dtype)
    reference = x.double().requires_grad_()
    rstd_want = reference.pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()
    y_want = reference * rstd_want * weight.double()
    y_want.backward(grad.double())
    y, rstd = kernels.rms_norm_forward(x, weight, 1e-6)
    _close(y, y_want.detach(), dtype)
    _close(rstd, rstd_want.detach(), torch.float32)
    assert torch.equal(kernels.rms_norm_apply(x, rstd, weight), y)  # what the grouped LoRA product rebuilds
    _close(kernels.rms_norm_backward(grad, x, weight, rstd), reference.grad, dtype)


def _rope_reference(x, cos, sin, scale):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return scale * (x * cos[:, :, None] + rotated * sin[:, :, None])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_reads_and_writes_strided_layouts_and_its_transpose_is_the_adjoint(kernels, dtype):
    torch.manual_seed(2)
    b, s, heads, d = 2, 7, 3, 8
    joined = torch.randn(b, s, (heads + 2) * d).to(dtype)  # q is the first heads * d columns
    q = joined[..., :heads * d].view(b, s, heads, d)
    cos, sin = torch.randn(1, s, d).to(dtype), torch.randn(1, s, d).to(dtype)
    out = torch.empty(b, heads, s, d, dtype=dtype).transpose(1, 2)  # written in [b, heads, s, d] order
    kernels.rope(q, cos, sin, out, 0.5, transpose=False)
    _close(out, _rope_reference(q.double(), cos.double(), sin.double(), 0.5), dtype)
    # backward: <R x, g> = <x, R^T g> for the map R and its transpose, with per-batch cos/sin this time
    cos, sin = torch.randn(b, s, d), torch.randn(b, s, d)
    x, g = torch.randn(b, s, heads, d), torch.randn(b, s, heads, d)
    forward = kernels.rope(x, cos, sin, torch.empty_like(x), 0.5, transpose=False)
    backward = kernels.rope(g, cos, sin, torch.empty_like(g), 0.5, transpose=True)
    assert torch.allclose((forward * g).sum(), (x * backward).sum(), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_softmax_over_stacked_heads_matches_masked_softmax(kernels, dtype):
    torch.manual_seed(3)
    b, kv, groups, s = 2, 3, 2, 9
    scores = (torch.randn(b, kv, groups * s, s) * 4).to(dtype)
    grad = torch.randn(b, kv, groups * s, s).to(dtype)
    reference = scores.double().requires_grad_()
    mask = fused_layers._stacked_causal_mask(groups, s, torch.device("cpu"))
    probs_want = torch.softmax(reference.masked_fill(mask, float("-inf")), dim=-1)
    probs_want.backward(grad.double())
    probs = kernels.causal_softmax_(scores.clone())
    _close(probs, probs_want.detach(), dtype)
    assert not probs[..., mask].any()  # the keys a query cannot see get exactly 0
    _close(kernels.causal_softmax_backward_(grad.clone(), probs), reference.grad, dtype)


def test_kernel_attention_equals_the_pytorch_path(kernels):
    """_KernelAttention (RoPE into the stacked layout, in-place causal softmax, gradients into one q/k/v tensor)
    against RoPE + causal_attention through autograd, fp32, GQA with 2 query heads per key head."""
    torch.manual_seed(4)
    b, s, heads, kv, d = 2, 11, 4, 2, 8
    qkv = torch.randn(b, s, (heads + 2 * kv) * d, requires_grad=True)
    cos, sin = torch.randn(1, s, d), torch.randn(1, s, d)
    grad = torch.randn(b, s, heads * d)
    got = fused_layers._KernelAttention.apply(qkv, cos, sin, 0.25, heads, kv, kernels)
    (got_grad,) = torch.autograd.grad(got, qkv, grad)
    q, k, v = qkv.split([heads * d, kv * d, kv * d], dim=-1)
    c, n = cos.unsqueeze(2), sin.unsqueeze(2)
    q = fused_layers._Rope.apply(q.reshape(b, s, heads, d), c * 0.25, n * 0.25)
    k = fused_layers._Rope.apply(k.reshape(b, s, kv, d), c, n)
    want = fused_layers.causal_attention(q, k, v.reshape(b, s, kv, d), 1.0)
    (want_grad,) = torch.autograd.grad(want, qkv, grad)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got_grad, want_grad, atol=1e-5, rtol=1e-5)


def test_the_build_is_cached_per_machine(kernels, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    compiler = cpu_kernels._compiler()
    first = cpu_kernels._build(compiler)
    assert first.parent == tmp_path / "kernels" and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels._build(compiler) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no scratch files left behind


@pytest.fixture
def no_compiler(tmp_path, monkeypatch):
    """A machine whose C compiler fails (CC=false): a fresh cache, and the library's memo cleared around it."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    cpu_kernels._library.cache_clear()
    yield
    cpu_kernels._library.cache_clear()


def test_a_machine_that_cannot_build_them_trains_with_pytorch_ops(no_compiler, tiny_project):
    from helpers import cli

    assert cpu_kernels.resolve("auto", "cpu", True, None, False) is None
    assert "could not build them" in cpu_kernels.build_problem()
    with pytest.raises(ConfigError) as caught:
        cpu_kernels.resolve(True, "cpu", True, None, False)
    assert "train.cpu_kernels is true" in str(caught.value) and "C compiler" in caught.value.fix
    # a whole run (CC=false reaches the CLI's process through the environment): it says so and trains without
    result = cli("train", str(tiny_project), "--set", "train.max_steps=2", "--set", "train.device=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused CPU kernels off, PyTorch ops instead" in result.stdout and "C compiler" in result.stdout
    last = json.loads((tiny_project.parent / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["cpu_kernels"] is False
    refused = cli("train", str(tiny_project), "--set", "train.cpu_kernels=true", "--force")
    assert refused.returncode == 1 and "train.cpu_kernels is true" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_where_they_do_not_apply():
    assert cpu_kernels.resolve(False, "cpu", True, None, False) is None
    assert "cuda" in cpu_kernels.why_not("cuda", True, None, False)
    assert "LoRA" in cpu_kernels.why_not("cpu", False, None, False)
    assert "autocast" in cpu_kernels.why_not("cpu", True, torch.bfloat16, False)
    assert "compile" in cpu_kernels.why_not("cpu", True, None, True)
    assert cpu_kernels.resolve("auto", "cuda", True, None, False) is None
    with pytest.raises(ConfigError):
        cpu_kernels.resolve(True, "cuda", True, None, False)


def test_a_training_run_uses_them_and_says_so(kernels, tiny_project):
    from helpers import cli

    result = cli("train", str(tiny_project), "--set", "train.max_steps=2", "--set", "train.cpu_kernels=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused CPU kernels" in result.stdout
    run = tiny_project.parent / "runs" / "tiny"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["cpu_kernels"] is True
