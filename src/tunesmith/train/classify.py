"""The training loop for classification, multilabel and regression: plain PyTorch, top to bottom.

Reads run_dir/data/{train,eval}.tokens.jsonl and labels.json / targets.json (written by data/encode.py);
writes metrics.jsonl, checkpoints/ at each epoch end, and adapter/ (PEFT adapters plus the head) or model/
(full fine-tuning), with the tokenizer and the label files beside the weights.

The head starts from random weights while the body is pretrained, so the head gets its own, higher learning
rate (train.head_lr_multiplier, 10x by default): at the body's rate it would still be near chance after an
epoch on a few thousand rows.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.config import ProjectConfig
from tunesmith.console import console, progress_bar
from tunesmith.data.batching import step_groups
from tunesmith.data.encode import LABELS_FILE, TARGETS_FILE, THRESHOLDS_FILE, load_space
from tunesmith.errors import RunDirError
from tunesmith.eval.classification import task_metrics, tune_thresholds
from tunesmith.io import read_jsonl, write_json_atomic
from tunesmith.models.adapters import apply_task_method, describe_parameters, count_parameters, quantization_config
from tunesmith.models.classifier import collate_ids, load_sequence_model, outputs_from_logits
from tunesmith.train.checkpoint import (load_weights, newest_loadable, prune_checkpoints, restore_rng,
                                        save_checkpoint, save_weights)
from tunesmith.train.loop import (_schedule, adamw, enable_checkpointing, prepare_batching, peak_memory_mb,
                                  pick_device)

# Logged at each epoch end beside eval_loss (prefixed eval_), one or two per task: enough to watch, cheap.
EPOCH_METRICS = {"classification": ("accuracy", "f1_macro"), "multilabel": ("f1_micro", "f1_macro"),
                 "regression": ("mse", "r2")}


def class_weights(task: str, targets: list, n_labels: int, setting: str) -> torch.Tensor | None:
    """balanced: n / (k x count) per class, sklearn's compute_class_weight('balanced'); for multilabel the
    positive weight negatives / positives per label (BCE's pos_weight). A class absent from train gets 1."""
    if setting == "none" or task == "regression":
        return None
    if task == "classification":
        counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_labels).astype(float)
        weights = np.divide(len(targets), n_labels * counts, out=np.ones(n_labels), where=counts > 0)
    else:
        positives = np.asarray(targets, dtype=float).sum(axis=0)
        weights = np.divide(len(targets) - positives, positives, out=np.ones(n_labels), where=positives > 0)
    return torch.tensor(weights, dtype=torch.float32)


