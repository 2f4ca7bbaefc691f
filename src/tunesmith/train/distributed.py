"""One run over several processes: `torchrun` or `accelerate launch` start them and set RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous variables; this module joins the process group and holds the few collective
steps the training loop needs. Nothing here starts or watches processes: the launcher does.

How the optimization stays the same whatever the process count: `train.global_batch_size` rows make one
optimizer step over all processes. The loop cuts each step's rows into micro-batches exactly as one process
would; rank r takes micro-batches r, r + world, …; every rank divides its summed loss by the labelled tokens of
the whole step (an all-reduced count), and the gradients are summed over ranks. That is the gradient of the
same step run in one process, up to the order of float additions.

Strategies (`train.distributed`):
- `ddp`: every rank holds the whole model; the trainable gradients are summed with one all-reduce per step
  (for LoRA a few MB). The arithmetic of DistributedDataParallel, without its hooks, so gradient accumulation
  and ranks with fewer micro-batches at an epoch's end need no special cases.
- `fsdp`: full fine-tuning of a model too large for one device: each decoder layer and then the root are
  sharded with FSDP2's `fully_shard`; gradients are reduce-scattered (averaged) in backward, so the loss is
  scaled by the rank count to keep the sum, and the final weights are gathered to rank 0 for saving.
- `auto`: `ddp`, except full fine-tuning with more than one process, which uses `fsdp`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from tunesmith.errors import ConfigError
from tunesmith.models.adapters import unwrap


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_strategy(setting: str, method: str, world: int) -> str:
    if world <= 1:
        return "none"
    if setting == "deepspeed":
        raise ConfigError("train.distributed: deepspeed is not supported by this version",
                          "use ddp (LoRA, or a model that fits one device) or fsdp (full fine-tuning)")
    strategy = setting if setting != "auto" else ("fsdp" if method == "full" else "ddp")
    if strategy == "fsdp" and method != "full":
        raise ConfigError(f"train.distributed: fsdp shards full fine-tuning; method.kind is {method}",
                          "use train.distributed: ddp with LoRA/DoRA (the adapters are small), or method.kind: full")
    return strategy


def setup(device: str, setting: str, method: str, timeout_s: int = 600) -> Dist:
    """Join the process group when launched with several processes (gloo on CPU, NCCL on CUDA)."""
    world = launched_world()
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    strategy = resolve_strategy(setting, method, world)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # A finite timeout: a rank that dies mid-run makes the others fail within it instead of hanging forever
        # (torchrun also stops the whole group as soon as one worker exits with an error).
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(dist.get_rank(), world, local_rank, strategy)


def teardown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rank_share(items: list, d: Dist) -> list[tuple[object, float]]:
    """This rank's micro-batches of one optimizer step, r, r + world, …, each with its loss weight. Every rank
    runs the same number of micro-batches (FSDP's collectives need that): a rank short of one at an epoch's
    end repeats the step's first micro-batch with weight 0."""
    if not d.enabled:
        return [(item, 1.0) for item in items]
    mine = [(item, 1.0) for item in items[d.rank::d.world]]
    rounds = -(-len(items) // d.world)
    return mine + [(items[0], 0.0)] * (rounds - len(mine))


def agreed_signal(local: str | None, d: Dist) -> str | None:
    """SIGINT/SIGTERM seen by any rank stops every rank after the same step (a lone rank stopping would leave
    the others waiting in a collective)."""
    if not d.enabled:
        return local
    anyone = sum_all(1.0 if local else 0.0, d) > 0  # every rank takes part in this all-reduce, signalled or not
    return local or ("SIGTERM" if anyone else None)


def sum_all(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_parameters(model, d: Dist) -> None:
    """Every rank starts from rank 0's weights (adapters are randomly initialized per process)."""
    if d.enabled and d.strategy == "ddp":
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)


def sum_gradients(params: list[torch.Tensor], d: Dist) -> None:
    """DDP: the step's gradient is the sum of the ranks' gradients, flattened into one all-reduce."""
    if not d.enabled or d.strategy != "ddp":
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def shard_model(model, d: Dist):
    """FSDP2: shard each decoder layer, then the root (the embeddings and head)."""
    if d.strategy != "fsdp":
        return model
    from torch.distributed.fsdp import fully_shard

    base = unwrap(model)
    layers = getattr(base.get_decoder(), "layers", [])
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def loss_scale(d: Dist) -> float:
    """FSDP averages gradients over ranks (gloo has no pre-scaled sum to make it add them), while each rank's
    loss is already divided by the whole step's labelled tokens: scaling the loss by the rank count turns the
    average back into the sum."""
    return float(d.world) if d.strategy == "fsdp" else 1.0


def full_state_dict(model, d: Dist) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (None elsewhere); for FSDP gathered from the shards."""
    if d.strategy != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if d.main else None
