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
  recomputed in backward (one pass, and one [tokens x intermediate] tensor less per layer). With a LoRA
  down_proj the product silu(gate) * up, its input, is rebuilt in backward too instead of kept.
- Inputs rebuilt, not kept: the grouped q/k/v and gate/up LoRA products read a norm's output, and keep the
  norm's input and scale (which the norm keeps anyway) to rebuild it in backward. With the two rebuilds a layer
  keeps 13.9 kB per token instead of 19.3 kB (SmolLM2, rows of 120; docs/plan.md itemizes it).

With the fused CPU kernels (train/cpu_kernels.py, built where a C compiler is found) SwiGLU, RMSNorm, RoPE and
the causal softmax each become one C loop forward and one backward, and attention works from the joined q/k/v
product (_KernelAttention): RoPE writes q straight into the stacked layout, the softmax runs in place and skips
the masked keys, and the three gradients land in one tensor. SwiGLU takes the joined gate/up product either way
and returns one gradient for it, so no split is concatenated back in backward. Without the kernels the same
steps run as the PyTorch ops described above.

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
from tunesmith.train.lora_fast import (group_forward, join_frozen_weights, lora_forward, lora_parts, outer_grad, plain,
                                       scaled)
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

def _rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) per token, accumulated in fp32 (fp64 for fp64 x); no autograd graph."""
    accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        squares = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=accumulate).square_()
        return squares.div_(x.shape[-1]).add_(eps).rsqrt_()


def _normalize(x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The norm's output from its input and scale: the forward pass, and its rebuild in backward (train/lora_fast
    _LoraGroup), which must agree bit for bit."""
    return (x * rstd.to(x.dtype)).mul_(weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, kernels=None) -> torch.Tensor:
    """weight * (x * rsqrt(mean(x^2) + eps)) through _RMSNormKernel (the fused CPU kernels, when given and the
    weight is frozen) or _RMSNorm. The output carries `_tunesmith_norm`, what rebuilds it (a function and its
    inputs), so a grouped LoRA product reading it (_grouped) can keep those instead of a second copy of the output."""
    if kernels is not None and kernels.supports(x) and not weight.requires_grad:
        x = x.contiguous()
        y, rstd = _RMSNormKernel.apply(x, weight, eps, kernels)
        y._tunesmith_norm = (kernels.rms_norm_apply, (x.detach(), rstd, weight), y._version)
        return y
    rstd = _rstd(x.detach(), eps)
    y = _RMSNorm.apply(x, weight, rstd)
    y._tunesmith_norm = (_normalize, (x, rstd, weight), y._version)
    return y


