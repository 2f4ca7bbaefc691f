"""Fused CPU kernels (cpu_kernels.c) for the element-wise steps of LoRA training: built once per machine with the
system C compiler, cached, and called through ctypes.

PyTorch runs SwiGLU, RMSNorm, RoPE and the causal softmax as chains of separate passes over [tokens x width]
tensors, and on a small CPU each pass is bound by memory traffic. torch.compile would fuse them, but compiling
costs more than a small run trains (train/fused_layers.py); a C file of a few kernels compiles in under a second.
Measured on the 2-core AVX512-BF16 CPU, [8 x 249 x 1536] bf16: SwiGLU forward 1.06 ms against 1.40 (two
PyTorch ops), and its backward is one pass instead of five.

No compiler, a failed build or `train.cpu_kernels: false` leaves the PyTorch ops in place: the kernels change
speed and memory, not what is computed (within bf16 rounding; tests/test_cpu_kernels.py compares them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tunesmith.errors import ConfigError

log = logging.getLogger(__name__)
INSTALL = "install a C compiler (gcc or clang; CC picks one)"
FIX = f"{INSTALL} for a CPU run, or set train.cpu_kernels: auto (or false)"

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# -ffast-math lets GCC call glibc's vectorized expf; the kernels handle no inf or NaN specially (a NaN stays NaN
# through the arithmetic and the training guard stops on it).
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared")
# On x86 GCC uses 256-bit vectors unless told otherwise; 512-bit ones (where -march=native has AVX-512) took SwiGLU
# forward from 1.36-1.41 to 1.01-1.04 ms on [1,992 x 1,536] bf16 (the expf calls are vectorized too).
X86_FLAGS = ("-mprefer-vector-width=512",)
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
SIGNATURES = {
    "swiglu_forward": (_P, _P, _I, _P, _I, _I),
    "swiglu_backward": (_P, _P, _P, _I, _P, _P, _P, _I, _I, _I),
    "rms_norm_forward": (_P, _P, _F, _P, _P, _I, _I),
    "rms_norm_apply": (_P, _P, _P, _P, _I, _I),
    "rms_norm_backward": (_P, _P, _P, _P, _P, _I, _I),
    "rope": (_P, _I, _I, _I, _P, _P, _I, _I, _P, _I, _I, _I, _I, _I, _I, _I, _F, ctypes.c_int),
    "causal_softmax": (_P, _I, _I),
    "causal_softmax_backward": (_P, _P, _I, _I),
}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_flags() -> str:
    """The CPU's feature flags: -march=native code built on one CPU may not run on another that shares the
    cache directory."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            return next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _flags() -> tuple[str, ...]:
    return FLAGS + (X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else ())


