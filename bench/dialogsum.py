"""DialogSum end to end: fine-tune the embedded SmolLM2-135M-Instruct on 400 dialogues of the DialogSum dev set
and evaluate base vs fine-tuned on the other 100, through the normal pipeline (tunesmith.run_project).

Prints ROUGE-L and METEOR (and the other generation metrics) for base and fine-tuned, the forgetting check and
the wall time. The run directory (report.html, eval/) is kept under --workdir.

    nice -n 10 .venv/bin/python bench/dialogsum.py [--workdir /tmp/dialogsum] [--epochs 1] [--max-seq-len 512]
        [--max-new-tokens 64] [--eval-batch-size 16] [--train-rows 400] [--test-rows 100]

Data: ../shared/data/dialogsum/dialogsum.dev.jsonl ({"fname", "dialogue", "summary", "topic"}, 500 rows,
CC BY-NC-SA 4.0, see its SOURCE.txt). The first --train-rows rows train (10% of them split off as the eval set
watched during training), the last --test-rows rows are the held-out test set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CANDIDATES = [p / "shared" / "data" for p in list(HERE.parents)[1:4]]  # ../shared beside the checkout
INSTRUCTION = "Summarize the following dialogue in one or two sentences.\n\n"


def find_data(explicit: str | None) -> Path:
    for folder in ([Path(explicit)] if explicit else CANDIDATES):
        path = folder / "dialogsum" / "dialogsum.dev.jsonl"
        if path.is_file():
            return path
    sys.exit(f"DialogSum not found under {', '.join(map(str, CANDIDATES))}; pass --data-root")


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"prompt": INSTRUCTION + row["dialogue"], "completion": row["summary"]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/tunesmith-dialogsum")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--test-rows", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    args = parser.parse_args()

    from tunesmith.config import load_config
    from tunesmith.pipeline import run_project

    rows = [json.loads(line) for line in find_data(args.data_root).read_text(encoding="utf-8").splitlines()]
    if args.train_rows + args.test_rows > len(rows):
        sys.exit(f"only {len(rows)} rows: --train-rows + --test-rows must not exceed that")
    work = Path(args.workdir)
    write_rows(work / "train.jsonl", rows[: args.train_rows])
    write_rows(work / "test.jsonl", rows[len(rows) - args.test_rows:])
    project = {
        "name": "dialogsum", "task": "generation",
        "data": {"train": str(work / "train.jsonl"), "test": str(work / "test.jsonl"),
                 "max_seq_len": args.max_seq_len},
        "model": {"base": "smollm2-135m-instruct"},
        "train": {"epochs": args.epochs, "max_steps": args.max_steps, "micro_batch_size": 8,
                  "global_batch_size": 16},
        "eval": {"max_new_tokens": args.max_new_tokens, "batch_size": args.eval_batch_size},
        "output": str(work / "run"),
    }
    config = load_config(raw=project)
    started = time.time()
    metrics = run_project(config, force=True)
    wall = time.time() - started
    run = Path(config.output)
    card = json.loads((run / "run_card.json").read_text())
    forgetting_path = run / "eval" / "forgetting.json"
    forgetting = json.loads(forgetting_path.read_text()) if forgetting_path.is_file() else None

    print(f"\nDialogSum dev: {args.train_rows} train rows (10% watched as eval), {metrics['n']} test rows; "
          f"SmolLM2-135M-Instruct + LoRA r={config.method.r}, {args.epochs} epoch(s), max_seq_len "
          f"{args.max_seq_len}, max_new_tokens {args.max_new_tokens}")
    print(f"{'metric':<16}{'base':>10}{'fine-tuned':>12}{'delta':>10}")
    for name, tuned in metrics["finetuned"].items():
        base = metrics["base"].get(name, float("nan"))
        print(f"{name:<16}{base:>10.4f}{tuned:>12.4f}{tuned - base:>+10.4f}")
    if forgetting:
        print(f"forgetting: probe perplexity {forgetting['base_perplexity']:.2f} -> "
              f"{forgetting['finetuned_perplexity']:.2f} ({forgetting['change_pct']:+.1f}%)")
    print(f"wall time: {wall:.0f} s (train {card['wall_seconds']['train']} s, eval {card['wall_seconds']['eval']} s)"
          f"; train tokens/s {card['train'].get('train_tokens_per_s', float('nan')):.0f}")
    print(f"report: {run / 'report.html'}")


if __name__ == "__main__":
    main()
