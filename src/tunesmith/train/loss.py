"""Cross-entropy through the LM head, chunk by chunk, without ever holding the [tokens × vocab] logits.

SmolLM2's vocabulary has 49,152 entries: 2,048 labelled tokens × 49,152 × 4 bytes = 403 MB of fp32 logits,
and autograd keeps them (and their gradient, as much again) until the backward pass. Here each chunk of
tokens computes its logits, its loss and — in the same pass — the gradients of that loss with respect to the
hidden states (and the head's weight when it trains), then frees the logits. The backward pass only scales
those stored gradients, so the FLOPs are the same as the plain version (one forward GEMM, two gradient GEMMs
per chunk) and the peak is one chunk of logits (CHUNK_ELEMENTS × 4 bytes = 64 MB, twice with softmax).
"""

from __future__ import annotations

import torch

# Logits per chunk: 16M values, 341 tokens of SmolLM2's vocabulary (32 MB in bf16). Twice that was slower: chunks
# over glibc's 32 MB mmap limit come as fresh pages every time. 1,650 labelled SmolLM2 tokens, forward + backward
# in bf16 on this CPU: 2^25 300 ms, 2^24 235 ms, 2^23 271 ms, 2^22 362 ms (narrower products run slower).
CHUNK_ELEMENTS = 2**24


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for lo in range(0, hidden.shape[0], chunk):
            h, y = hidden[lo:lo + chunk], labels[lo:lo + chunk]
            logits = h @ weight.to(h.dtype).T
            if not (want_hidden or want_weight):
                # Evaluation: the exact loss, log_softmax read in the logits' dtype and written in fp32.
                total -= torch.log_softmax(logits, dim=-1, dtype=torch.float32).gather(1, y[:, None]).sum()
                continue
            rows = torch.arange(len(y), device=y.device)
            if logits.is_cuda:
                # On a GPU: an exact fp32 log-softmax, with no branch on a device value (that would make the host
                # wait for the GPU at every chunk); the elementwise passes are cheap there.
                logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                del logits
                total -= logp.gather(1, y[:, None]).sum()
                grad = logp.exp_().to(h.dtype)
                del logp
            else:
                grad = _softmax_and_loss(logits, y, rows, total)
                del logits  # a chunk of logits (32 MB in bf16 for SmolLM2) less while the gradient GEMMs run
            # d(sum CE)/d logits = softmax - one_hot(label), in place
            grad[rows, y] -= 1.0
            if want_hidden:
                grad_hidden[lo:lo + chunk] = grad @ weight.to(h.dtype)
            if want_weight:
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_output.to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype), None, None)


def _softmax_and_loss(logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """The softmax of a chunk of logits, in their dtype; subtracts the chunk's summed loss from total in place.

    On a CPU one softmax pass in the compute dtype (fp32 inside, written in bf16) is the gradient, and the loss is
    -log of its label entries. Measured on this CPU, 682 x 49,152 bf16 logits: 43 ms against 262 ms for an fp32
    log_softmax, its exp and the cast to bf16. The logged training loss then carries bf16's rounding of each
    probability (a relative 2^-9: at most ~0.002 nats per token); a probability that rounds to zero (a label ~87
    nats below the top logit) is read from an fp32 log_softmax instead.
    """
    probs = torch.softmax(logits, dim=-1)
    picked = probs[rows, y].float()
    lost = picked == 0
    if lost.any():
        total -= torch.log_softmax(logits[lost].float(), dim=-1).gather(1, y[lost, None]).sum()
        picked = picked[~lost]
    total -= picked.log().sum()
    return probs


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight.T, labels), hidden [n, d], weight [vocab, d], labels [n]
    (all valid: select labelled positions before calling). Equals F.cross_entropy(..., reduction="sum")."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph connected, value 0
    chunk = max(1, chunk_elements // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk)
