"""`tunesmith eval RUN_DIR`: the base and the fine-tuned model answer the same held-out prompts; task metrics
for both, written to eval/metrics.json and eval/predictions.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config import TASK_DEFAULTS, ProjectConfig
from tunesmith.console import console
from tunesmith.data.check import check, require_usable
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import ensure_chat_template, prompt_text, with_system_prompt
from tunesmith.errors import RunDirError
from tunesmith.eval.generate import generate
from tunesmith.eval.metrics import compute, per_example_rouge_l
from tunesmith.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve
from tunesmith.runs import load_run_config
from tunesmith.train.loop import pick_device
from tunesmith.train.precision import resolve_compute


def _examples_from_run(run_dir: Path) -> list[Example]:
    path = run_dir / "data" / "test.jsonl"
    if not path.is_file():
        raise RunDirError(f"'{path}' is missing", f"train first: `tunesmith train PROJECT.yaml` writes {path}")
    examples = []
    for row in read_jsonl(path):
        file, line = row["_source"].rsplit(":", 1)
        examples.append(Example(row["messages"], file, int(line)))
    return examples


def _load_models(config: ProjectConfig, run_dir: Path, device: str):
    """Return (fine-tuned model, a context manager giving the base model's behaviour, or None)."""
    adapter_dir = run_dir / "adapter"
    if not adapter_dir.is_dir():
        raise RunDirError(f"'{adapter_dir}' is missing: the run has not finished training",
                          "run `tunesmith train PROJECT.yaml` (or `--resume` an interrupted run) first")
    base_path = resolve(config.model.base).path
    # Generate in the dtype the model trained in: bf16 weights where the hardware computes bf16 natively.
    compute = resolve_compute(config.train.precision, config.model.dtype, config.method.kind, device)
    dtype = torch.bfloat16 if compute.autocast else compute.weights
    base = load_causal_lm(base_path, dtype).to(device)
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, adapter_dir).to(device), base_path
    return load_causal_lm(str(adapter_dir), dtype).to(device), base_path


def evaluate(config: ProjectConfig | None, run_dir: Path, data: str | None = None) -> dict:
    run_dir = Path(run_dir)
    config = config or load_run_config(run_dir)
    if config.task != "generation":  # classification, multilabel, regression: scored by the task's own module
        from tunesmith.eval.classification import evaluate_task

        return evaluate_task(config, run_dir, data)
    device = pick_device(config.train.device)
    if data is not None:
        examples = require_usable(check(data, config.data.format), "evaluation")
        source = data
    else:
        examples = _examples_from_run(run_dir)
        source = json.loads((run_dir / "data" / "stats.json").read_text())["test_source"]
    if config.eval.max_examples:
        examples = examples[: config.eval.max_examples]
    tokenizer = load_tokenizer(str(run_dir / "adapter"))
    ensure_chat_template(tokenizer)
    prompts = [prompt_text(tokenizer, with_system_prompt(e.prompt_messages, config.data.system_prompt))
               for e in examples]
    references = [e.reference for e in examples]
    names = list(config.eval.metrics) if config.eval.metrics != "auto" else \
        TASK_DEFAULTS[config.task]["eval.metrics"]
    model, base_path = _load_models(config, run_dir, device)
    args = (tokenizer, prompts, config.eval.max_new_tokens, config.eval.batch_size)

    base_outputs: list[str] | None = None
    if config.eval.compare_base:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                base_outputs = generate(model, *args, label="base")
            model = model.merge_and_unload()  # merged weights generate faster than base + adapter
        else:
            base_outputs = generate(load_causal_lm(base_path, next(model.parameters()).dtype).to(device), *args,
                                    label="base")
    tuned_outputs = generate(model, *args, label="fine-tuned")

    finetuned = compute(names, tuned_outputs, references)
    base = compute(names, base_outputs, references) if base_outputs is not None else {}
    result = {"task": config.task, "n": len(examples), "base": base, "finetuned": finetuned,
              "delta": {k: round(finetuned[k] - base[k], 6) for k in base}}
    tuned_scores = per_example_rouge_l(tuned_outputs, references)
    base_scores = per_example_rouge_l(base_outputs, references) if base_outputs is not None else None
    rows = []
    for i, example in enumerate(examples):
        row = {"source": f"{example.file}:{example.line}", "input": example.prompt_messages[-1]["content"],
               "reference": references[i], "finetuned_output": tuned_outputs[i],
               "finetuned_rougeL": round(tuned_scores[i], 4)}
        if base_scores is not None:
            row.update(base_output=base_outputs[i], base_rougeL=round(base_scores[i], 4))
        rows.append(row)
    eval_dir = run_dir / "eval"
    write_jsonl_atomic(eval_dir / "predictions.jsonl", rows)
    write_json_atomic(eval_dir / "metrics.json", result)
    write_json_atomic(eval_dir / "source.json", {"data": source})
    console.print(f"evaluated {len(examples)} examples from {source} → {eval_dir / 'metrics.json'}")
    return result
