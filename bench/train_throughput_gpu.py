"""Training throughput on one CUDA GPU: HF Trainer + PEFT (the usual way) against tunesmith's loop, same run.

Models: random-init Llama models of the SmolLM2-135M and Llama-3.2-1B shapes (issue 4; no hub here, and speed
does not depend on the weights' values), bf16 weights. Data: Bitext customer-support pairs with SmolLM2's chat
template and completion-only labels, the same rows for every variant. LoRA r=16 on all seven projections.
Variants, each in its own process (so max allocated memory is its own):
  (a)        HF Trainer + PEFT + DataCollatorForSeq2Seq padding, bf16 weights and bf16=True, as users run it
  (c)          tunesmith's defaults (length-grouped rows, labelled-only head, fused LoRA, Liger when installed)
  (c) -liger   tunesmith with train.liger: false
  (c) +packing tunesmith with train.packing: true
  (c) +compile tunesmith with train.compile: true and no Liger (not run unless named: 10x slower on an H200)
Real tokens/s = non-padding input tokens ÷ seconds in the training loop (model loading excluded). MFU counts
4·N FLOPs per real token (N = every parameter, embeddings included: forward 2N, input gradients 2N; LoRA's own
weight gradients are negligible), against 989 TFLOP/s (dense bf16, H100/H200 SXM datasheet); the table also
gives the bf16 matrix-product rate this card reached in the same run.

    python bench/train_throughput_gpu.py [--rows 1024] [--batch 32] [--max-seq-len 512] [--out DIR]
    python bench/train_throughput_gpu.py --dry-run   # a tiny shape on the CPU: checks the script, times nothing
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import BITEXT  # noqa: E402

DATASHEET_TFLOPS = 989.0

SHAPES = {
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0),
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=49152, max_position_embeddings=2048,
                 rope_theta=10000.0),
}

HF_VARIANT = r"""
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
rows_path, base, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cuda = torch.cuda.is_available()
rows = [json.loads(line) for line in open(rows_path)]
data = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
tokenizer = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=2e-4,
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda, seed=0,
                         lr_scheduler_type="cosine", warmup_steps=1, dataloader_num_workers=0)
