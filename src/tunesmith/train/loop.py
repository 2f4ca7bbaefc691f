"""The training loop: plain PyTorch, top to bottom. Reads run_dir/data/, writes metrics.jsonl,
checkpoints/ and adapter/."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.config import ProjectConfig
from tunesmith.console import console, progress_bar
from tunesmith.data.batching import (at_least_two_rows, collate, collate_packed, packed_micro_batches,
                                     step_groups)
from tunesmith.data.tokenize import IGNORE_INDEX, Tokenized
from tunesmith.errors import ConfigError, RunDirError
from tunesmith.io import sha256_file, write_text_atomic
from tunesmith.models.adapters import apply_method, count_parameters, unwrap
from tunesmith.models.load import load_causal_lm
from tunesmith.redact import redact
from tunesmith.tracking import MetricsLog
from tunesmith.train.fused_layers import EAGER_MAX_TOKENS, use_fused_layers
from tunesmith.train.lora_fast import use_fast_lora
from tunesmith.train.loss import linear_cross_entropy_sum
from tunesmith.train.precision import Compute, resolve_compute, row_width
from tunesmith.train.checkpoint import (checkpoint_name, load_checkpoint, load_weights, newest_loadable,
                                        prune_checkpoints, restore_rng, save_checkpoint, save_weights)
from tunesmith.train import cpu_kernels, distributed, liger
from tunesmith.train.early_stop import EvalHistory
from tunesmith.train.guard import BadStepGuard, StopRequest, check_output_room, checkpoint_bytes
from tunesmith.train.resume import config_hash, flatten


STOP_SIGNALS = ("SIGINT", "SIGTERM")


def pick_device(setting: str) -> str:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is visible",
                          "set train.device: auto (or cpu), or install a CUDA build of torch")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def with_label_index(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch plus where its labels are: "label_index", the flat positions (into the [rows x width] hidden
    states) whose next token carries a label, and "label_targets", those labels.

    Call it where the batch is built, on the CPU. Found on a GPU instead (a boolean index is a nonzero()), they
    would make the host wait for the whole forward pass before it could queue the LM head and the backward pass.
    """
    labels = batch["labels"]
    keep = labels[:, 1:] != IGNORE_INDEX
    rows, columns = keep.nonzero(as_tuple=True)
    return {**batch, "label_index": rows * labels.shape[1] + columns, "label_targets": labels[:, 1:][keep]}


def step_batches(rows: list[Tokenized], group: list[list[int]], pad_id: int, device: str, packing: bool,
                 max_seq_len: int, micro_batch_size: int, micro_batch_tokens: int | None = None,
                 two_rows: bool = False) -> list[dict[str, torch.Tensor]]:
    """One optimizer step's micro-batches on `device`: the group's rows packed (packed_micro_batches) or
    right-padded per micro-batch, a padding row added to one-row batches when two_rows (train.compile), and the
    labels located on the CPU (with_label_index) before the tensors move."""
    if packing:
        examples = [i for ids in group for i in ids]
        micro = packed_micro_batches(rows, examples, max_seq_len, micro_batch_size, micro_batch_tokens)
        batches = [collate_packed([[rows[i] for i in row] for row in packed], pad_id) for packed in micro]
    else:
        batches = [collate([rows[i] for i in ids], pad_id) for ids in group]
    if two_rows:
        batches = [at_least_two_rows(b, pad_id) for b in batches]
    return [{k: v.to(device) for k, v in with_label_index(b).items()} for b in batches]


