"""A LoRA linear layer's forward and backward in one autograd function, in the base weights' dtype.

PEFT's LoRA layer casts each input to the adapter's dtype (fp32) before the low-rank path, so with bf16 base
weights every adapted projection copies its activations to fp32, runs two skinny fp32 GEMMs (rank 16), scales
the result in a separate pass and adds it back. Profiled on this 2-core CPU (SmolLM2-135M, LoRA r=16 on all
seven projections, 8 rows x ~240 tokens) those casts, skinny GEMMs and scalings were more than half of the step.

Here the fp32 adapter weights are cast to the activations' dtype instead (a [r x in] and an [out x r] matrix:
negligible), the scaling is folded into B as it is cast, and the backward pass computes only the gradients autograd
asks for. The adapter weights stay fp32 parameters, so the optimizer updates fp32 master weights; only the
matrix products run in bf16, as under autocast. Measured on one 576 -> 1536 projection, 1,928 tokens, forward +
backward: PEFT's path 46-57 ms, this one 18-20 ms, the frozen projection alone 10-12 ms.

It applies to the plain case only — one active adapter, no dropout, no DoRA, an nn.Linear base, not merged —
and falls back to PEFT's forward otherwise (checked per call, so merging or disabling adapters later is safe).
"""

from __future__ import annotations

import types

import torch