trainer = Trainer(model=model, args=args, train_dataset=data,
                  data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
if cuda:
    torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
trainer.train()
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
tokens = sum(len(r["input_ids"]) for r in rows)
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "final_loss": losses[-1],
                  "mean_loss": sum(losses) / len(losses),
                  "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0}))
"""

TUNESMITH_VARIANT = r"""
import json, sys
import tunesmith
train_path, base, batch, max_seq_len, extra, out = sys.argv[1:7]
train = {"epochs": 1, "micro_batch_size": int(batch), "global_batch_size": int(batch), "lr": 2e-4, **json.loads(extra)}
tunesmith.train({"name": "bench", "model": {"base": base},
                 "data": {"train": train_path, "eval_fraction": 0.02, "max_seq_len": int(max_seq_len),
                          "clean": {"dedup": "none"}},
                 "train": train, "output": out})
records = [json.loads(l) for l in open(out + "/metrics.jsonl")]
last = [r for r in records if "train_tokens_per_s" in r][-1]
losses = [r["loss"] for r in records if r.get("loss") is not None]
print(json.dumps({"tokens_per_s": last["train_tokens_per_s"], "seconds": last["train_seconds"],
                  "final_loss": last["loss"], "mean_loss": sum(losses) / len(losses),
                  "peak_mb": last["peak_memory_mb"], "liger": last.get("liger"), "steps": last["steps"]}))
"""

VARIANTS = {  # name: (label, extra train settings; None for the HF baseline)
    "a": ("(a) HF Trainer + PEFT, padding", None),
    "c": ("(c) tunesmith defaults", {}),
    "c-noliger": ("(c) without Liger", {"liger": False}),
    "c-packed": ("(c) + packing", {"packing": True}),
    "c-compile": ("(c) + torch.compile, no Liger", {"liger": False, "compile": True}),
}


def run(code: str, *args: str, timeout: float) -> dict:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_OFFLINE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else f"rc {out.returncode}",
                "stderr": out.stderr[-4000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def random_model(shape: str, tokenizer, device: str):
    """A random-init bf16 Llama of one of SHAPES, built on `device`, with the tokenizer's special token ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def build_model(shape: str, tokenizer_dir: Path, folder: Path, device: str) -> int:
    """random_model saved as a local HF folder with SmolLM2's tokenizer beside it; returns its parameter count."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = random_model(shape, tokenizer, device)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in ("chat_template.jinja",):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    return sum(p.numel() for p in model.parameters())


def bitext_rows(tokenizer_dir: Path | None, data: Path, rows: int, max_seq_len: int):
    """SmolLM2's tokenizer (the embedded one unless a folder is given), the first `rows` Bitext pairs, and the pairs
    tokenized with the chat template and completion-only labels."""
    from transformers import AutoTokenizer

    from tunesmith.data.tokenize import ensure_chat_template, tokenize_example

    if tokenizer_dir is None:
        from tunesmith.models.load import resolve
        tokenizer_dir = Path(resolve("smollm2-135m-instruct").path)
    if not data.is_file():
        raise SystemExit(f"needs {data}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ensure_chat_template(tokenizer)
    with open(data, newline="", encoding="utf-8") as handle:
        pairs = [(r["instruction"], r["response"]) for r in csv.DictReader(handle)][:rows]
    return tokenizer, pairs, [tokenize_example(tokenizer, [{"role": "user", "content": p},
                                                           {"role": "assistant", "content": c}], max_seq_len)
                              for p, c in pairs]


def matmul_tflops() -> float:
    """bf16 8192^3 matrix products on this card, TFLOP/s (mean of 10 after 3 warm-ups, random data)."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32, help="examples per optimizer step, every variant")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--shapes", default="SmolLM2-135M,Llama-3.2-1B")
    parser.add_argument("--variants", default="a,c,c-noliger,c-packed", help=f"of {','.join(VARIANTS)}")
    parser.add_argument("--tokenizer", type=Path, default=None, help="SmolLM2 tokenizer folder (default: embedded)")
    parser.add_argument("--data", type=Path, default=BITEXT, help="the Bitext CSV")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and the table here")
    parser.add_argument("--budget-s", type=float, default=480, help="skip variants once this much time has passed")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, 48 rows, on whatever device is here")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if args.dry_run:
        args.shapes, args.rows, args.batch = "tiny", 48, 8
    elif not cuda:
        raise SystemExit("needs a CUDA GPU (bench/train_throughput.py is the CPU benchmark; --dry-run checks this "
                         "script on a CPU)")
    tokenizer, pairs, tokenized = bitext_rows(args.tokenizer, args.data, args.rows, args.max_seq_len)
    args.tokenizer = Path(tokenizer.name_or_path)
    tokens = sum(len(t.input_ids) for t in tokenized)
    started = time.perf_counter()
    ceiling = matmul_tflops() if cuda else float("nan")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"{device_name}; torch {torch.__version__}; bf16 8192^3 matmul {ceiling:.0f} TFLOP/s", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                                                    for p, c in pairs))
        (folder / "rows.jsonl").write_text("".join(json.dumps({"input_ids": t.input_ids, "labels": t.labels}) + "\n"
                                                   for t in tokenized))
        for shape in args.shapes.split(","):
            model_dir = folder / shape
            n_params = build_model(shape, args.tokenizer, model_dir, "cuda" if cuda else "cpu")
            for key in args.variants.split(","):
                label, extra = VARIANTS[key]
                left = args.budget_s - (time.perf_counter() - started)
                if left < 30:
                    results.append({"shape": shape, "variant": label, "error": "skipped: time budget spent"})
                    continue
                out = folder / f"{shape}-{key}"
                if extra is None:
                    r = run(HF_VARIANT, str(folder / "rows.jsonl"), str(model_dir), str(args.batch), str(out),
                            timeout=left)
                else:
                    if extra.get("compile") or extra.get("liger", "auto"):
                        # Triton / inductor compile on first use and cache on disk, as a user's second run does;
                        # two steps warm the cache so the timed run measures training, not the compiler.
                        run(TUNESMITH_VARIANT, str(folder / "train.jsonl"), str(model_dir), str(args.batch),
                            str(args.max_seq_len), json.dumps({**extra, "max_steps": 2}), str(out) + "-warm",
                            timeout=left)
                        left = args.budget_s - (time.perf_counter() - started)
                    r = run(TUNESMITH_VARIANT, str(folder / "train.jsonl"), str(model_dir), str(args.batch),
                            str(args.max_seq_len), json.dumps(extra), str(out), timeout=max(left, 30))
                r.update(shape=shape, variant=label, n_params=n_params)
                if "tokens_per_s" in r:
                    r["mfu"] = r["tokens_per_s"] * 4 * n_params / (DATASHEET_TFLOPS * 1e12)
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "stderr"}), flush=True)
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = [(f"{device_name}, torch {torch.__version__}; LoRA r=16 all projections, {args.rows} Bitext pairs "
              f"({tokens:,} tokens), {args.batch} examples per step, max_seq_len {args.max_seq_len}, 1 epoch, bf16; "
              f"bf16 matmul ceiling measured {ceiling:.0f} TFLOP/s\n"),
             "| shape | variant | real tokens/s | train s | max allocated MB | final loss | mean loss | MFU | vs (a) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["shape"]: r for r in results if r["variant"].startswith("(a)") and "tokens_per_s" in r}
    for r in results:
        if "tokens_per_s" not in r:
            table.append(f"| {r['shape']} | {r['variant']} | {r.get('error', '?')} | | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / base[r['shape']]['tokens_per_s']:.1f}x" if r["shape"] in base else "-"
        table.append(f"| {r['shape']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {r['seconds']:.1f} | "
                     f"{r['peak_mb']:,.0f} | {r['final_loss']:.3f} | {r['mean_loss']:.3f} | {100 * r['mfu']:.1f}% "
                     f"| {ratio} |")
    table.append("\nGoals (issue 4, one H100/H200): (c) >= 5x (a) on both shapes; >= 30% MFU on the 1B shape.")
    text = "\n".join(table)
    print("\n" + text)
    if args.out:
        (args.out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
