"""RMSNorm, SwiGLU and RoPE + causal attention of Llama-family decoders with hand-written backward passes, for
LoRA training on a CPU.

What torch.compile or Liger would fuse on a GPU, written as autograd functions in plain PyTorch: compiling the
model costs minutes on a 2-core CPU, longer than a small run trains. Profiled on this CPU (SmolLM2-135M, LoRA
r=16, 8 rows x ~228 tokens, bf16 weights), the step outside the matrix products went to:
- RMSNorm: an fp32 copy of its input, then square, mean, rsqrt, scale and cast back as separate passes (and
  autograd's backward through each); it also saves the fp32 copy. Here: one norm-reduction pass, one scaling
  pass that writes the compute dtype directly, a five-pass backward, and only the bf16 input saved.
- Attention (HF's eager path): k and v copied per query head (GQA), the [heads x s x s] scores multiplied by the
  scale, a mask added, softmax taken in fp32 and cast back, each with its backward. Here the scale rides on the
  RoPE cosines, query heads that share a key head are stacked into one matrix product (no copies of k and v),
  the causal mask is filled in place, and softmax runs in the compute dtype (fp32 accumulation inside).
  Rows longer than EAGER_MAX_TOKENS go to PyTorch's SDPA kernel instead, whose memory is linear in the row.
- RoPE: rotate_half's slice/negate/concatenate copies; here two in-place multiply-adds on halves.
- SwiGLU: silu(gate) * up keeps silu(gate) alive for backward; here only gate and up are kept and silu is
  recomputed in backward (one pass, and one [tokens x intermediate] tensor less per layer).

Every patched forward checks its inputs per call and falls back to the model's own forward for anything it does
not compute exactly as the model does: a KV cache, an explicit attention mask (padding, packed rows), autocast,
dropout, sliding windows, or output_attentions.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F

from tunesmith.models.adapters import unwrap
from tunesmith.train.lora_fast import group_forward, join_frozen_weights
from tunesmith.train.precision import EAGER_MAX_TOKENS

# Rows up to EAGER_MAX_TOKENS take the matrix-product attention below; longer rows take SDPA's flash kernel
# (measured in train/precision.py: plain matmul attention is faster at ~100-240 tokens, slower and larger at 512).

# Classes whose forward these functions reproduce exactly (same RMSNorm formula, same MLP, rotate-half RoPE).
# Gemma's RMSNorm scales by (1 + weight) and Qwen3 normalizes q and k per head: neither is listed.
NORM_CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}
MLP_CLASSES = {"LlamaMLP", "MistralMLP", "Qwen2MLP"}
ATTENTION_CLASSES = {"LlamaAttention", "MistralAttention", "Qwen2Attention"}
SILU_CLASSES = {"SiLU", "SiLUActivation"}  # torch's and transformers' (ACT2FN["silu"])
FLOAT_TYPES = (torch.float32, torch.bfloat16, torch.float16)


def _plain_tensor(x: torch.Tensor) -> bool:
    return x.dtype in FLOAT_TYPES and not torch.is_autocast_enabled(x.device.type)


# --- RMSNorm ---------------------------------------------------------------------------------------------------

class _RMSNorm(torch.autograd.Function):
    """y = weight * (x * rsqrt(mean(x^2) + eps)), with the per-token scale accumulated in fp32.

    Unlike transformers, the scale is rounded to x's dtype before it multiplies x (one pass instead of an fp32
    copy of x, a multiply and a cast back): in bf16 that adds one rounding of 2^-9 to a value that is rounded
    to bf16 anyway. In fp32 it is the same computation."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
        squares = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=accumulate).square_()
        rstd = squares.div_(x.shape[-1]).add_(eps).rsqrt_()  # one value per token
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd.to(x.dtype)).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        grad_x = grad_w = None
        r = rstd.to(x.dtype)
        if ctx.needs_input_grad[0]:
            # dx = rstd * gw - x * rstd^3 * mean(gw * x), gw = grad * weight; the x term removes gw's component
            # along x, a few percent of gw at these widths, so computing it in x's dtype loses no precision
            # that matters (no large cancellation). The dot products accumulate in fp32.
            gw = grad * weight
            dot = torch.linalg.vecdot(gw, x, dim=-1).unsqueeze(-1).to(rstd.dtype)
            coef = (dot * rstd.pow(3) / x.shape[-1]).to(x.dtype)
            grad_x = torch.addcmul(gw.mul_(r), x, coef, value=-1.0)
        if ctx.needs_input_grad[1]:
            grad_w = (grad * (x * r)).reshape(-1, x.shape[-1]).sum(0, dtype=rstd.dtype).to(weight.dtype)
        return grad_x, grad_w, None


def _norm_forward(module, original, hidden_states):
    if not _plain_tensor(hidden_states) or module.weight.dtype != hidden_states.dtype:
        return original(hidden_states)
    return _RMSNorm.apply(hidden_states, module.weight, float(module.variance_epsilon))


# --- SwiGLU ----------------------------------------------------------------------------------------------------