def label_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over labelled tokens, and their count.

    The LM head runs only on positions whose next token carries a label: on support answers that is about
    a third of the tokens, and it never builds the [batch x seq x vocab] logits tensor (49,152 columns for
    SmolLM2), which saves time and memory.
    """
    if "label_index" not in batch:
        batch = with_label_index(batch)
    index, targets = batch["label_index"], batch["label_targets"]
    # No attention mask: collate() pads on the right, so under the causal mask a real token never sees padding
    # and the padded positions (which carry no label) are never read. Without a mask SDPA takes its fused
    # causal path; with one it is 20% slower on a CPU. Packed rows pass position ids instead (collate_packed).
    if _is_fsdp(model):
        # FSDP gathers the embeddings and head in the root module's forward hooks, so the root forward must run
        # (whole-vocabulary logits: the price of sharding until the head is sharded separately).
        logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False).logits
        selected = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
        return F.cross_entropy(selected.float(), targets, reduction="sum"), index.numel()
    base = unwrap(model)
    backbone = base.get_decoder()
    head = base.get_output_embeddings()
    # use_cache=False matters for packed rows: transformers derives the per-example (block-diagonal) mask
    # from restarting position ids only when no KV cache is in play.
    hidden = backbone(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                      use_cache=False).last_hidden_state
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    if type(head) is torch.nn.Linear and head.bias is None:
        if getattr(base, "_tunesmith_liger", False) and torch.is_grad_enabled() and selected.dtype == head.weight.dtype:
            # Liger's fused linear cross-entropy (CUDA, train/liger.py); evaluation keeps the exact path below.
            return liger.head_loss_sum(selected, head.weight, targets), index.numel()
        # Chunked through the head (train/loss.py): the [labelled tokens x vocab] logits never exist at once.
        return linear_cross_entropy_sum(selected, head.weight, targets), index.numel()
    # A head that adapters wrap (target_modules naming lm_head) runs as a module, logits and all.
    return F.cross_entropy(head(selected).float(), targets, reduction="sum"), index.numel()


def compile_layers(model) -> int:
    """torch.compile every transformer layer in place, with dynamic shapes so rows of new lengths reuse the
    compiled code instead of recompiling; layers of one class share it. Returns how many were compiled."""
    from tunesmith.models.adapters import transformer_layers

    base = unwrap(model)
    layers = transformer_layers(base)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def enable_checkpointing(model) -> None:
    """Recompute each transformer layer in backward (non-reentrant checkpointing: works with frozen
    embeddings and LoRA without forcing the inputs to require gradients)."""
    base = unwrap(model)
    if not base.supports_gradient_checkpointing:
        raise ConfigError(f"this {base.config.model_type} model does not support gradient checkpointing",
                          "set train.gradient_checkpointing: false")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def read_tokenized(path: Path) -> list[Tokenized]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append(Tokenized(row["input_ids"], row["labels"], row["truncated"]))
    return rows


@torch.no_grad()
def eval_loss(model, rows: list[Tokenized], micro_batch_size: int, pad_id: int, device: str,
              compute: Compute | None = None) -> float:
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    for start in range(0, len(order), micro_batch_size):
        batch = collate([rows[i] for i in order[start:start + micro_batch_size]], pad_id)
        with compute.context(device) if compute else contextlib.nullcontext():
            loss, n = label_loss_sum(model, {k: v.to(device) for k, v in with_label_index(batch).items()})
        total, count = total + loss.double(), count + n
    model.train()
    return float(total) / max(count, 1)


def _schedule(warmup_steps: int, total_steps: int):
    """Linear warmup, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA's max allocated, else the peak RSS.

    On Linux the peak RSS is read as VmHWM from /proc/self/status, not ru_maxrss: ru_maxrss is carried across
    fork and exec, so a run started from a large process (a notebook, a test runner at 3 GB) would report its
    parent's peak instead of its own. VmHWM belongs to the process image and starts afresh at exec."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB; macOS bytes (rare here)


def adamw(params, cfg, device: str) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel on CPU and CUDA: one pass per tensor. On CPU the default single-tensor
    loop took 54 ms per step for SmolLM2's 420 LoRA tensors against 7 ms fused (this machine), and made two
    temporaries the size of the largest trainable tensor (an embedding in full fine-tuning: +89 to +216 MB)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device in ("cpu", "cuda"))