class _RMSNormKernel(torch.autograd.Function):
    """_RMSNorm's computation in one pass forward and one backward (train/cpu_kernels.c), the product with the
    scale rounded once instead of twice; the weight is frozen. Returns (y, rstd)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, kernels):
        y, rstd = kernels.rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.kernels = kernels
        ctx.mark_non_differentiable(rstd)
        return y, rstd

    @staticmethod
    def backward(ctx, grad, _):
        x, weight, rstd = ctx.saved_tensors
        grad_x = ctx.kernels.rms_norm_backward(grad, x, weight, rstd) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class _RMSNorm(torch.autograd.Function):
    """y = weight * (x * rstd), rstd = rsqrt(mean(x^2) + eps) per token (_rstd: accumulated in fp32).

    Unlike transformers, the scale is rounded to x's dtype before it multiplies x (one pass instead of an fp32
    copy of x, a multiply and a cast back): in bf16 that adds one rounding of 2^-9 to a value that is rounded
    to bf16 anyway. In fp32 it is the same computation."""

    @staticmethod
    def forward(ctx, x, weight, rstd):
        ctx.save_for_backward(x, weight, rstd)
        return _normalize(x, rstd, weight)

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


def _norm_forward(module, original, hidden_states, kernels=None):
    if not _plain_tensor(hidden_states) or module.weight.dtype != hidden_states.dtype:
        return original(hidden_states)
    return rms_norm(hidden_states, module.weight, float(module.variance_epsilon), kernels)


# --- SwiGLU ----------------------------------------------------------------------------------------------------

class _SiluMul(torch.autograd.Function):
    """silu(gate) * up of a joined [..., 2 * cols] gate/up product, keeping only the product's input for backward
    and returning its gradient as one tensor (no split and concatenation). kernels: the fused CPU kernels
    (train/cpu_kernels.py), or None for PyTorch ops."""

    @staticmethod
    def forward(ctx, gate_up, kernels):
        ctx.save_for_backward(gate_up)
        ctx.kernels = kernels
        return _silu_mul(gate_up, kernels)

    @staticmethod
    def backward(ctx, grad):
        (gate_up,) = ctx.saved_tensors
        return _swiglu_backward(ctx.kernels, grad, gate_up, want_product=False)[0], None


def _silu_mul(gate_up: torch.Tensor, kernels) -> torch.Tensor:
    if kernels is not None:
        return kernels.swiglu_forward(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


def _swiglu_backward(kernels, grad_h: torch.Tensor, gate_up: torch.Tensor, want_product: bool):
    """(d loss / d gate_up, silu(gate) * up or None) from grad_h = d loss / d (silu(gate) * up)."""
    if kernels is not None:
        return kernels.swiglu_backward(grad_h, gate_up, want_product)
    gate, up = gate_up.chunk(2, dim=-1)
    silu = F.silu(gate)
    product = (silu * up) if want_product else None
    grad_gate = torch.ops.aten.silu_backward(grad_h * up, gate)
    return torch.cat([grad_gate, silu.mul_(grad_h)], dim=-1), product


class _SwiGLULora(torch.autograd.Function):
    """down_proj(silu(gate) * up) for a plain LoRA down_proj (train/lora_fast.lora_forward), from the joined
    gate/up product, keeping that but not silu(gate) * up: backward rebuilds it for A's gradient (in the same
    pass as the gate/up gradient), so each layer keeps one [tokens x intermediate] tensor less."""

    @staticmethod
    def forward(ctx, gate_up, kernels, weight, bias, lora_a, lora_b, scaling: float):
        h = _silu_mul(gate_up, kernels)
        a, b = lora_a.to(h.dtype), scaled(lora_b, scaling, h.dtype)
        y, z = lora_forward(h.reshape(-1, h.shape[-1]), weight, bias, a, b)
        ctx.save_for_backward(gate_up, z, weight, a, b)
        ctx.kernels, ctx.scaling, ctx.dtypes = kernels, scaling, (lora_a.dtype, lora_b.dtype)
        return y.reshape(*h.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        gate_up, z, weight, a, b = ctx.saved_tensors
        want_input, _, _, _, want_a, want_b, _ = ctx.needs_input_grad
        cols = gate_up.shape[-1] // 2
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(gate_up.dtype)
        gz = g @ b  # d loss / d z, [tokens, r] (b holds the scaling)
        grad_gate_up = product = None
        if want_input:
            grad_h = (g @ weight).addmm_(gz, a).reshape(*gate_up.shape[:-1], cols)
            grad_gate_up, product = _swiglu_backward(ctx.kernels, grad_h, gate_up, want_product=want_a)
        elif want_a:
            product = _silu_mul(gate_up, ctx.kernels)
        grad_a = (gz.T @ product.reshape(-1, cols)).to(ctx.dtypes[0]) if want_a else None
        grad_b = scaled(outer_grad(g, z), ctx.scaling, ctx.dtypes[1]) if want_b else None
        return grad_gate_up, None, None, None, grad_a, grad_b, None


def _mlp_forward(module, original, x, kernels=None):
    if not _plain_tensor(x) or type(module.act_fn).__name__ not in SILU_CLASSES:
        return original(x)
    kernels = kernels if kernels is not None and kernels.supports(x) else None
    gate_up = _grouped(x, module.gate_proj, module.up_proj)
    if plain(module.down_proj, gate_up):
        return _SwiGLULora.apply(gate_up, kernels, *lora_parts(module.down_proj))
    return module.down_proj(_SiluMul.apply(gate_up, kernels))


def _grouped(x: torch.Tensor, *layers) -> torch.Tensor:
    """The outputs of layers applied to x, side by side ([..., sum of out_features]): one grouped LoRA product
    where all are plain LoRA layers (train/lora_fast.group_forward), else each layer's output concatenated.
    When x is a fused norm's unchanged output (rms_norm), the product keeps the norm's input and scale, which
    the norm keeps anyway, instead of x."""
    norm = getattr(x, "_tunesmith_norm", None)
    source = norm[:2] if norm is not None and norm[2] == x._version else None
    joined = group_forward(layers, x, source)
    return joined if joined is not None else torch.cat([layer(x) for layer in layers], dim=-1)


def _projections(x: torch.Tensor, *layers) -> tuple[torch.Tensor, ...]:
    """Each layer applied to x (through _grouped), as separate views."""
    return _grouped(x, *layers).split([layer.out_features for layer in layers], dim=-1)


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


class _KernelAttention(torch.autograd.Function):
    """RoPE + causal attention from the joined q/k/v product [b, s, (heads + 2 * kv_heads) * d], with the fused
    CPU kernels: RoPE writes q straight into the stacked-heads layout of causal_attention (no copy), the causal
    softmax runs in place on the scores (no mask, no second [scores] tensor) and skips the keys a query cannot
    see, and backward writes q's, k's and v's gradients into one tensor shaped like the input (no
    concatenation). Returns [b, s, heads * d]."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, scale: float, heads: int, kv_heads: int, kernels):
        b, s, width = qkv.shape
        d = width // (heads + 2 * kv_heads)
        groups = heads // kv_heads
        q = qkv[..., :heads * d].view(b, s, heads, d)
        k = qkv[..., heads * d:(heads + kv_heads) * d].view(b, s, kv_heads, d)
        v = qkv[..., (heads + kv_heads) * d:].view(b, s, kv_heads, d)
        # [b, heads, s, d] is [b, kv, groups * s, d] with the query heads of one key head stacked
        stacked = kernels.rope(q, cos, sin, torch.empty(b, heads, s, d, dtype=qkv.dtype).transpose(1, 2), scale,
                               False).transpose(1, 2).reshape(b, kv_heads, groups * s, d)
        keys = kernels.rope(k, cos, sin, torch.empty(b, kv_heads, s, d, dtype=qkv.dtype).transpose(1, 2), 1.0,
                            False).transpose(1, 2)  # [b, kv, s, d]
        values = v.transpose(1, 2).contiguous()  # [b, kv, s, d]
        probs = kernels.causal_softmax_(stacked @ keys.transpose(-1, -2))  # [b, kv, groups * s, s]
        out = probs @ values  # [b, kv, groups * s, d]
        ctx.save_for_backward(stacked, keys, values, probs, cos, sin)
        ctx.kernels, ctx.scale, ctx.heads = kernels, scale, heads
        return out.view(b, kv_heads, groups, s, d).permute(0, 3, 1, 2, 4).reshape(b, s, heads * d)

    @staticmethod
    def backward(ctx, grad_out):
        stacked, keys, values, probs, cos, sin = ctx.saved_tensors
        kernels, heads = ctx.kernels, ctx.heads
        b, kv_heads, s, d = keys.shape
        groups = heads // kv_heads
        grad = grad_out.to(values.dtype).view(b, s, kv_heads, groups, d).permute(0, 2, 3, 1, 4)
        grad = grad.reshape(b, kv_heads, groups * s, d)
        grad_qkv = torch.empty(b, s, (heads + 2 * kv_heads) * d, dtype=values.dtype)
        grad_qkv[..., (heads + kv_heads) * d:].view(b, s, kv_heads, d).copy_(
            (probs.transpose(-1, -2) @ grad).transpose(1, 2))  # v
        grad_scores = kernels.causal_softmax_backward_(grad @ values.transpose(-1, -2), probs)
        grad_stacked = (grad_scores @ keys).view(b, heads, s, d).transpose(1, 2)  # [b, s, heads, d] view
        kernels.rope(grad_stacked, cos, sin, grad_qkv[..., :heads * d].view(b, s, heads, d), ctx.scale, True)
        grad_keys = (grad_scores.transpose(-1, -2) @ stacked).transpose(1, 2)  # [b, s, kv, d] view
        kernels.rope(grad_keys, cos, sin, grad_qkv[..., heads * d:(heads + kv_heads) * d].view(b, s, kv_heads, d),
                     1.0, True)
        return grad_qkv, None, None, None, None, None, None


