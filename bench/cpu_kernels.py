"""The fused CPU kernels (train/cpu_kernels.c) against the PyTorch ops they replace, op by op, in the same run.

Shapes are one SmolLM2-135M layer's at the training benchmark's setting (8 rows x 249 tokens, bf16): SwiGLU on
[1,992 x 1,536], RMSNorm on [1,992 x 576], RoPE on q [8 x 249 x 9 x 64] read from the joined q/k/v product, and
the causal softmax over the stacked GQA scores [8 x 3 x 747 x 249]. The PyTorch column is what
train/fused_layers.py runs without the kernels. Each op runs `--repeat` times after 3 warm-up calls; the
median per call is printed, with the ratio.

    .venv/bin/python bench/cpu_kernels.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import types

import torch
import torch.nn.functional as F

from tunesmith.train import cpu_kernels, fused_layers


def median_ms(function, repeat: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def torch_swiglu_backward(grad, gate_up):
    return fused_layers._swiglu_backward(None, grad, gate_up, want_product=True)


def torch_rms_norm(x, weight):
    return fused_layers._normalize(x, fused_layers._rstd(x, 1e-5), weight)


def torch_rms_norm_backward(grad, x, weight, rstd):
    ctx = types.SimpleNamespace(saved_tensors=(x, weight, rstd), needs_input_grad=(True, False, False))
    return fused_layers._RMSNorm.backward(ctx, grad)[0]


def torch_causal_softmax(scores, groups):
    mask = fused_layers._stacked_causal_mask(groups, scores.shape[-1], scores.device)
    return torch.softmax(scores.masked_fill_(mask, float("-inf")), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    kernels = cpu_kernels.load()
    if kernels is None:
        raise SystemExit(f"the kernels cannot be built here: {cpu_kernels.build_problem()}")
    torch.manual_seed(0)
    bf16 = torch.bfloat16
    b, s, hidden, inter, heads, kv, d = 8, 249, 576, 1536, 9, 3, 64
    gate_up, grad_h = torch.randn(b, s, 2 * inter, dtype=bf16), torch.randn(b, s, inter, dtype=bf16)
    x, weight, grad_x = torch.randn(b, s, hidden, dtype=bf16), torch.rand(hidden, dtype=bf16) + 0.5, \
        torch.randn(b, s, hidden, dtype=bf16)
    _, rstd = kernels.rms_norm_forward(x, weight, 1e-5)
    qkv = torch.randn(b, s, (heads + 2 * kv) * d, dtype=bf16)
    q = qkv[..., :heads * d].view(b, s, heads, d)
    cos, sin = torch.randn(1, s, d, dtype=bf16), torch.randn(1, s, d, dtype=bf16)
    rope_out = torch.empty(b, heads, s, d, dtype=bf16).transpose(1, 2)
    scores = torch.randn(b, kv, 3 * s, s, dtype=bf16)
    gate, up = gate_up.chunk(2, dim=-1)

    rows = [
        ("SwiGLU forward", lambda: F.silu(gate).mul_(up), lambda: kernels.swiglu_forward(gate_up)),
        ("SwiGLU backward (+ product rebuilt)", lambda: torch_swiglu_backward(grad_h, gate_up),
         lambda: kernels.swiglu_backward(grad_h, gate_up, want_product=True)),
        ("RMSNorm forward", lambda: torch_rms_norm(x, weight), lambda: kernels.rms_norm_forward(x, weight, 1e-5)),
        ("RMSNorm backward", lambda: torch_rms_norm_backward(grad_x, x, weight, rstd),
         lambda: kernels.rms_norm_backward(grad_x, x, weight, rstd)),
        ("RoPE on q, into the stacked layout", lambda: fused_layers._Rope.apply(q, cos[:, :, None], sin[:, :, None])
         .view(b, s, kv, 3, d).permute(0, 2, 3, 1, 4).reshape(b, kv, 3 * s, d),
         lambda: kernels.rope(q, cos, sin, rope_out, 1.0, False)),
        ("causal softmax (mask + softmax; a copy of the scores each)", lambda: torch_causal_softmax(scores.clone(), 3),
         lambda: kernels.causal_softmax_(scores.clone())),
    ]
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, bf16, median of "
          f"{args.repeat}\n")
    print("| op | PyTorch ms | kernel ms | speed-up |")
    print("|---|---:|---:|---:|")
    for name, reference, fused in rows:
        slow, fast = median_ms(reference, args.repeat), median_ms(fused, args.repeat)
        print(f"| {name} | {slow:.2f} | {fast:.2f} | {slow / fast:.1f}x |")


if __name__ == "__main__":
    main()
