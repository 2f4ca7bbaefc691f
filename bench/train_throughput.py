"""Training throughput: HF Trainer + PEFT (the usual way) against tunesmith's loop, in the same run.

Variants, each in its own process (so peak RSS is its own), same model, LoRA config, examples and epochs:
  (a) HF Trainer + PEFT + DataCollatorForSeq2Seq padding, fp32, as users run it
  (b) the same with torch.set_flush_denormal(True)
  (c) tunesmith's training loop with its defaults
  (d) on request (--variants): (c) with train.cpu_kernels: false, what the fused CPU kernels are worth
Data: Bitext customer-support pairs from ../shared/data (variable length), tokenized once with the chat template
and completion-only labels, so every variant trains on identical rows. Real tokens/s = non-padding input tokens
÷ seconds in the training loop (model loading excluded).

    .venv/bin/python bench/train_throughput.py [--rows 128] [--max-seq-len 256]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

BITEXT = (Path(__file__).resolve().parents[2] / "shared" / "data" / "bitext_customer_support" /
          "Bitext_Sample_Customer_Support_Training_Dataset.csv")

HF_VARIANT = r"""
import json, resource, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
from tunesmith.models.load import load_tokenizer
rows_path, base, flush, out = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
if flush:
    torch.set_flush_denormal(True)
rows = [json.loads(line) for line in open(rows_path)]
data = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
tokenizer = load_tokenizer(base)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, num_train_epochs=1, learning_rate=2e-4,
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                         lr_scheduler_type="cosine", warmup_steps=1, dataloader_num_workers=0)
trainer = Trainer(model=model, args=args, train_dataset=data,
                  data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
started = time.perf_counter()
result = trainer.train()
seconds = time.perf_counter() - started
tokens = sum(len(r["input_ids"]) for r in rows)
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "final_loss": losses[-1],
                  "mean_loss": sum(losses) / len(losses),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TUNESMITH_VARIANT = r"""
import json, resource, sys, time
import tunesmith
train_path, extra, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
card = tunesmith.train({"name": "bench", "data": {"train": train_path, "eval_fraction": 0.02, "max_seq_len": 256,
                        "clean": {"dedup": "none"}},
                        "train": {"epochs": 1, "micro_batch_size": 8, "global_batch_size": 8, **extra},
                        "output": out})
records = [json.loads(l) for l in open(out + "/metrics.jsonl")]
last = [r for r in records if "train_tokens_per_s" in r][-1]
losses = [r["loss"] for r in records if r.get("loss") is not None]
print(json.dumps({"tokens_per_s": last["train_tokens_per_s"], "seconds": last["train_seconds"],
                  "final_loss": last["loss"], "mean_loss": sum(losses) / len(losses),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--variants", default="abc",
                        help="which of a, b, c, d to run, in that order (ratios need a and b; d: c without the "
                             "fused CPU kernels)")
    args = parser.parse_args()
    if not args.variants or not set(args.variants) <= set("abcd"):
        parser.error(f"--variants takes letters from abcd, not {args.variants!r}")
    if not BITEXT.is_file():
        raise SystemExit(f"needs {BITEXT}")
    from tunesmith.data.tokenize import ensure_chat_template, tokenize_example
    from tunesmith.models.load import load_tokenizer, resolve

    base = resolve("smollm2-135m-instruct").path
    tokenizer = load_tokenizer(base)
    ensure_chat_template(tokenizer)
    with open(BITEXT, newline="", encoding="utf-8") as handle:
        pairs = [(r["instruction"], r["response"]) for r in csv.DictReader(handle)][:args.rows]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        # tunesmith holds out 2% (at least one row) as its eval set; tokens/s stays comparable.
        (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                                                    for p, c in pairs))
        tokenized = [tokenize_example(tokenizer, [{"role": "user", "content": p}, {"role": "assistant",
                                                                                   "content": c}], args.max_seq_len)
                     for p, c in pairs]
        (folder / "rows.jsonl").write_text("".join(json.dumps({"input_ids": t.input_ids, "labels": t.labels}) + "\n"
                                                   for t in tokenized))
        variants = {
            "a": ("(a) HF Trainer + PEFT, padding collator", HF_VARIANT, str(folder / "rows.jsonl"), base, "0"),
            "b": ("(b) (a) + flush denormal", HF_VARIANT, str(folder / "rows.jsonl"), base, "1"),
            "c": ("(c) tunesmith defaults", TUNESMITH_VARIANT, str(folder / "train.jsonl"), "{}"),
            # what the fused CPU kernels are worth (train/cpu_kernels.py): not part of the default run
            "d": ("(d) tunesmith, train.cpu_kernels: false", TUNESMITH_VARIANT, str(folder / "train.jsonl"),
                  json.dumps({"cpu_kernels": False})),
        }
        # a letter may repeat (--variants cdcd interleaves two runs of each): one output folder per run
        results = [(variants[k][0], run(*variants[k][1:], str(folder / f"{i}{k}")))
                   for i, k in enumerate(args.variants)]
    tokens = sum(len(t.input_ids) for t in tokenized)
    print(f"SmolLM2-135M-Instruct, LoRA r=16 all projections, {args.rows} Bitext pairs ({tokens:,} tokens), "
          f"batch 8, 1 epoch; {platform.machine()}, {os.cpu_count()} cores\n")
    by_name = dict(results)  # the last run of each variant
    first = results[0][1]
    a = by_name.get("(a) HF Trainer + PEFT, padding collator", first)
    b = by_name.get("(b) (a) + flush denormal", first)
    print("| variant | real tokens/s | train seconds | peak RSS MB | final loss | mean loss | vs (a) | vs (b) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results:
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['seconds']:.0f} | {r['peak_mb']:.0f} | {r['final_loss']:.3f} "
              f"| {r['mean_loss']:.3f} "
              f"| {r['tokens_per_s'] / a['tokens_per_s']:.1f}x | {r['tokens_per_s'] / b['tokens_per_s']:.1f}x |")
    print("\nfinal loss: the last step's batch (noisy); mean loss: over every step of the epoch, so each variant "
          "averages over the same examples")
    print("\nGoals (issue 4, CPU): (c) >= 4x (b) and >= 15x (a); peak RSS of (c) <= 40% of (a).")


if __name__ == "__main__":
    main()
