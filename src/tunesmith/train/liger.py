"""Liger kernels (Triton) on CUDA: RMSNorm, RoPE and SwiGLU in one kernel each, and the LM head's cross-entropy
without the logits tensor. Used automatically when the optional extra is installed (`pip install
'tunesmith[liger]'`), the device is CUDA and the model type is one Liger patches; `train.liger` overrides.

Liger patches transformers' modeling module for the whole process (its RoPE is a module-level function), so
every model of that type built later in the process uses it too: a tunesmith process trains one model, on one
device, and evaluates it there. Only the plain bf16 case is patched (LoRA on bf16 weights, no autocast); full
fine-tuning under autocast keeps transformers' own layers, since Liger's kernels are not written for
autocast's mixed dtypes.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from tunesmith.errors import ConfigError

FIX = "install it with pip install 'tunesmith[liger]' on a CUDA machine, or set train.liger: auto (or false)"


def installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def supported_types() -> set[str]:
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def why_not(device: str, model_type: str, autocast: torch.dtype | None) -> str | None:
    """Why Liger cannot run here, or None when it can."""
    if device != "cuda":
        return f"Liger's kernels are Triton kernels for CUDA; this run is on {device}"
    if not installed():
        return "liger-kernel (and triton) are not installed"
    if autocast is not None:
        return "this run computes under autocast (full fine-tuning keeps fp32 weights); Liger runs the bf16 LoRA case"
    if model_type not in supported_types():
        return f"Liger has no kernels for model type '{model_type}'"
    return None


def resolve(setting: bool | str, device: str, model_type: str, autocast: torch.dtype | None) -> bool:
    """train.liger: auto (use it where it can run), true (must run, else a ConfigError), false."""
    if setting is False:
        return False
    reason = why_not(device, model_type, autocast)
    if reason is not None and setting is True:
        raise ConfigError(f"train.liger is true but {reason}", FIX)
    return reason is None


def apply(base_model) -> None:
    """Patch a loaded transformers model (not the PEFT wrapper) with Liger's RMSNorm, RoPE and SwiGLU. The loss
    stays with tunesmith (head_loss_sum, called by train/loop.label_loss_sum), which runs the head on labelled
    positions only."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    # Liger probes its optional backends (CuTe DSL, Ascend) at the first call of each op and logs a warning for every
    # one that is not installed; its Triton kernels, the ones used here, need none of them.
    logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)
    _apply_liger_kernel_to_instance(model=base_model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    base_model._tunesmith_liger = True


def head_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of hidden @ weight.T against labels with Liger's fused linear cross-entropy: the
    gradient is computed chunk by chunk in the forward pass, so the logits never exist at once."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, labels, reduction="sum")