class _SiluMul(torch.autograd.Function):
    """silu(gate) * up, keeping only gate and up for backward."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        if ctx.needs_input_grad[1]:
            grad_up = F.silu(gate).mul_(grad)
        return grad_gate, grad_up


def _mlp_forward(module, original, x):
    if not _plain_tensor(x) or type(module.act_fn).__name__ not in SILU_CLASSES:
        return original(x)
    return module.down_proj(_SiluMul.apply(*_projections(x, module.gate_proj, module.up_proj)))


def _projections(x: torch.Tensor, *layers) -> tuple[torch.Tensor, ...]:
    """Each layer applied to x: as one grouped LoRA product where all are plain LoRA layers
    (train/lora_fast.group_forward), else one by one."""
    joined = group_forward(layers, x)
    if joined is None:
        return tuple(layer(x) for layer in layers)
    return joined.split([layer.out_features for layer in layers], dim=-1)


# --- RoPE + causal attention -------------------------------------------------------------------------------------

def _add_rotation(out: torch.Tensor, x: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """out += rotate_half(x) * sin, without building rotate_half(x) = cat(-x2, x1)."""
    half = x.shape[-1] // 2
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


def _add_rotation_transposed(out: torch.Tensor, grad: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """out += the transpose of (x -> rotate_half(x) * sin) applied to grad: [g2 * sin2, -g1 * sin1]."""
    half = grad.shape[-1] // 2
    out[..., :half].addcmul_(grad[..., half:], sin[..., half:])
    out[..., half:].addcmul_(grad[..., :half], sin[..., :half], value=-1.0)
    return out


class _Rope(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin (transformers' rotate-half convention); cos and sin carry no gradient."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _add_rotation(x * cos, x, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _add_rotation_transposed(grad * cos, grad, sin), None, None


@functools.lru_cache(maxsize=32)  # every layer of a pass uses the same one; row widths vary between passes
def _stacked_causal_mask(groups: int, s: int, device: torch.device) -> torch.Tensor:
    """True where query row r (position r % s of one of `groups` stacked heads) must not see key column c."""
    rows = torch.arange(groups * s, device=device) % s
    return torch.arange(s, device=device)[None, :] > rows[:, None]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of q [b, s, heads, d] over k, v [b, s, kv_heads, d]; returns [b, s, heads * d].

    Query heads that share a key head (GQA) are stacked along the row axis, so one batched matrix product serves
    them all and k and v are never copied per head."""
    b, s, heads, d = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    if s > EAGER_MAX_TOKENS:
        # v may be a slice of the grouped q/k/v product: SDPA keeps its input for backward, which would keep the
        # whole product alive, so it gets a copy of its own.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.contiguous().transpose(1, 2),
                                             is_causal=True, scale=scale, enable_gqa=groups > 1)
        return out.transpose(1, 2).reshape(b, s, heads * d)
    # [b, s, kv, g, d] -> [b, kv, g * s, d]; the scale is already in q (see _attention_forward)
    stacked = q.view(b, s, kv_heads, groups, d).permute(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * s, d)
    scores = stacked @ k.permute(0, 2, 3, 1)  # [b, kv, g * s, s]
    scores.masked_fill_(_stacked_causal_mask(groups, s, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = probs @ v.transpose(1, 2)  # [b, kv, g * s, d]
    return out.view(b, kv_heads, groups, s, d).permute(0, 3, 1, 2, 4).reshape(b, s, heads * d)


def _attention_forward(module, original, hidden_states, position_embeddings=None, attention_mask=None,
                       *args, **kwargs):
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if (args or attention_mask is not None or cache is not None or position_embeddings is None
            or kwargs.get("output_attentions") or getattr(module, "sliding_window", None)
            or (module.training and module.attention_dropout) or not _plain_tensor(hidden_states)):
        return original(hidden_states, position_embeddings, attention_mask, *args, **kwargs)
    b, s, _ = hidden_states.shape
    d = module.head_dim
    cos, sin = position_embeddings  # [b, s, d]
    cos, sin = cos.unsqueeze(2).to(hidden_states.dtype), sin.unsqueeze(2).to(hidden_states.dtype)
    q, k, v = _projections(hidden_states, module.q_proj, module.k_proj, module.v_proj)
    q, k, v = q.view(b, s, -1, d), k.view(b, s, -1, d), v.view(b, s, -1, d)
    if s > EAGER_MAX_TOKENS:
        q, scale = _Rope.apply(q, cos, sin), module.scaling
    else:  # fold the softmax scale into q's rotation: a [b, s, d] multiply instead of one over the scores
        q, scale = _Rope.apply(q, cos * module.scaling, sin * module.scaling), 1.0
    k = _Rope.apply(k, cos, sin)
    return module.o_proj(causal_attention(q, k, v, scale)), None


# --- patching --------------------------------------------------------------------------------------------------

def use_fused_layers(model) -> dict[str, int]:
    """Route the RMSNorm, MLP and attention modules of `model` that these functions reproduce through them;
    returns how many of each were patched. Idempotent."""
    counts = {"norm": 0, "mlp": 0, "attention": 0}
    wrappers = (("norm", NORM_CLASSES, _norm_forward), ("mlp", MLP_CLASSES, _mlp_forward),
                ("attention", ATTENTION_CLASSES, _attention_forward))
    for module in model.modules():
        if getattr(module, "_tunesmith_fused", False):
            continue
        for kind, classes, wrapper in wrappers:
            if type(module).__name__ in classes:
                if kind == "attention":
                    join_frozen_weights([module.q_proj, module.k_proj, module.v_proj])
                elif kind == "mlp":
                    join_frozen_weights([module.gate_proj, module.up_proj])
                module.forward = types.MethodType(
                    lambda self, *a, _orig=module.forward, _w=wrapper, **k: _w(self, _orig, *a, **k), module)
                module._tunesmith_fused = True
                counts[kind] += 1
    if counts["attention"]:
        # The attention functions above are handed no mask only when transformers sees a purely causal batch
        # and the model is set to SDPA (with eager it always builds a 4-D mask); anything else falls back.
        base = unwrap(model)
        if base.config._attn_implementation == "eager":
            base.set_attn_implementation("sdpa")
    return counts
