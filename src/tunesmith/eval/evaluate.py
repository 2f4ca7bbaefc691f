"""`tunesmith eval RUN_DIR`: the base and the fine-tuned model answer the same held-out prompts; task metrics
for both, written to eval/metrics.json and eval/predictions.jsonl, with sidecars beside them:
eval/source.json (which data, whether it was watched in training, metrics left out and why),
eval/comparison.json (examples the fine-tuning improved most and hurt most) and eval/forgetting.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config import TASK_DEFAULTS, ProjectConfig
from tunesmith.console import console
from tunesmith.data.check import check, require_usable
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import ensure_chat_template, prompt_text, tokenize_example, with_system_prompt
from tunesmith.errors import RunDirError
from tunesmith.eval import likelihood
from tunesmith.eval.forgetting import forgetting_result, probe_paragraphs
from tunesmith.eval.generate import generate
from tunesmith.eval.metrics import MODEL_METRICS, check_names, compute, per_example
from tunesmith.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve
from tunesmith.runs import load_run_config
from tunesmith.train.loop import pick_device
from tunesmith.train.precision import resolve_compute

RANK_BY = "rougeL"  # per-example score that ranks improved / hurt examples (always computable, cheap)
EXAMPLES_LISTED = 5
_ROW_KEYS = ("messages", "text", "label", "labels", "target", "targets", "_source")


def _examples_from_run(run_dir: Path) -> list[Example]:
    path = run_dir / "data" / "test.jsonl"
    if not path.is_file():
        raise RunDirError(f"'{path}' is missing", f"train first: `tunesmith train PROJECT.yaml` writes {path}")
    examples = []
    for row in read_jsonl(path):
        file, line = row["_source"].rsplit(":", 1)
        meta = {k: v for k, v in row.items() if k not in _ROW_KEYS}
        examples.append(Example(row["messages"], file, int(line), meta))
    return examples


def references_of(example: Example) -> list[str]:
    """The answer, plus any alternatives a row lists in a `references` column (e.g. DialogSum's test set)."""
    extra = example.meta.get("references")
    refs = [example.reference]
    if isinstance(extra, list):
        refs += [r for r in extra if isinstance(r, str) and r.strip() and r not in refs]
    return refs


def metric_names(config: ProjectConfig) -> tuple[list[str], dict[str, str]]:
    """The metrics to compute and those left out with the reason. A metric asked for by name that cannot run is
    an error (before any generation); one chosen by `auto` is left out with a notice instead."""
    default = TASK_DEFAULTS[config.task]["eval.metrics"]
    # load_config writes the task's default list in place of "auto", so the default list counts as auto.
    auto = config.eval.metrics in ("auto", default)
    names = list(default if config.eval.metrics == "auto" else config.eval.metrics)
    check_names(names)
    unavailable: dict[str, str] = {}
    if "meteor" in names:
        from tunesmith.eval.wordnet import WordNetMissing, wordnet_reader

        try:
            wordnet_reader()
        except WordNetMissing as exc:
            if not auto:
                raise
            unavailable["meteor"] = exc.render().replace("\n", " ")
            names.remove("meteor")
            console.print(f"[yellow]meteor left out: {unavailable['meteor']}[/yellow]")
    return names, unavailable


def _load_models(config: ProjectConfig, run_dir: Path, device: str):
    """Return (fine-tuned model, base model path)."""
    adapter_dir = run_dir / "adapter"
    if not adapter_dir.is_dir():
        raise RunDirError(f"'{adapter_dir}' is missing: the run has not finished training",
                          "run `tunesmith train PROJECT.yaml` (or `--resume` an interrupted run) first")
    base_path = resolve(config.model.base).path
    # Generate in the dtype the model trained in: bf16 weights where the hardware computes bf16 natively.
    compute_ = resolve_compute(config.train.precision, config.model.dtype, config.method.kind, device)
    dtype = torch.bfloat16 if compute_.autocast else compute_.weights
    base = load_causal_lm(base_path, dtype).to(device)
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, adapter_dir).to(device), base_path
    return load_causal_lm(str(adapter_dir), dtype).to(device), base_path


def _measure(model, label: str, config: ProjectConfig, tokenizer, prompts, scored_rows, probe_rows) -> dict:
    """Everything one model contributes: its answers, teacher-forced scores on the references, probe NLL."""
    out = {"outputs": generate(model, tokenizer, prompts, config.eval.max_new_tokens, config.eval.batch_size,
                               label=label)}
    if scored_rows:
        out["likelihood"] = likelihood.score(model, scored_rows, config.eval.batch_size, tokenizer.pad_token_id)
    if probe_rows:
        out["probe"] = likelihood.score(model, probe_rows, config.eval.batch_size, tokenizer.pad_token_id)
    return out


def _scores(names: list[str], measured: dict, references: list[list[str]]) -> dict[str, float]:
    scores = compute(names, measured["outputs"], references)
    if "likelihood" in measured:
        found = measured["likelihood"]
        values = {"perplexity": found.perplexity, "token_accuracy": found.token_accuracy}
        scores.update({n: round(values[n], 6) for n in names if n in MODEL_METRICS})
    return {n: scores[n] for n in names if n in scores}  # the order asked for


