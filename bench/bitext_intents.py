"""Intent classification on the Bitext customer-support data with tunesmith's defaults: minilm-l6 with LoRA and
with full fine-tuning. Prints macro-F1 and accuracy on a held-out test split, and the wall time.

    PYTHONPATH=src nice -n 10 python bench/bitext_intents.py [--methods lora,full] [--out /tmp/bitext]

The CSV (../shared/data/bitext_customer_support/, 4,514 rows, 27 intents) is split once, stratified by intent
and with near-duplicate instructions kept on one side (tunesmith.data.split), 85% train / 15% test; the project
file sets only the task, the data, the column mapping and the method, so every other value is a default.
Wall times are on whatever CPU runs it; on the shared 2-core development machine other jobs ran alongside.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bitext_customer_support" / \
    "Bitext_Sample_Customer_Support_Training_Dataset.csv"
FALLBACK = Path("/work/shared/data/bitext_customer_support/Bitext_Sample_Customer_Support_Training_Dataset.csv")


def write_splits(csv: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    from tunesmith.data.check import check
    from tunesmith.data.split import split_ratios
    from tunesmith.io import write_jsonl_atomic

    report = check(str(csv), task="classification", columns={"input": "instruction", "label": "intent"},
                   quality=False)
    train, test = split_ratios(report.examples, [0.85, 0.15], seed)
    paths = out / "train.jsonl", out / "test.jsonl"
    for path, rows in zip(paths, (train, test)):
        write_jsonl_atomic(path, [{"text": e.text, "label": e.label} for e in rows])
    return paths


def run(method: str, train: Path, test: Path, out: Path, extra: list[str]) -> dict:
    from tunesmith.config import load_config
    from tunesmith.pipeline import run_project

    project = out / f"bitext-{method}.yaml"
    project.write_text(f"""name: bitext-{method}
task: classification
data:
  train: {train}
  test: {test}
model:
  base: minilm-l6
method:
  kind: {method}
output: {out / ('run-' + method)}
""")
    config = load_config(project, extra)
    started = time.time()
    metrics = run_project(config, force=True)
    wall = time.time() - started
    card = json.loads((Path(config.output) / "run_card.json").read_text())
    return {"method": method, "lr": config.train.lr, "epochs": config.train.epochs, "n_test": metrics["n"],
            "f1_macro": metrics["finetuned"]["f1_macro"], "accuracy": metrics["finetuned"]["accuracy"],
            "base_f1_macro": metrics["base"].get("f1_macro"), "train_s": card["train"]["train_seconds"],
            "wall_s": round(wall, 1), "trainable": card["train"]["trainable_parameters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--out", default="/tmp/tunesmith-bitext")
    parser.add_argument("--set", action="append", default=[], help="extra project overrides, key=value")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 on a CPU shared with other jobs, where spinning "
                             "OpenMP threads cost 5x")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    csv = DATA if DATA.is_file() else FALLBACK
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = write_splits(csv, out)
    results = [run(m, train, test, out, args.set) for m in args.methods.split(",")]
    print("\n| method | lr | epochs | trainable params | test rows | macro-F1 | accuracy | prior macro-F1 | "
          "train s | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['lr']:g} | {r['epochs']:g} | {r['trainable']:,} | {r['n_test']} | "
              f"{r['f1_macro']:.4f} | {r['accuracy']:.4f} | {r['base_f1_macro']:.4f} | {r['train_s']:.0f} | "
              f"{r['wall_s']:.0f} |")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