def one_malloc_arena() -> bool:
    """Ask glibc to serve every thread from one heap (mallopt M_ARENA_MAX = 1); returns whether it took.

    glibc gives threads that allocate at once arenas of their own, and each keeps the memory freed into it:
    the training step's activations come and go from several threads (torch's intra-op pool, the tokenizer's
    threads before it), so several heaps each hold a step's worth. Measured with bench/train_throughput.py on
    this machine: peak RSS 3,665-3,719 MB -> 3,508 MB with MALLOC_ARENA_MAX=1, tokens/s unchanged (533-539 vs
    557). Arenas that already exist stay; no effect off glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, 1))  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        return False


# oneDNN, which runs torch's bf16/fp32 matrix products on a CPU, keeps up to 1,024 compiled primitives by default,
# each holding buffers of its own, and every new (rows x width) shape of a training step compiles a few dozen. With
# length-grouped batches nearly every step has a new shape, so its memory grew for hundreds of steps: heap in use
# +21 MB a step on the SmolLM2 benchmark rows. 64 keeps a step's shapes: 16 steps, peak RSS 3,009-3,088 MB ->
# 2,620-2,696 MB at the same speed (899-961 against 923-960 tokens/s); 0 (no cache) halved the speed.
ONEDNN_PRIMITIVE_CACHE = "64"


def small_onednn_cache() -> None:
    """Cap oneDNN's primitive cache for this process unless the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY. oneDNN
    reads it when it builds its first primitive, so this must come before the process's first CPU matrix product
    (pipeline.train_project calls it first thing); later it changes nothing."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE)


def prepare_batching(cfg, device: str) -> None:
    """What every training loop does first: flush denormals on a CPU and check the batch sizes (the steps
    themselves come from data/batching.step_groups)."""
    if device == "cpu":
        # Denormal floats in the frozen weights' gradients make x86 CPUs crawl: 24 -> 99 tokens/s measured.
        torch.set_flush_denormal(True)
        one_malloc_arena()
    if cfg.global_batch_size % cfg.micro_batch_size:
        raise ConfigError(f"train.global_batch_size ({cfg.global_batch_size}) is not a multiple of "
                          f"train.micro_batch_size ({cfg.micro_batch_size})",
                          "make global_batch_size a multiple of micro_batch_size (e.g. 16 and 8)")