def scaled(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """x * scale as a new contiguous tensor of `dtype`: the scaling and the cast in one pass (one kernel on a GPU,
    where the host's time per launched kernel is what bounds a LoRA step of a small model)."""
    return torch.mul(x, scale, out=torch.empty(x.shape, dtype=dtype, device=x.device))


def lora_forward(x2: torch.Tensor, weight, bias, a: torch.Tensor, b: torch.Tensor):
    """y = x2 @ weight^T + bias + (x2 @ a^T) @ b^T for 2-D x2, with a and b already in x2's dtype and b holding the
    LoRA scaling (scaled(B, scaling, dtype)); returns y and z = x2 @ a^T, which B's gradient needs."""
    z = x2 @ a.T  # [tokens, r]
    base = x2 @ weight.T if bias is None else torch.addmm(bias.to(x2.dtype), x2, weight.T)
    return base.addmm_(z, b.T), z  # in place: addmm(base, ...) would first copy base


def outer_grad(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """g^T @ z for g [tokens, out] and z [tokens, r] (B's gradient, unscaled).

    On a CPU it is computed as (z^T @ g)^T from a contiguous copy of z^T (r x tokens: small): reading g^T as a
    transposed view is what slows the direct product there. Measured on this CPU, bf16, 1,992 tokens, out 3,072,
    r 32: 1.31 ms direct, 0.68 ms this way (960 x 48: 0.47 -> 0.31). cuBLAS reads transposes for free, so a GPU
    takes the direct product and launches no copy."""
    if g.is_cpu:
        return (z.t().contiguous() @ g).t()
    return g.T @ z


def lora_backward(g: torch.Tensor, x2, z, weight, a, b, scaling: float, want_x: bool, dtypes):
    """The gradients lora_forward's inputs need, from g = d loss / d y ([tokens, out]); b is the scaled B that
    lora_forward used. x2 may be a function that rebuilds the input (only A's gradient reads it). Returns
    (grad_x2, grad_a, grad_b); None where not wanted (want_x false, dtypes[i] None), else A's and B's in dtypes[0]
    and dtypes[1]."""
    gz = g @ b  # d loss / d z, [tokens, r], the scaling included
    grad_x = (g @ weight).addmm_(gz, a) if want_x else None
    grad_a = grad_b = None
    if dtypes[0] is not None:
        grad_a = (gz.T @ (x2() if callable(x2) else x2)).to(dtypes[0])
    if dtypes[1] is not None:
        grad_b = scaled(outer_grad(g, z), scaling, dtypes[1])
    return grad_x, grad_a, grad_b


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a, b = lora_a.to(x.dtype), scaled(lora_b, scaling, x.dtype)
        y, z = lora_forward(x2, weight, bias, a, b)
        ctx.save_for_backward(x2, z, weight, a, b)
        ctx.scaling, ctx.dtypes = scaling, (lora_a.dtype, lora_b.dtype)
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        x2, z, weight, a, b = ctx.saved_tensors
        want_x, _, _, want_a, want_b, _ = ctx.needs_input_grad
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(x2.dtype)
        grad_x, grad_a, grad_b = lora_backward(g, x2, z, weight, a, b, ctx.scaling, want_x,
                                               (ctx.dtypes[0] if want_a else None, ctx.dtypes[1] if want_b else None))
        if grad_x is not None:
            grad_x = grad_x.reshape(*grad_y.shape[:-1], x2.shape[-1])
        return grad_x, None, None, grad_a, grad_b, None


class _LoraGroup(torch.autograd.Function):
    """Several LoRA projections of one input (q, k and v; gate and up) as one: y = x @ [W1; W2; ...]^T +
    z @ blockdiag(s1 B1, s2 B2, ...)^T with z = x @ [A1; A2; ...]^T, so the input is read by one frozen GEMM and
    one adapter GEMM instead of one of each per projection. Returns the outputs side by side, [..., sum(out)].

    source: None, or (rebuild, tensors) with rebuild(*tensors) == x bit for bit. Then x is not kept for backward
    (only A's gradient reads it): the tensors are, which the caller keeps anyway (a norm's input and scale)."""

    @staticmethod
    def forward(ctx, x, joined, scalings: tuple[float, ...], source, *params):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        weights, biases = params[0::4], params[1::4]
        a = torch.cat([p.to(x.dtype) for p in params[2::4]])  # [sum r, in]
        # [sum out, sum r], each block scaled
        b = torch.block_diag(*[scaled(p, scale, x.dtype) for p, scale in zip(params[3::4], scalings)])
        z = x2 @ a.T
        y = x2 @ joined.T
        if any(bias is not None for bias in biases):
            y += torch.cat([bias if bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                            for bias, w in zip(biases, weights)]).to(x.dtype)
        y.addmm_(z, b.T)
        ctx.rebuild = source[0] if source is not None else None
        ctx.save_for_backward(*(source[1] if source is not None else (x2,)), z, a, b, joined)
        ctx.ranks = [p.shape[0] for p in params[2::4]]
        ctx.outs = [w.shape[0] for w in weights]
        ctx.dtypes = [p.dtype for p in params[2::4]], [p.dtype for p in params[3::4]]
        ctx.scalings = scalings
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        *inputs, z, a, b, joined = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(z.dtype)
        gz = g @ b  # d loss / d z, scalings included, [tokens, sum r]
        grads: list = [None] * (4 * len(ctx.outs))
        if any(ctx.needs_input_grad[4:]):  # the adapters (the frozen weights and biases never need one)
            x = ctx.rebuild(*inputs) if ctx.rebuild is not None else inputs[0]
            grad_a = (gz.T @ x.reshape(-1, a.shape[1])).split(ctx.ranks)
            grad_b = outer_grad(g, z)  # [sum out, sum r]: only the diagonal blocks are B's gradients
            out0 = r0 = 0
            for i, (out, r) in enumerate(zip(ctx.outs, ctx.ranks)):
                grads[4 * i + 2] = grad_a[i].to(ctx.dtypes[0][i])
                grads[4 * i + 3] = scaled(grad_b[out0:out0 + out, r0:r0 + r], ctx.scalings[i], ctx.dtypes[1][i])
                out0, r0 = out0 + out, r0 + r
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ joined).addmm_(gz, a).reshape(*grad_y.shape[:-1], a.shape[1])
        return grad_x, None, None, None, *grads


def join_frozen_weights(layers) -> bool:
    """Store the frozen base weights of LoRA projections that read one input (q, k, v) in one buffer, each
    weight becoming a view of its rows, so _LoraGroup multiplies by the joined matrix without concatenating it
    at every call (a 3.5 MB copy per MLP and pass, 6% of a SmolLM2 step) and without a second copy in memory.
    Returns whether the layers were joined."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not all(isinstance(layer, LoraLinear) for layer in layers):
        return False
    weights = [layer.base_layer.weight for layer in layers]
    first = weights[0]
    if any(w.requires_grad or w.dtype != first.dtype or w.device != first.device or w.dim() != 2
           or w.shape[1] != first.shape[1] for w in weights):
        return False
    buffer = torch.cat([w.detach() for w in weights])
    start = 0
    for w in weights:
        w.data = buffer[start:start + w.shape[0]]
        start += w.shape[0]
    layers[0]._tunesmith_joined = buffer
    return True


def _joined_weight(layers) -> torch.Tensor | None:
    """The buffer join_frozen_weights made, if every weight is still the view it set (loading a state dict or
    moving the model replaces them)."""
    buffer = getattr(layers[0], "_tunesmith_joined", None)
    if buffer is None:
        return None
    start = 0
    for layer in layers:
        w = layer.base_layer.weight
        if w.data_ptr() != buffer[start].data_ptr() or not w.is_contiguous():
            return None
        start += w.shape[0]
    return buffer if start == buffer.shape[0] else None


def group_forward(layers, x: torch.Tensor, source=None) -> torch.Tensor | None:
    """The outputs of LoRA projections that all read x, side by side ([..., sum of out_features]), through
    _LoraGroup; None when any of them is not in the plain state _LoraLinear handles (the caller then runs
    them one by one). source: how to rebuild x in backward instead of keeping it (see _LoraGroup)."""
    if not all(plain(layer, x) for layer in layers):
        return None
    params, scalings = [], []
    for layer in layers:
        *tensors, scaling = lora_parts(layer)
        params += tensors
        scalings.append(scaling)
    joined = _joined_weight(layers)
    if joined is None:
        joined = torch.cat([layer.base_layer.weight for layer in layers])
    return _LoraGroup.apply(x, joined, tuple(scalings), source, *params)


def lora_parts(layer) -> tuple:
    """(base weight, base bias, A, B, scaling) of a plain PEFT LoRA layer's active adapter."""
    name = layer.active_adapters[0]
    return (layer.base_layer.weight, layer.base_layer.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
            float(layer.scaling[name]))


def _fast_forward(layer, original, x, *args, **kwargs):
    if args or kwargs or not plain(layer, x):
        return original(x, *args, **kwargs)
    return _LoraLinear.apply(x, *lora_parts(layer))


def plain(layer, x: torch.Tensor) -> bool:
    """The case _LoraLinear computes exactly like PEFT: anything else goes through PEFT's own forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(layer, LoraLinear) or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    base = layer.base_layer
    return (name in layer.lora_A and name not in getattr(layer, "lora_variant", {})
            and not layer.use_dora.get(name, False)
            and isinstance(layer.lora_dropout[name], torch.nn.Identity)
            and not getattr(layer, "lora_bias", {}).get(name, False)
            and type(base) is torch.nn.Linear and not base.weight.requires_grad
            and base.weight.dtype == x.dtype and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and not torch.is_autocast_enabled(x.device.type))


def use_fast_lora(model) -> int:
    """Route every PEFT LoRA nn.Linear of `model` through _LoraLinear; returns how many layers were patched."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and not getattr(module, "_tunesmith_fast", False):
            module.forward = types.MethodType(
                lambda self, x, *a, _orig=module.forward, **k: _fast_forward(self, _orig, x, *a, **k), module)
            module._tunesmith_fast = True
            patched += 1
    return patched