def _comparison(rows: list[dict]) -> dict:
    deltas = [(row[f"finetuned_{RANK_BY}"] - row[f"base_{RANK_BY}"], i) for i, row in enumerate(rows)]
    entry = [{"index": i, "source": rows[i]["source"], "base": rows[i][f"base_{RANK_BY}"],
              "finetuned": rows[i][f"finetuned_{RANK_BY}"], "delta": round(d, 4)} for d, i in sorted(deltas)]
    return {"by": RANK_BY, "improved": [e for e in entry[::-1] if e["delta"] > 0][:EXAMPLES_LISTED],
            "hurt": [e for e in entry if e["delta"] < 0][:EXAMPLES_LISTED]}


def evaluate(config: ProjectConfig | None, run_dir: Path, data: str | None = None) -> dict:
    run_dir = Path(run_dir)
    config = config or load_run_config(run_dir)
    if config.task != "generation":  # classification, multilabel, regression: scored by the task's own module
        from tunesmith.eval.classification import evaluate_task

        return evaluate_task(config, run_dir, data)
    device = pick_device(config.train.device)
    stats_path = run_dir / "data" / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    if data is not None:
        examples = require_usable(check(data, config.data.format), "evaluation")
        source, watched = data, False
    else:
        examples = _examples_from_run(run_dir)
        source = stats.get("test_source", "data/test.jsonl")
        watched = config.data.test is None  # no test file: the test rows are the eval split watched in training
    if config.eval.max_examples:
        examples = examples[: config.eval.max_examples]
    names, unavailable = metric_names(config)
    tokenizer = load_tokenizer(str(run_dir / "adapter"))
    ensure_chat_template(tokenizer)
    prompts = [prompt_text(tokenizer, with_system_prompt(e.prompt_messages, config.data.system_prompt))
               for e in examples]
    references = [references_of(e) for e in examples]
    max_len = stats.get("max_seq_len") or config.data.max_seq_len or 1024
    scored_rows = []
    if any(n in MODEL_METRICS for n in names):
        tokenized = (tokenize_example(tokenizer, with_system_prompt(e.messages, config.data.system_prompt), max_len)
                     for e in examples)
        scored_rows = [t for t in tokenized if t is not None]
    probe_rows = likelihood.text_rows(tokenizer, probe_paragraphs(), max_len) \
        if config.eval.forgetting and config.eval.compare_base else []

    model, base_path = _load_models(config, run_dir, device)
    context = (tokenizer, prompts, scored_rows, probe_rows)
    base: dict | None = None
    if config.eval.compare_base:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                base = _measure(model, "base", config, *context)
            model = model.merge_and_unload()  # merged weights generate faster than base + adapter
        else:
            base_model = load_causal_lm(base_path, next(model.parameters()).dtype).to(device)
            base = _measure(base_model, "base", config, *context)
            del base_model
    tuned = _measure(model, "fine-tuned", config, *context)

    finetuned_scores = _scores(names, tuned, references)
    base_scores = _scores(names, base, references) if base else {}
    result = {"task": config.task, "n": len(examples), "base": base_scores, "finetuned": finetuned_scores,
              "delta": {k: round(finetuned_scores[k] - base_scores[k], 6) for k in base_scores}}
    tuned_each = per_example(names, tuned["outputs"], references)
    base_each = per_example(names, base["outputs"], references) if base else {}
    rows = []
    for i, example in enumerate(examples):
        row = {"source": f"{example.file}:{example.line}", "input": example.prompt_messages[-1]["content"],
               "reference": references[i][0], "finetuned_output": tuned["outputs"][i]}
        if len(references[i]) > 1:
            row["references"] = references[i]
        row.update({f"finetuned_{k}": round(v[i], 4) for k, v in tuned_each.items()})
        if base:
            row["base_output"] = base["outputs"][i]
            row.update({f"base_{k}": round(v[i], 4) for k, v in base_each.items()})
        rows.append(row)

    eval_dir = run_dir / "eval"
    write_jsonl_atomic(eval_dir / "predictions.jsonl", rows)
    write_json_atomic(eval_dir / "metrics.json", result)
    note = ("no data.test was given, so these metrics are on the eval split that was watched during training "
            "(eval loss, early stopping): they may be optimistic; give data.test for an untouched set") \
        if watched else None
    write_json_atomic(eval_dir / "source.json", {"data": source, "same_as_watched_eval": watched, "note": note,
                                                 "metrics_unavailable": unavailable,
                                                 "max_new_tokens": config.eval.max_new_tokens})
    for stale in ("comparison.json", "forgetting.json"):  # an earlier eval's sidecars must not outlive it
        (eval_dir / stale).unlink(missing_ok=True)
    if base:
        write_json_atomic(eval_dir / "comparison.json", _comparison(rows))
    if probe_rows and base:
        forgetting = forgetting_result(base["probe"].perplexity, tuned["probe"].perplexity,
                                       config.eval.forgetting_threshold_pct, tuned["probe"].tokens, len(probe_rows))
        write_json_atomic(eval_dir / "forgetting.json", forgetting)
        console.print(f"[yellow]warning: {forgetting['message']}[/yellow]" if forgetting["warning"]
                      else f"forgetting check: {forgetting['message']}")
    if watched:
        console.print(f"[yellow]note: {note}[/yellow]")
    console.print(f"evaluated {len(examples)} examples from {source} → {eval_dir / 'metrics.json'}")
    return result
