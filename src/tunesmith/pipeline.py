"""The stages chained: prepare data → train → eval → report. Each stage reads what the previous one wrote to
the run directory, so `tunesmith eval RUN` and `tunesmith report RUN` can be rerun alone."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tunesmith.config import ProjectConfig, dump_config
from tunesmith.console import console
from tunesmith.data.check import check, leakage_findings, require_usable, summarize
from tunesmith.data.clean import CleanOptions, CleanResult, clean_examples
from tunesmith.data.formats import GENERATION_FORMATS, Example, expand_paths
from tunesmith.data.split import split
from tunesmith.data.tokenize import ensure_chat_template, tokenize_example, with_system_prompt
from tunesmith.errors import ConfigError, RunDirError
from tunesmith.io import sha256_file, write_json_atomic, write_jsonl_atomic, write_text_atomic
from tunesmith.models.load import ResolvedModel, load_tokenizer, resolve


def _read(spec, config: ProjectConfig, role: str, removed: list[dict]) -> tuple[list[Example], str | None]:
    """Check a data spec (stop on unusable rows), then clean it as data.clean says; every removal is logged."""
    report = check(spec, config.data.format, config.data.columns, config.task)
    examples = require_usable(report, role)
    if report.format not in GENERATION_FORMATS and config.task == "generation":
        raise ConfigError(f"the {role} data is {report.mapping}, but task is generation, which needs "
                          "conversations or prompt/completion pairs",
                          "give prompt/completion (or chat) data, or map the columns with data.columns")
    console.print(f"{role} data: {report.rows} rows read as {report.mapping}")
    warnings = [f for f in report.findings if f.severity == "warning"]
    if warnings:
        console.print(f"[yellow]{role} data: {len(warnings)} warning(s) ({summarize(warnings)}); "
                      f"`tunesmith data check` lists them[/yellow]")
    options = CleanOptions(**config.data.clean.model_dump())
    result = CleanResult(rows_in=len(examples), rows_out=0)
    clean_examples(examples, options, result)
    if result.removed or result.changed:
        console.print(f"{role} data cleaned: {result.accounting()}")
    removed.extend({**row, "_split": role} for row in result.removed_rows)
    return result.examples, report.format


def _model_max_len(base_path: str) -> int | None:
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(base_path)
    return getattr(model_config, "max_position_embeddings", None)


def prepare_data(config: ProjectConfig, run_dir: Path, tokenizer, base_path: str) -> dict:
    """Read, check and split the data; tokenize it; write run_dir/data/. Returns the stats."""
    if config.data.train is None:
        raise ConfigError("data.train is not set", "add 'data: {train: path/to/train.jsonl}' to the project file "
                          "or pass --set data.train=FILE")
    removed: list[dict] = []
    train, fmt = _read(config.data.train, config, "train", removed)
    if config.data.eval is not None:
        held, _ = _read(config.data.eval, config, "eval", removed)
        eval_source = "data.eval"
    else:
        train, held = split(train, config.data.eval_fraction, config.train.seed)
        eval_source = f"{config.data.eval_fraction:.0%} of data.train (seed {config.train.seed})"
    if config.data.test is not None:
        test, _ = _read(config.data.test, config, "test", removed)
        test_source = "data.test"
    else:
        test, test_source = held, "the eval split (no data.test given: the same rows watched during training)"

    held_out = [("eval", held)] + ([("test", test)] if test is not held else [])  # test may be the eval split
    for role, rows in held_out:
        leaks = leakage_findings(train, rows)
        if leaks:
            console.print(f"[yellow]{len(leaks)} {role} row(s) repeat a train prompt (leakage), e.g. "
                          f"{leaks[0].file}:{leaks[0].line}: {leaks[0].message}[/yellow]")
    max_len = config.data.max_seq_len
    model_limit = _model_max_len(base_path)
    if model_limit and max_len > model_limit:
        console.print(f"data.max_seq_len {max_len} is above the model's limit; clipped to {model_limit}")
        max_len = model_limit

    stats: dict = {"format": fmt, "max_seq_len": max_len, "eval_source": eval_source, "test_source": test_source}
    data_dir = run_dir / "data"
    if config.task != "generation":  # text + label(s) / target: encoded for a sequence-classification head
        from tunesmith.data.encode import encode_splits

        stats.update(encode_splits(config.task, tokenizer, train, held, test, max_len, run_dir,
                                   config.train.normalize_targets))
    generation_splits = (("train", train), ("eval", held)) if config.task == "generation" else ()
    for role, examples in generation_splits:
        rows, truncated = [], 0
        for example in examples:
            tokens = tokenize_example(tokenizer, with_system_prompt(example.messages, config.data.system_prompt),
                                      max_len)
            if tokens is None:
                removed.append({**example.to_json(), "_split": role,
                                "_reason": f"no answer token left after truncation to {max_len} tokens"})
                continue
            truncated += tokens.truncated
            rows.append({"input_ids": tokens.input_ids, "labels": tokens.labels, "truncated": tokens.truncated})
        write_jsonl_atomic(data_dir / f"{role}.tokens.jsonl", rows)
        lengths = [len(r["input_ids"]) for r in rows]
        stats[role] = {"rows": len(examples), "kept": len(rows), "truncated": truncated,
                       "tokens": sum(lengths), "max_tokens": max(lengths, default=0),
                       "label_tokens": sum(sum(x != -100 for x in r["labels"]) for r in rows)}
        if truncated:
            console.print(f"[yellow]{role}: {truncated} row(s) truncated to {max_len} tokens[/yellow]")
    if not stats["train"]["kept"]:
        raise ConfigError(f"no train row has an answer token within data.max_seq_len={max_len}",
                          "raise data.max_seq_len or shorten the prompts")
    if removed:
        console.print(f"[yellow]{len(removed)} row(s) removed, reasons in {data_dir / 'removed.jsonl'}[/yellow]")
    stats["test"] = {"rows": len(test)}
    stats["removed"] = len(removed)
    write_jsonl_atomic(data_dir / "train.jsonl", [e.to_json() for e in train])
    write_jsonl_atomic(data_dir / "eval.jsonl", [e.to_json() for e in held])
    write_jsonl_atomic(data_dir / "test.jsonl", [e.to_json() for e in test])
    write_jsonl_atomic(data_dir / "removed.jsonl", removed)
    write_json_atomic(data_dir / "stats.json", stats)
    return stats


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("tunesmith", "torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _hardware() -> dict:
    import os

    import torch

    info = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _dataset_hashes(config: ProjectConfig) -> dict[str, str]:
    hashes = {}
    for spec in (config.data.train, config.data.eval, config.data.test):
        for path in expand_paths(spec):
            hashes[str(path)] = sha256_file(path)
    return hashes


def _claim_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Never silently overwrite a finished run; --force replaces it, --resume continues it."""
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"nothing to resume in '{run_dir}'", "drop --resume to start a new run")
        return
    # `tunesmith sweep` keeps its study and trials in <output>/sweep/: they are not this run, so they neither
    # block it nor go with --force (hours of trials must not vanish with a rerun of the plain project).
    own = [p for p in run_dir.iterdir() if p.name != "sweep"] if run_dir.exists() else []
    if own:
        if not force:
            raise RunDirError(f"run directory '{run_dir}' already holds a run",
                              "pass --force to replace it, --resume to continue it, or set another output "
                              "(--set output=runs/NEW)")
        for path in own:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train_project(config: ProjectConfig, resume: bool = False, force: bool = False,
                  on_eval: Callable[[int, float], bool] | None = None, ignore_plan: bool = False) -> dict:
    """`tunesmith train`: prepare the data and fit; returns the run card. on_eval: see train.loop.fit.
    Refuses a configuration `tunesmith plan` predicts will not fit in memory, unless ignore_plan."""
    from tunesmith.plan import enforce_plan
    from tunesmith.train.loop import fit

    if config.task != "generation":  # classification, multilabel, regression: their own loop
        from tunesmith.train.classify import fit_task as fit
    run_dir = Path(config.output)
    started = time.time()
    resolved: ResolvedModel = resolve(config.model.base)
    enforce_plan(config, resolved.path, ignore=ignore_plan)  # before the run directory or any weight is touched
    _claim_run_dir(run_dir, resume, force)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    tokenizer = load_tokenizer(resolved.path)
    if config.task == "generation":
        ensure_chat_template(tokenizer)
    stats = prepare_data(config, run_dir, tokenizer, resolved.path)
    summary = fit(config, run_dir, resolved.path, tokenizer, resume=resume, on_eval=on_eval)
    card = {"name": config.name, "task": config.task, "model": {"base": config.model.base, "path": resolved.path,
                                                                "source": resolved.source},
            "method": config.method.kind, "seed": config.train.seed, "datasets_sha256": _dataset_hashes(config),
            "rows": {k: stats[k] for k in ("train", "eval", "test")}, "removed_rows": stats["removed"],
            "train": summary, "versions": _versions(), "git_commit": _git_commit(), "hardware": _hardware(),
            "wall_seconds": {"train": round(time.time() - started, 1)}}
    write_json_atomic(run_dir / "run_card.json", card)
    return card


def run_project(config: ProjectConfig, resume: bool = False, force: bool = False, ignore_plan: bool = False) -> dict:
    """`tunesmith run`: train, evaluate base vs fine-tuned, write the report. Returns eval/metrics.json."""
    from tunesmith.eval.evaluate import evaluate
    from tunesmith.report import write_report

    started = time.time()
    card = train_project(config, resume=resume, force=force, ignore_plan=ignore_plan)
    run_dir = Path(config.output)
    eval_started = time.time()
    metrics = evaluate(config, run_dir)
    card["wall_seconds"]["eval"] = round(time.time() - eval_started, 1)
    card["wall_seconds"]["total"] = round(time.time() - started, 1)
    write_json_atomic(run_dir / "run_card.json", card)
    write_report(run_dir)
    return metrics


def read_run_card(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run_card.json").read_text())
