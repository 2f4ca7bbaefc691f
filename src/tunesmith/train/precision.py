"""How the model computes: weight dtype, autocast, attention kernel, per device and method.

Measured on this 2-core AVX512-BF16/AMX CPU, SmolLM2-135M, LoRA r=16 on all projections, support-example batches
of 8 rows x ~83 tokens, forward + backward + AdamW (tokens/s):

    fp32 weights, sdpa attention                    200
    fp32 weights + bf16 autocast, sdpa              242
    bf16 weights + fp32 adapters, sdpa              253
    bf16 weights + fp32 adapters, eager attention   310

A bf16 GEMM runs at ~1,850 GFLOP/s here against ~260 in fp32 (AMX), but at these short rows the step is bound
by the many small ops around the matmuls; the CPU flash-attention kernel is slower than plain matmul attention
for rows of ~100 tokens, and autocast adds a cast per op. So on CPUs with native bf16 the frozen base weights are
stored in bf16 while PEFT keeps the adapter weights in fp32 (its default), and the optimizer updates fp32 values.
Full fine-tuning keeps fp32 weights (bf16 weights would lose small updates) and computes under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Compute:
    weights: torch.dtype  # dtype the base model is loaded in
    autocast: torch.dtype | None  # autocast dtype around forward passes, or None
    attention: str | None  # attn_implementation for transformers; None: its default

    @property
    def name(self) -> str:
        if self.autocast is not None:
            return f"{str(self.weights).removeprefix('torch.')} weights, bf16 autocast"
        return f"{str(self.weights).removeprefix('torch.')} weights"

    def context(self, device: str):
        return torch.autocast(device, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)


# Rows longer than this train with SDPA on a CPU, shorter ones with eager attention (see cpu_attention).
EAGER_MAX_TOKENS = 256


def row_width(lengths: list[int]) -> int:
    """The 90th-percentile row length: about the padded width of a typical length-grouped micro-batch."""
    ordered = sorted(lengths)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else 0


def cpu_attention(row_tokens: int | None) -> str:
    """Eager attention for short rows, SDPA (the CPU flash kernel) for long ones.

    Measured on this CPU, LoRA step with the fused adapter path (train/lora_fast.py), 8 rows, tokens/s and peak
    RSS: 96 tokens eager 423 / sdpa 400; 240 tokens eager 501-514 / sdpa 461-536 (3.7 vs 2.8 GB); 512 tokens
    eager 354-374 / sdpa 430-524 (8.6 vs 5.0 GB). Eager keeps a [heads x s x s] score matrix per layer (fp32
    softmax included), which is what makes long rows slow and large."""
    return "eager" if row_tokens is None or row_tokens <= EAGER_MAX_TOKENS else "sdpa"


def resolve_compute(precision: str, weights_setting: str, method: str, device: str,
                    row_tokens: int | None = None) -> Compute:
    """precision: auto | fp32 | bf16 (train.precision); weights_setting: model.dtype (auto or explicit);
    row_tokens: the typical padded row width of the training batches (picks the CPU attention kernel)."""
    bf16 = precision == "bf16" or (precision == "auto" and (device == "cuda" or cpu_has_native_bf16()))
    attention = cpu_attention(row_tokens) if device == "cpu" else None
    if weights_setting != "auto":
        weights = getattr(torch, weights_setting)
        return Compute(weights, torch.bfloat16 if bf16 and weights == torch.float32 else None, attention)
    if not bf16:
        return Compute(torch.float32, None, attention)
    if method == "full":
        return Compute(torch.float32, torch.bfloat16, attention)
    return Compute(torch.bfloat16, None, attention)
