"""Intent classification on a small Bitext subset with generative classification (model.classifier: generative,
SmolLM2-135M-Instruct, LoRA defaults): the zero-shot base decoder against the fine-tuned one, same prompt, same
constrained decoding. Prints accuracy, macro-F1, the rows, steps and wall time.

    PYTHONPATH=src nice -n 10 python bench/bitext_generative.py [--train-per-intent 12] [--test-per-intent 4]

The split is bench/bitext_intents.py's (85/15, stratified, near-duplicates on one side); from it the first
N train rows and M test rows of each intent are taken, so the 27 classes stay balanced.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from bitext_intents import DATA, FALLBACK, write_splits


def per_intent(path: Path, n: int) -> list[dict]:
    taken: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if len(taken[row["label"]]) < n:
            taken[row["label"]].append(row)
    return [row for rows in zip(*taken.values()) for row in rows]  # interleaved: batches mix the intents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-intent", type=int, default=12)
    parser.add_argument("--test-per-intent", type=int, default=4)
    parser.add_argument("--out", default="/tmp/tunesmith-bitext-generative")
    parser.add_argument("--set", action="append", default=[], help="extra project overrides, key=value")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tunesmith.config import load_config
    from tunesmith.io import write_jsonl_atomic
    from tunesmith.pipeline import run_project

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = write_splits(DATA if DATA.is_file() else FALLBACK, out)
    small_train, small_test = out / "train-small.jsonl", out / "test-small.jsonl"
    write_jsonl_atomic(small_train, per_intent(train, args.train_per_intent))
    write_jsonl_atomic(small_test, per_intent(test, args.test_per_intent))
    project = out / "bitext-generative.yaml"
    project.write_text(f"""name: bitext-generative
task: classification
data:
  train: {small_train}
  test: {small_test}
model:
  classifier: generative
output: {out / 'run'}
""")
    config = load_config(project, args.set)
    started = time.time()
    metrics = run_project(config, force=True)
    wall = time.time() - started
    card = json.loads((Path(config.output) / "run_card.json").read_text())
    stats = json.loads((Path(config.output) / "data" / "stats.json").read_text())
    result = {"train_rows": stats["train"]["kept"], "eval_rows": stats["eval"]["kept"], "test_rows": metrics["n"],
              "prompt_tokens_mean": round(stats["train"]["tokens"] / max(stats["train"]["kept"], 1), 1),
              "steps": card["train"]["steps"], "epochs": config.train.epochs, "lr": config.train.lr,
              "base": metrics["base"], "finetuned": metrics["finetuned"], "train_s": card["train"]["train_seconds"],
              "eval_s": card["wall_seconds"].get("eval"), "wall_s": round(wall, 1)}
    print("\n| model | test rows | accuracy | macro-F1 |\n|---|---:|---:|---:|")
    for side in ("base", "finetuned"):
        print(f"| {side} | {metrics['n']} | {metrics[side]['accuracy']:.4f} | {metrics[side]['f1_macro']:.4f} |")
    print(f"\ntrain rows {result['train_rows']} (+{result['eval_rows']} eval), {result['steps']} steps "
          f"({result['epochs']:g} epochs, lr {result['lr']:g}), mean row {result['prompt_tokens_mean']} tokens; "
          f"train {result['train_s']:.0f} s, eval {result['eval_s']} s, wall {result['wall_s']:.0f} s")
    (out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
