"""Where a tunesmith training step spends its time on a GPU: per-step wall times of length-grouped (padded) and
packed rows, each with and without Liger, on a random-init model; then a torch.profiler table of a few steps of the
first path (top CUDA and CPU operators).

    python bench/gpu_step_profile.py [--shape Llama-3.2-1B] [--steps 14] [--tokenizer DIR] [--data CSV]
    python bench/gpu_step_profile.py --shape tiny --steps 4      # on a CPU: checks the script
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import BITEXT  # noqa: E402
from train_throughput_gpu import bitext_rows, random_model  # noqa: E402


def build(shape: str, tokenizer, device: str, use_liger: bool):
    from tunesmith.config import MethodConfig
    from tunesmith.models.adapters import apply_method, unwrap
    from tunesmith.train import liger
    from tunesmith.train.lora_fast import use_fast_lora

    model = apply_method(random_model(shape, tokenizer, device), MethodConfig(), device).to(device)
    model.config.use_cache = False
    if use_liger:
        liger.apply(unwrap(model))
    use_fast_lora(model)
    model.train()
    return model


def train_step(model, optimizer, params, tensors):
    """One optimizer step as the training loop runs it: the loss summed on the device, read once."""
    import torch

    from tunesmith.train.loop import label_loss_sum

    n_labels = sum(t["label_index"].numel() for t in tensors)
    step_loss = 0
    for batch in tensors:
        loss_sum, _ = label_loss_sum(model, batch)
        (loss_sum / n_labels).backward()
        step_loss = step_loss + loss_sum.detach()
    float(step_loss)
    float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="Llama-3.2-1B")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=BITEXT)
    parser.add_argument("--configs", default="padded,packed,padded+liger,packed+liger",
                        help="packed or padded (length-grouped rows), each optionally +liger")
    args = parser.parse_args()
    import torch

    from tunesmith.data.batching import step_groups
    from tunesmith.train import liger
    from tunesmith.train.loop import step_batches

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, _, rows = bitext_rows(args.tokenizer, args.data, args.rows, args.max_seq_len)
    groups = step_groups([len(r.input_ids) for r in rows], args.batch, args.batch, 0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    profiled = None
    # Liger patches transformers' Llama module for the whole process, so the paths without it run first.
    for name in sorted(args.configs.split(","), key=lambda n: n.endswith("+liger")):
        packing, use_liger = name.startswith("packed"), name.endswith("+liger")
        if use_liger and (device != "cuda" or not liger.installed()):
            print(f"{name}: skipped (no CUDA or no liger)")
            continue
        model = build(args.shape, tokenizer, device, use_liger)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=2e-4, fused=True)
        times, tokens = [], []
        for group in groups[:args.steps]:
            sync()
            started = time.perf_counter()
            tensors = step_batches(rows, group, tokenizer.pad_token_id, device, packing, args.max_seq_len,
                                   args.batch)
            train_step(model, optimizer, params, tensors)
            sync()
            times.append(time.perf_counter() - started)
            tokens.append(sum(len(rows[i].input_ids) for ids in group for i in ids))
        later = slice(3, None)
        print(f"{name}: step ms " + " ".join(f"{1000 * t:.0f}" for t in times))
        print(f"{name}: tokens/s all steps {sum(tokens) / sum(times):,.0f}; after 3 warm-up steps "
              f"{sum(tokens[later]) / max(sum(times[later]), 1e-9):,.0f}", flush=True)
        if profiled is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=activities) as prof:
                for group in groups[args.steps:args.steps + 3]:
                    train_step(model, optimizer, params,
                               step_batches(rows, group, tokenizer.pad_token_id, device, packing, args.max_seq_len,
                                            args.batch))
                sync()
            profiled = name
            averages = prof.key_averages()
            key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
            print(f"\n{name}, 3 profiled steps, by {key}:")
            print(averages.table(sort_by=key, row_limit=22, max_name_column_width=60))
            if device == "cuda":
                print(f"\n{name}, by self_cpu_time_total:")
                print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        del model, optimizer, params
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