def fit(config: ProjectConfig, run_dir: Path, base_path: str, tokenizer, resume: bool = False,
        on_eval: Callable[[int, float], bool] | None = None, force: bool = False) -> dict:
    """Train on run_dir/data/train.tokens.jsonl; return a summary for the run card.

    on_eval(step, eval_loss) is called after each evaluation of the held-out loss; returning True stops the
    run there (a sweep's pruner uses it). The summary then has "stopped_early": True. resume: continue from
    the newest checkpoint that verifies; force: even when the config or data changed since it was written."""
    cfg = config.train
    device = pick_device(cfg.device)
    d = distributed.setup(device, cfg.distributed, config.method.kind)
    if d.strategy == "fsdp" and (resume or cfg.load_best or cfg.early_stopping_patience):
        raise ConfigError("an fsdp run keeps no intermediate checkpoints in this version, so --resume, "
                          "train.load_best and early stopping are not available with it",
                          "use train.distributed: ddp (the whole model on each process), or drop those options")
    prepare_batching(cfg, device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    train_path, eval_path = run_dir / "data" / "train.tokens.jsonl", run_dir / "data" / "eval.tokens.jsonl"
    if not train_path.is_file():
        raise RunDirError(f"'{train_path}' is missing", "run `tunesmith train PROJECT.yaml` to prepare the data")
    train_rows, eval_rows = read_tokenized(train_path), read_tokenized(eval_path)
    data_sha256 = sha256_file(train_path) + sha256_file(eval_path)
    lengths = [len(r.input_ids) for r in train_rows]
    max_seq_len = json.loads((run_dir / "data" / "stats.json").read_text())["max_seq_len"]
    # Length-grouped rows are the default on both devices: they carry little padding (1.8% on the support example)
    # and need no attention mask, so SDPA runs its causal flash kernel. Packed rows need the block-diagonal mask:
    # on a CPU that makes eager attention quadratic in the row length, and on an H200 (torch 2.11) SDPA sends masked
    # attention to cuDNN, which builds a new graph for each new row width (10-14 ms of CPU per attention call; steps
    # with a new width took 1.4-1.9 s): 6,896 against 18,947 tokens/s over ten steps of the Llama-3.2-1B shape
    # (bench/gpu_step_profile.py, docs/benchmarks.md).
    packing = cfg.packing is True  # "auto" is off

    compute = resolve_compute(cfg.precision, config.model.dtype, config.method.kind, device, row_width(lengths))
    model = load_causal_lm(base_path, compute.weights, compute.attention, allow_pickle=config.model.allow_pickle,
                           trust_remote_code=config.model.trust_remote_code)
    model = apply_method(model, config.method, device).to(device)
    model.config.use_cache = False
    use_liger = d.strategy != "fsdp" and liger.resolve(cfg.liger, device, model.config.model_type, compute.autocast)
    if use_liger:
        liger.apply(unwrap(model))
    elif device == "cuda" and cfg.liger == "auto" and not liger.installed():
        console.print("Liger kernels are not installed: pip install 'tunesmith[liger]' fuses RMSNorm, RoPE, SwiGLU "
                      "and the loss on CUDA")
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    fused, layers, kernels = 0, {}, None
    if config.method.kind == "lora" and d.strategy != "fsdp":
        fused = use_fast_lora(model)  # adapter path in the base dtype, one autograd node per layer
        if device == "cpu" and compute.autocast is None and not cfg.compile:
            # hand-written RMSNorm / SwiGLU / attention passes: on a CPU, what torch.compile would fuse; with the
            # fused C kernels where they build (train/cpu_kernels.py)
            kernels = cpu_kernels.resolve(cfg.cpu_kernels, device, True, compute.autocast, cfg.compile)
            if kernels is None and cfg.cpu_kernels == "auto":
                console.print(f"fused CPU kernels off, PyTorch ops instead (slower, same results): "
                              f"{cpu_kernels.build_problem()}; {cpu_kernels.INSTALL} to use them")
            layers = use_fused_layers(model, kernels)
    distributed.broadcast_parameters(model, d)  # ddp: every rank starts from rank 0's adapter init
    model = distributed.shard_model(model, d)  # fsdp: each rank keeps a shard of every layer
    if cfg.compile:
        compile_layers(model)
    trainable, total = count_parameters(model)
    attention = (f"fused (matmul up to {EAGER_MAX_TOKENS} tokens per row, SDPA above)" if layers.get("attention")
                 else compute.attention or "default")
    console.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%), "
                  f"method {config.method.kind}, device {device}, "
                  f"{compute.name}, {attention} attention"
                  + (f", {fused} fused LoRA layers" if fused else "")
                  + (", Liger kernels (RMSNorm, RoPE, SwiGLU, linear cross-entropy)" if use_liger else "")
                  + (f", fused norm/MLP/attention ({sum(layers.values())} modules)" if any(layers.values()) else "")
                  + (", fused CPU kernels" if kernels is not None else ""))
    if d.main:
        check_output_room(run_dir, checkpoint_bytes(model))  # before the first step, not at the first save
    model.train()

    def epoch_steps(epoch_index: int) -> list[list[list[int]]]:
        return step_groups(lengths, cfg.micro_batch_size, cfg.global_batch_size, cfg.seed + epoch_index,
                           cfg.micro_batch_tokens)

    steps_per_epoch = len(epoch_steps(0))  # ceil(rows / global_batch_size) either way
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg, device)
    warmup = max(1, round(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(warmup, total_steps) if warmup else
                                                  _schedule(0, total_steps))

    history = EvalHistory(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
    guard = BadStepGuard(cfg.max_bad_steps)
    fingerprint = {"config_sha256": config_hash(config), "data_sha256": data_sha256}
    step, last_checkpoint, stop = 0, None, None
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        checkpoint, state, training = newest_loadable(run_dir)
        if checkpoint is None:
            console.print("no complete checkpoint to resume from: starting at step 1")
        else:
            _check_fingerprint(state, fingerprint, checkpoint, force)
            load_weights(model, checkpoint)
            optimizer.load_state_dict(training["optimizer"])
            scheduler.load_state_dict(training["scheduler"])
            restore_rng(training["rng"])
            step, last_checkpoint = state["step"], checkpoint.name
            history.restore(state["history"])
            guard.in_a_row = state["bad_steps_in_a_row"]
            if state.get("stop_reason") in ("early_stopping", "on_eval"):
                stop = state["stop_reason"]  # the run had already ended there; resuming only finishes it
            if d.main:
                _truncate_metrics(metrics_path, step)
            console.print(f"resumed from {checkpoint.name}: steps 1-{step} are not run again")
    if step == 0 and metrics_path.exists() and d.main:
        metrics_path.unlink()
    distributed.barrier(d)  # rank 0 has reset metrics.jsonl before anyone logs

    tokens, train_seconds, record = 0, 0.0, None
    params_for_tracking = redact(flatten(config.model_dump(mode="json")))
    # Only rank 0 writes metrics.jsonl and draws the progress bar; the other ranks train silently.
    with (MetricsLog(metrics_path, cfg.tracking, params_for_tracking, config.name) if d.main else _Silent()) as log, \
            StopRequest() as signals, (progress_bar() if d.main else _Silent()) as progress:
        task = progress.add_task("training", total=total_steps, completed=step, loss=float("nan"), tps=0.0)
        while step < total_steps and stop is None:
            epoch_index = step // steps_per_epoch
            # The batch order is a pure function of seed and epoch, so a resumed run skips exactly the groups
            # the checkpoint's step count says were done.
            groups = epoch_steps(epoch_index)
            for group in groups[step - epoch_index * steps_per_epoch:]:
                started = time.perf_counter()
                tensors = step_batches(train_rows, group, tokenizer.pad_token_id, device, packing, max_seq_len,
                                       cfg.micro_batch_size, cfg.micro_batch_tokens, two_rows=cfg.compile)
                # The step's loss is summed on the device and read once: on a GPU each read of a device value makes
                # the host wait for the work queued before it.
                # Normalize by the labelled tokens of the whole optimizer step, so accumulation (and any number
                # of processes) gives the same gradient as one big batch.
                n_labels = sum(t["label_index"].numel() for t in tensors)
                step_loss = torch.zeros((), dtype=torch.float64, device=device)
                for batch, weight in distributed.rank_share(tensors, d):
                    with compute.context(device):
                        loss_sum, _ = label_loss_sum(model, batch)
                    (loss_sum * (weight * distributed.loss_scale(d)) / n_labels).backward()
                    step_loss += loss_sum.detach().double() * weight / n_labels
                distributed.sum_gradients(params, d)
                step_loss = distributed.sum_all(step_loss.item(), d)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                lr = scheduler.get_last_lr()[0]
                finite = guard.finite(step_loss, grad_norm)
                if finite:  # a NaN/inf step changes no weight and no optimizer moment
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_tokens = sum(lengths[i] for ids in group for i in ids)  # real tokens, padding excluded
                tokens += step_tokens
                elapsed = time.perf_counter() - started
                train_seconds += elapsed
                record = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                          "loss": round(step_loss, 6) if finite else None, "lr": lr, "tokens": step_tokens,
                          "tokens_per_s": round(step_tokens / elapsed, 2)}
                if not finite:
                    record["skipped"] = "non-finite loss or gradients"
                if step % cfg.log_every_steps == 0 and step != total_steps:
                    log.write(record)
                if not finite:
                    guard.check(step, lr, step_loss, grad_norm, last_checkpoint)  # raises past max_bad_steps
                progress.update(task, advance=1, loss=step_loss, tps=tokens / max(train_seconds, 1e-9))
                evaluate = (step % steps_per_epoch == 0 or step == total_steps or
                            (cfg.eval_every_steps > 0 and step % cfg.eval_every_steps == 0))
                if evaluate:
                    held = eval_loss(model, eval_rows, cfg.micro_batch_size, tokenizer.pad_token_id, device,
                                     compute)
                    log.write({"step": step, "epoch": round(step / steps_per_epoch, 4), "eval_loss": round(held, 6)})
                    history.update(step, held)
                    if history.should_stop:
                        stop = "early_stopping"
                        console.print(f"early stopping at step {step}: no eval-loss improvement of at least "
                                      f"{cfg.early_stopping_min_delta} in {history.without_improvement} evaluations "
                                      f"(best {history.best_loss:.4f} at step {history.best_step})")
                    if on_eval is not None and on_eval(step, held):
                        stop = stop or "on_eval"
                stop = stop or distributed.agreed_signal(signals.signal, d)
                # Every evaluation is checkpointed too, so the best weights are always on disk.
                every = cfg.checkpoint_every_steps
                due = evaluate or stop or step == total_steps or (every > 0 and step % every == 0)
                if due and d.strategy != "fsdp":  # fsdp runs keep no intermediate checkpoints (docs/scale-out.md)
                    state = {"epoch": step / steps_per_epoch, "epoch_index": step // steps_per_epoch,
                             "step_in_epoch": step % steps_per_epoch, "eval_loss": held if evaluate else None,
                             "history": history.state(), "bad_steps_in_a_row": guard.in_a_row,
                             "stop_reason": stop, "seed": cfg.seed, **fingerprint}
                    if d.main:
                        last_checkpoint = save_checkpoint(run_dir, step, model, optimizer, scheduler, state).name
                        prune_checkpoints(run_dir, cfg.keep_checkpoints, history.best_step)
                    distributed.barrier(d)  # no rank runs ahead of a checkpoint it may have to resume from
                if stop or step == total_steps:
                    break
        summary = {"steps": step, "stopped_early": stop in ("early_stopping", "on_eval"), "stop_reason": stop,
                   "train_tokens_per_s": round(tokens / max(train_seconds, 1e-9), 2),
                   "peak_memory_mb": round(peak_memory_mb(device), 1), "train_seconds": round(train_seconds, 2),
                   "trainable_parameters": trainable, "total_parameters": total, "device": device,
                   "precision": compute.name, "liger": use_liger, "cpu_kernels": kernels is not None,
                   "best_step": history.best_step,
                   "best_eval_loss": history.best_loss,
                   "adapter_step": step}
        if stop in STOP_SIGNALS:
            summary["interrupted"] = stop
            summary["checkpoint"] = last_checkpoint
            return summary  # no adapter: the run is not finished; its records stay as they are for --resume
        if (stop == "early_stopping" or cfg.load_best) and history.best_step not in (None, step):
            best = run_dir / "checkpoints" / checkpoint_name(history.best_step)
            load_checkpoint(best)  # verifies it before its weights are used
            load_weights(model, best)
            summary["adapter_step"] = history.best_step
            console.print(f"the adapter holds the best weights: step {history.best_step}, eval loss "
                          f"{history.best_loss:.4f}")
        if record is not None:  # the last training record carries the run's throughput and memory
            log.write({**record, **summary})

    full_state = distributed.full_state_dict(model, d)  # fsdp: gathered from every rank's shard
    if d.main:
        adapter_dir = run_dir / "adapter"
        adapter_dir.mkdir(exist_ok=True)
        if full_state is not None:
            model.save_pretrained(adapter_dir, state_dict=full_state, safe_serialization=True)
        else:
            save_weights(model, adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
    distributed.barrier(d)
    summary["processes"] = d.world
    return summary


class _Silent:
    """What the ranks other than 0 use for the metrics log and the progress bar."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def write(self, record: dict) -> None:
        pass

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


def _check_fingerprint(state: dict, fingerprint: dict, checkpoint: Path, force: bool) -> None:
    """The checkpoint must come from this config and these prepared data, unless --force."""
    what = {"config_sha256": "the config (keys that change the result)", "data_sha256": "the prepared data"}
    changed = [what[k] for k in fingerprint if state.get(k) != fingerprint[k]]
    if changed and not force:
        raise ConfigError(f"{' and '.join(changed)} differ from what checkpoint {checkpoint.name} was trained on",
                          "resume with the original project file and data, or pass --force to continue anyway "
                          "(the result then differs from an uninterrupted run)", where=str(checkpoint))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from: those steps run again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash mid-write
    write_text_atomic(path, "".join(line + "\n" for line in kept))
