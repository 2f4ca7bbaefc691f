"""Where a plan runs: the device kind, its memory, and its matmul throughput.

`--device` takes `cpu`, `cuda` (detect this machine's), or a hypothetical one: `cpu:24GB`, `cuda:80GB`, and a GPU
name for the time estimate, `cuda:80GB:H100`. GB here means GiB (2**30 bytes), as `nvidia-smi` and `free -g`
count: an "80GB" H100 shows 79.6 GiB to torch.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from tunesmith.errors import ConfigError

# Dense bf16 tensor-core TFLOP/s from the vendors' spec sheets (without sparsity). Matched by substring of
# torch.cuda.get_device_name(), longest key first, so "A100" does not catch "A10".
GPU_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0, "A6000": 155.0, "4090": 165.0,
    "3090": 71.0, "V100": 125.0, "T4": 65.0,
}
UNKNOWN_GPU_TFLOPS = 312.0  # an A100-class assumption when the GPU name is unknown
# Model FLOP utilization: the share of the spec-sheet rate that a training step sustains. Measured on an H200
# (docs/benchmarks.md, "Training engine on a GPU"): LoRA on the Llama-3.2-1B shape, 32 examples of ~200 tokens
# per step, 7-10% over a 32-step epoch (warm-up included) and 12-15% in steady steps; 0.3, the figure often
# quoted for well-fed fine-tuning, was 3-4x optimistic for such small steps.
CUDA_MFU = 0.12
# The share of the measured GEMM rate a CPU LoRA step sustains. It was 0.08 when the step was bound by small ops
# around the matmuls (310 tokens/s on SmolLM2-135M). With the fused layers and the fused CPU kernels
# (train/cpu_kernels.py) the support example trained one epoch in 70 s (681 tokens/s) where 0.08 predicted 300 s
# against a GEMM measured at ~1,000-1,200 GFLOP/s at the time: ~0.34; without the kernels a run is ~25% slower.
# docs/plan.md compares this constant with the runs measured for the planner.
CPU_MFU = 0.3
GEMM_SIZE = 1024  # 2 x 1024^3 = 2.1 GFLOP per product: ~1 ms in bf16 on AMX, ~8 ms in fp32


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda"
    memory_bytes: int  # what a training process may use: available RAM, or the GPU's free memory
    name: str  # CPU model or GPU name, "" when unknown
    detected: bool  # True: this machine, measured; False: given with --device

    @property
    def label(self) -> str:
        size = f"{self.memory_bytes / 2**30:.1f} GiB"
        origin = "available now" if self.detected else "given"
        return f"{self.kind}{' ' + self.name if self.name else ''}, {size} {origin}"


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(TB|TIB|GB|GIB|MB|MIB)$", re.IGNORECASE)
_UNITS = {"TB": 2**40, "TIB": 2**40, "GB": 2**30, "GIB": 2**30, "MB": 2**20, "MIB": 2**20}


def _parse_size(text: str, spec: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise ConfigError(f"--device '{spec}': '{text}' is not a memory size",
                          "write the memory as a number and a unit, e.g. --device cuda:80GB or --device cpu:24GB")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise ConfigError(f"--device '{spec}': the memory size must be above zero", "e.g. --device cpu:24GB")
    return int(value)


def parse_device(spec: str | None) -> Device:
    """None/'auto': this machine's CUDA GPU if visible, else its CPU; see the module docstring for the forms."""
    if spec is None or spec.strip().lower() in ("", "auto"):
        return detect_device(None)
    parts = [p.strip() for p in spec.split(":")]
    kind = parts[0].lower()
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"--device '{spec}': unknown device kind '{parts[0]}'",
                          "use cpu, cuda, or a hypothetical device with its memory: cpu:24GB, cuda:80GB, "
                          "cuda:80GB:H100")
    if len(parts) == 1:
        return detect_device(kind)
    if len(parts) > 3:
        raise ConfigError(f"--device '{spec}' has too many ':' parts",
                          "use KIND:MEMORY[:GPU_NAME], e.g. cuda:80GB:H100")
    name = parts[2] if len(parts) == 3 else ""
    if name and kind == "cpu":
        raise ConfigError(f"--device '{spec}': a GPU name is only meaningful for cuda", "write e.g. cpu:24GB")
    return Device(kind, _parse_size(parts[1], spec), name.upper(), detected=False)


def detect_device(kind: str | None) -> Device:
    import torch

    if kind in (None, "cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return Device("cuda", free, torch.cuda.get_device_name(0), detected=True)
    if kind == "cuda":
        raise ConfigError("--device cuda: no CUDA GPU is visible on this machine",
                          "plan for a GPU you do not have with its memory, e.g. --device cuda:80GB:H100")
    import psutil

    return Device("cpu", psutil.virtual_memory().available, _cpu_name(), detected=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def gpu_tflops(name: str) -> tuple[float, bool]:
    """(spec-sheet bf16 TFLOP/s, known?) for a GPU name."""
    upper = name.upper()
    for key in sorted(GPU_BF16_TFLOPS, key=len, reverse=True):
        if key in upper:
            return GPU_BF16_TFLOPS[key], True
    return UNKNOWN_GPU_TFLOPS, False


def cpu_gemm_gflops(bf16: bool) -> float:
    """A GEMM micro-benchmark on this CPU: best of 3 products of two 1024 x 1024 matrices after one warm-up,
    in bf16 when the training would compute in bf16. ~10-50 ms in all; it never runs the model."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=dtype), torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * GEMM_SIZE**3 / best / 1e9


def sustained_flops(device: Device, bf16: bool, measure: bool = True) -> tuple[float, str]:
    """FLOP/s a training step is assumed to sustain, and how that number was obtained."""
    if device.kind == "cuda":
        tflops, known = gpu_tflops(device.name)
        what = device.name or "unnamed GPU"
        source = "spec sheet" if known else "unknown GPU, A100-class assumed"
        note = f"{what}: {tflops:.0f} TFLOP/s bf16 ({source}) x MFU {CUDA_MFU}"
        return tflops * 1e12 * CUDA_MFU, note
    if not measure:
        return 0.0, "not measured"
    gflops = cpu_gemm_gflops(bf16)
    return gflops * 1e9 * CPU_MFU, (f"{'bf16' if bf16 else 'fp32'} GEMM measured {gflops:.0f} GFLOP/s x "
                                    f"CPU efficiency {CPU_MFU}")