def _build(compiler: str) -> Path:
    """The shared library for this source, compiler and CPU, compiled into the cache on first use."""
    from tunesmith.models.registry import cache_dir

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(_flags()), version, platform.machine(),
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so a process that finds the file finds a whole one.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run([compiler, *_flags(), str(SOURCE), "-o", str(built), "-lm"], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[-2000:])
        os.replace(built, target)
    return target


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library, None), or (None, why it is not there)."""
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler was found (cc or gcc on PATH, or CC)"
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        return None, f"{compiler} could not build them: {error}"
    for name, argtypes in SIGNATURES.items():
        for suffix in SUFFIX.values():
            function = getattr(library, f"{name}_{suffix}")
            function.argtypes, function.restype = argtypes, None
    return library, None


def load() -> Kernels | None:
    """The kernels, or None where they cannot be built (the reason is logged)."""
    library, reason = _library()
    if library is None:
        log.warning("fused CPU kernels off, PyTorch ops instead: %s", reason)
        return None
    return Kernels(library)


def build_problem() -> str | None:
    """Why the kernels could not be built on this machine, or None when they were (or can be)."""
    return _library()[1]


def why_not(device: str, lora: bool, autocast: torch.dtype | None, compile: bool) -> str | None:
    """Why the kernels cannot serve this run, or None when they can (given that they build)."""
    if device != "cpu":
        return f"they are CPU kernels and this run is on {device}"
    if not lora:
        return "they serve LoRA training (full fine-tuning keeps fp32 weights under autocast)"
    if autocast is not None:
        return "this run computes under autocast"
    if compile:
        return "train.compile is set (torch.compile fuses these ops itself)"
    return None


def resolve(setting: bool | str, device: str, lora: bool, autocast: torch.dtype | None,
            compile: bool) -> Kernels | None:
    """train.cpu_kernels: auto (use them where they can run and build), true (must, else a ConfigError naming
    the fix), false (PyTorch ops)."""
    if setting is False:
        return None
    reason = why_not(device, lora, autocast, compile)
    if reason is None:
        library, reason = _library()
        if library is not None:
            return Kernels(library)
    if setting is True:
        raise ConfigError(f"train.cpu_kernels is true but {reason}", FIX)
    return None


def _row_stride(t: torch.Tensor) -> int | None:
    """The stride between consecutive rows of t seen as [rows x t.shape[-1]], or None when its rows are not
    evenly spaced or its last dimension is not contiguous."""
    if t.stride(-1) != 1:
        return None
    leading = [(size, stride) for size, stride in zip(t.shape[:-1], t.stride()[:-1]) if size != 1]
    if not leading:
        return t.shape[-1]
    row = expected = leading[-1][1]
    for size, stride in reversed(leading):
        if stride != expected:
            return None
        expected *= size
    return row


class Kernels:
    """Typed calls into the library. Each method takes CPU tensors of one dtype (fp32 or bf16); `supports` says
    whether a tensor qualifies, and the callers (train/fused_layers.py) check it before choosing this path."""

    def __init__(self, library: ctypes.CDLL):
        self._library = library

    def _fn(self, name: str, dtype: torch.dtype):
        return getattr(self._library, f"{name}_{SUFFIX[dtype]}")

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype in SUFFIX

    # --- SwiGLU ---------------------------------------------------------------------------------------------

    def swiglu_forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up of a joined [..., 2 * cols] gate/up product; returns [..., cols]."""
        cols = gate_up.shape[-1] // 2
        rows = gate_up.numel() // gate_up.shape[-1]
        ld = _checked_rows(gate_up)
        out = torch.empty(*gate_up.shape[:-1], cols, dtype=gate_up.dtype)
        self._fn("swiglu_forward", gate_up.dtype)(gate_up.data_ptr(), gate_up[..., cols:].data_ptr(), ld,
                                                  out.data_ptr(), rows, cols)
        return out

    def swiglu_backward(self, grad: torch.Tensor, gate_up: torch.Tensor, want_product: bool):
        """(d loss / d gate_up as one [..., 2 * cols] tensor, silu(gate) * up or None) from grad = d loss / d out."""
        cols = gate_up.shape[-1] // 2
        rows = gate_up.numel() // gate_up.shape[-1]
        ld = _checked_rows(gate_up)
        grad = grad.contiguous()
        grad_gate_up = torch.empty(*gate_up.shape[:-1], 2 * cols, dtype=gate_up.dtype)
        product = torch.empty_like(grad) if want_product else None
        self._fn("swiglu_backward", gate_up.dtype)(
            grad.data_ptr(), gate_up.data_ptr(), gate_up[..., cols:].data_ptr(), ld,
            product.data_ptr() if product is not None else None, grad_gate_up.data_ptr(),
            grad_gate_up[..., cols:].data_ptr(), 2 * cols, rows, cols)
        return grad_gate_up, product

    # --- RMSNorm --------------------------------------------------------------------------------------------

    def rms_norm_forward(self, x: torch.Tensor, weight: torch.Tensor, eps: float):
        """(y, rstd): y = x * rstd * weight, rstd = rsqrt(mean(x^2) + eps) per row in fp32 ([..., 1])."""
        x = x.contiguous()
        rstd = torch.empty(*x.shape[:-1], 1, dtype=torch.float32)
        y = torch.empty_like(x)
        self._fn("rms_norm_forward", x.dtype)(x.data_ptr(), weight.contiguous().data_ptr(), eps, rstd.data_ptr(),
                                              y.data_ptr(), x.numel() // x.shape[-1], x.shape[-1])
        return y, rstd

    def rms_norm_apply(self, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x * rstd * weight, equal bit for bit to rms_norm_forward's y for the same x and its rstd."""
        y = torch.empty_like(x)
        self._fn("rms_norm_apply", x.dtype)(x.data_ptr(), rstd.data_ptr(), weight.contiguous().data_ptr(),
                                            y.data_ptr(), x.numel() // x.shape[-1], x.shape[-1])
        return y

    def rms_norm_backward(self, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          rstd: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        self._fn("rms_norm_backward", x.dtype)(grad.data_ptr(), x.data_ptr(), weight.contiguous().data_ptr(),
                                               rstd.data_ptr(), grad_x.data_ptr(), x.numel() // x.shape[-1],
                                               x.shape[-1])
        return grad_x

    # --- RoPE and causal softmax ----------------------------------------------------------------------------

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, scale: float,
             transpose: bool) -> torch.Tensor:
        """out = scale * (x * cos + rotate_half(x) * sin) for x and out [b, s, heads, d] (any strides, last
        dimension contiguous) and cos, sin [b or 1, s, d]; transpose: the map's transpose (the backward pass)."""
        b, s, heads, d = x.shape
        if x.stride(-1) != 1 or out.stride(-1) != 1 or out.shape != x.shape:
            raise ValueError("rope needs x and out of one shape with a contiguous last dimension")
        cos, sin = cos.contiguous(), sin.contiguous()
        if cos.shape[-2:] != (s, d) or sin.shape != cos.shape:
            raise ValueError(f"rope: cos/sin of shape {tuple(cos.shape)} do not match x of shape {tuple(x.shape)}")
        cos_batch = 0 if cos.shape[0] == 1 else cos.stride(0)
        self._fn("rope", x.dtype)(x.data_ptr(), x.stride(0), x.stride(1), x.stride(2), cos.data_ptr(),
                                  sin.data_ptr(), cos_batch, cos.stride(1), out.data_ptr(), out.stride(0),
                                  out.stride(1), out.stride(2), b, s, heads, d, scale, int(transpose))
        return out

    def causal_softmax_(self, scores: torch.Tensor) -> torch.Tensor:
        """Causal softmax in place over contiguous scores [..., groups * s, s] (row r is query r % s)."""
        if not scores.is_contiguous():
            raise ValueError("causal_softmax_ needs contiguous scores")
        s = scores.shape[-1]
        self._fn("causal_softmax", scores.dtype)(scores.data_ptr(), scores.numel() // s, s)
        return scores

    def causal_softmax_backward_(self, grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """d loss / d scores in place over grad (d loss / d probs), both contiguous and shaped like probs."""
        if not grad.is_contiguous() or not probs.is_contiguous() or grad.shape != probs.shape:
            raise ValueError("causal_softmax_backward_ needs contiguous grad and probs of one shape")
        s = probs.shape[-1]
        self._fn("causal_softmax_backward", probs.dtype)(grad.data_ptr(), probs.data_ptr(), probs.numel() // s, s)
        return grad


def _checked_rows(t: torch.Tensor) -> int:
    stride = _row_stride(t)
    if stride is None:
        raise ValueError(f"tensor of shape {tuple(t.shape)} and strides {t.stride()} is not evenly spaced rows")
    return stride