def _attention_forward(module, original, hidden_states, position_embeddings=None, attention_mask=None,
                       *args, kernels=None, **kwargs):
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if (args or attention_mask is not None or cache is not None or position_embeddings is None
            or kwargs.get("output_attentions") or getattr(module, "sliding_window", None)
            or (module.training and module.attention_dropout) or not _plain_tensor(hidden_states)):
        return original(hidden_states, position_embeddings, attention_mask, *args, **kwargs)
    b, s, _ = hidden_states.shape
    d = module.head_dim
    cos, sin = position_embeddings  # [b, s, d]
    if kernels is not None and kernels.supports(hidden_states) and s <= EAGER_MAX_TOKENS:
        qkv = _grouped(hidden_states, module.q_proj, module.k_proj, module.v_proj)
        out = _KernelAttention.apply(qkv, cos.to(qkv.dtype), sin.to(qkv.dtype), module.scaling,
                                     module.q_proj.out_features // d, module.k_proj.out_features // d, kernels)
        return module.o_proj(out), None
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

def use_fused_layers(model, kernels=None) -> dict[str, int]:
    """Route the RMSNorm, MLP and attention modules of `model` that these functions reproduce through them;
    returns how many of each were patched. Idempotent. kernels: the fused CPU kernels (train/cpu_kernels.load),
    used for the tensors they support; None: PyTorch ops only."""
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
                    lambda self, *a, _orig=module.forward, _w=wrapper, **k: _w(self, _orig, *a, kernels=kernels,
                                                                                **k), module)
                module._tunesmith_fused = True
                counts[kind] += 1
    if counts["attention"]:
        # The attention functions above are handed no mask only when transformers sees a purely causal batch
        # and the model is set to SDPA (with eager it always builds a 4-D mask); anything else falls back.
        base = unwrap(model)
        if base.config._attn_implementation == "eager":
            base.set_attn_implementation("sdpa")
    return counts