def loss_sum(task: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The batch's loss summed over rows (each row's loss averaged over its labels or targets), so gradient
    accumulation can divide by the rows of the whole optimizer step."""
    logits = logits.float()  # the loss in fp32 even under bf16 autocast
    if task == "classification":
        return F.cross_entropy(logits, target, weight=weight, reduction="sum")
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none").mean(1).sum()
    return F.mse_loss(logits, target, reduction="none").mean(1).sum()


def target_tensor(task: str, targets: list, space: dict) -> torch.Tensor:
    if task == "classification":
        return torch.tensor(targets, dtype=torch.long)
    values = torch.tensor(targets, dtype=torch.float32)
    if task == "regression" and space.get("normalize", True):
        values = (values - torch.tensor(space["mean"])) / torch.tensor(space["std"])
    return values


def _is_head(name: str, heads: list[str]) -> bool:
    parts = name.split(".")
    return any(h in parts or name.startswith(h + ".") or f".{h}." in name for h in heads)


@torch.no_grad()
def predict_logits(model, rows: list[dict], batch_size: int, pad_id: int, device: str, autocast) -> torch.Tensor:
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = torch.zeros((len(rows), model.config.num_labels))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_ids([rows[i]["input_ids"] for i in chunk], pad_id).items()}
        with autocast():
            out[chunk] = model(**batch).logits.float().cpu()
    model.train()
    return out


def evaluate_rows(task: str, space: dict, model, rows: list[dict], batch_size: int, pad_id: int, device: str,
                  autocast, weight) -> tuple[float, dict, torch.Tensor]:
    """Held-out loss (on the training scale), the epoch metrics, and the logits."""
    logits = predict_logits(model, rows, batch_size, pad_id, device, autocast)
    targets = [r["target"] for r in rows]
    loss = float(loss_sum(task, logits, target_tensor(task, targets, space),
                          None if weight is None else weight.cpu())) / max(len(rows), 1)
    if task == "regression":
        targets = [t[0] if len(t) == 1 else t for t in targets]
    metrics = task_metrics(task, space, targets, outputs_from_logits(logits, space)) if rows else {}
    return loss, {f"eval_{k}": round(metrics[k], 6) for k in EPOCH_METRICS[task] if k in metrics}, logits


def fit_task(config: ProjectConfig, run_dir: Path, base_path: str, tokenizer, resume: bool = False,
             on_eval: Callable[[int, float], bool] | None = None, force: bool = False) -> dict:
    """Train a sequence classification / regression model; return a summary for the run card. on_eval(step,
    eval_loss) is called after each epoch's evaluation; returning True stops the run there (sweep pruning)."""
    cfg, task = config.train, config.task
    device = pick_device(cfg.device)
    prepare_batching(cfg, device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    train_path, eval_path = run_dir / "data" / "train.tokens.jsonl", run_dir / "data" / "eval.tokens.jsonl"
    if not train_path.is_file():
        raise RunDirError(f"'{train_path}' is missing", "run `tunesmith train PROJECT.yaml` to prepare the data")
    train_rows, eval_rows = read_jsonl(train_path), read_jsonl(eval_path)
    space = load_space(run_dir)
    lengths = [len(r["input_ids"]) for r in train_rows]

    # fp32 weights: these models are small (MiniLM 22M) and the head is sensitive to rounding; bf16 autocast
    # where the hardware has it natively and the user asks (train.precision: bf16), or on CUDA by default.
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda")

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)

    model, heads = load_sequence_model(base_path, space, tokenizer.pad_token_id,
                                       quantization=quantization_config(config.method, device))
    model = apply_task_method(model, config.method, device, heads)
    if config.method.kind != "qlora":  # 4-bit weights already sit on the GPU
        model = model.to(device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    trainable, total = count_parameters(model)
    console.print(f"{describe_parameters(model, config.method.kind)}, head {'+'.join(heads)}, device {device}, "
                  f"{'bf16 autocast' if bf16 else 'fp32'}")
    model.train()
    weight = class_weights(task, [r["target"] for r in train_rows], model.config.num_labels, cfg.class_weights)
    weight = None if weight is None else weight.to(device)

    def epoch_steps(epoch_index: int) -> list[list[list[int]]]:
        return step_groups(lengths, cfg.micro_batch_size, cfg.global_batch_size, cfg.seed + epoch_index,
                           cfg.micro_batch_tokens)

    steps_per_epoch = len(epoch_steps(0))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head_params = [p for n, p in named if _is_head(n, heads)]
    body_params = [p for n, p in named if not _is_head(n, heads)]
    groups = [{"params": body_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * cfg.head_lr_multiplier}]
    params = body_params + head_params
    optimizer = adamw([g for g in groups if g["params"]], cfg, device)
    warmup = max(1, round(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(warmup, total_steps))

    step = 0
    metrics_path = run_dir / "metrics.jsonl"
    # The newest checkpoint that verifies (manifest sha256s); broken or unfinished ones are skipped with a warning.
    checkpoint, trainer_state, state = newest_loadable(run_dir) if resume else (None, None, None)
    if checkpoint is not None:
        load_weights(model, checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        step = trainer_state["step"]
        _truncate_metrics(metrics_path, step)
        console.print(f"resumed from {checkpoint.name}: steps 1-{step} are not run again")
    elif metrics_path.exists():
        metrics_path.unlink()

    pad_id = tokenizer.pad_token_id
    tokens, train_seconds, record, stopped_early = 0, 0.0, None, False
    with open(metrics_path, "a", encoding="utf-8") as log, progress_bar() as progress:
        bar = progress.add_task("training", total=total_steps, completed=step, loss=float("nan"), tps=0.0)
        while step < total_steps:
            epoch_index = step // steps_per_epoch
            steps = epoch_steps(epoch_index)
            for group in steps[step - epoch_index * steps_per_epoch:]:
                started = time.perf_counter()
                n_rows = sum(len(ids) for ids in group)  # normalize by the rows of the whole optimizer step
                step_loss = 0.0
                for ids in group:
                    batch = {k: v.to(device) for k, v in collate_ids([train_rows[i]["input_ids"] for i in ids],
                                                                    pad_id).items()}
                    target = target_tensor(task, [train_rows[i]["target"] for i in ids], space).to(device)
                    with autocast():
                        logits = model(**batch).logits
                    loss = loss_sum(task, logits, target, weight) / n_rows
                    loss.backward()
                    step_loss += loss.item()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_tokens = sum(lengths[i] for ids in group for i in ids)  # real tokens, padding excluded
                tokens += step_tokens
                elapsed = time.perf_counter() - started
                train_seconds += elapsed
                record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": round(step_loss, 6),
                          "lr": lr, "tokens": step_tokens, "tokens_per_s": round(step_tokens / elapsed, 2)}
                if step % cfg.log_every_steps == 0 and step != total_steps:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                progress.update(bar, advance=1, loss=step_loss, tps=tokens / max(train_seconds, 1e-9))
                if step % steps_per_epoch == 0 or step == total_steps:
                    held, scores, _ = evaluate_rows(task, space, model, eval_rows, cfg.micro_batch_size * 2,
                                                    pad_id, device, autocast, weight)
                    log.write(json.dumps({"step": step, "epoch": round(step / steps_per_epoch, 4),
                                          "eval_loss": round(held, 6), **scores}) + "\n")
                    log.flush()
                    console.print(f"epoch {step / steps_per_epoch:.2f}: eval_loss {held:.4f} " +
                                  " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                    save_checkpoint(run_dir, step, model, optimizer, scheduler,
                                    {"epoch": step / steps_per_epoch, "eval_loss": held, **scores})
                    prune_checkpoints(run_dir, cfg.keep_checkpoints, None)
                    if on_eval is not None and on_eval(step, held):
                        stopped_early = True
                        break
                if step == total_steps:
                    break
            if stopped_early:
                break
        summary = {"steps": step, "stopped_early": stopped_early, "adapter_step": step,
                   "train_tokens_per_s": round(tokens / max(train_seconds, 1e-9), 2),
                   "peak_memory_mb": round(peak_memory_mb(device), 1), "train_seconds": round(train_seconds, 2),
                   "trainable_parameters": trainable, "total_parameters": total, "device": device,
                   "precision": "bf16 autocast" if bf16 else "fp32"}
        if record is not None:  # the last training record carries the run's throughput and memory
            log.write(json.dumps({**record, **summary}) + "\n")

    if task == "multilabel":
        _save_thresholds(run_dir, space, model, eval_rows, cfg.micro_batch_size * 2, pad_id, device, autocast)
    _save_final(run_dir, model, tokenizer, config.method.kind)
    return summary


def _save_thresholds(run_dir: Path, space: dict, model, rows, batch_size, pad_id, device, autocast) -> None:
    """Multilabel: per-label thresholds that maximize each label's F1 on the eval split (thresholds.json)."""
    probs = torch.sigmoid(predict_logits(model, rows, batch_size, pad_id, device, autocast)).numpy()
    thresholds = tune_thresholds(probs, np.asarray([r["target"] for r in rows])) if rows else \
        [0.5] * len(space["labels"])
    write_json_atomic(run_dir / THRESHOLDS_FILE, {"labels": space["labels"], "thresholds": thresholds,
                                                  "tuned_on": f"eval split ({len(rows)} rows), max F1 per label"})
    console.print("thresholds per label: " + ", ".join(f"{l} {t:.2f}" for l, t in zip(space["labels"], thresholds)))


def _save_final(run_dir: Path, model, tokenizer, kind: str) -> None:
    """adapter/ for PEFT methods (adapters + head via modules_to_save), model/ for full fine-tuning; the
    tokenizer and label files go beside the weights so the folder is usable on its own."""
    folder = run_dir / ("model" if kind == "full" else "adapter")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    save_weights(model, folder)
    tokenizer.save_pretrained(folder)
    for name in (LABELS_FILE, TARGETS_FILE, THRESHOLDS_FILE):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, folder / name)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from: those steps run again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
