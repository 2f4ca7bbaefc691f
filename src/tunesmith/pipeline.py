"""The stages chained: prepare data → train → eval → report. Each stage reads what the previous one wrote to
the run directory, so `tunesmith eval RUN` and `tunesmith report RUN` can be rerun alone."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from collections import Counter
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
from tunesmith.models.load import ResolvedModel, check_weight_files, load_tokenizer, resolve, warn_remote_code
from tunesmith.redact import redact, redact_text
from tunesmith.train.resume import check_resume_config


def _read(spec, config: ProjectConfig, role: str, removed: list[dict],
          pii_counts: Counter) -> tuple[list[Example], str | None]:
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
    options = CleanOptions(**{**config.data.clean.model_dump(), "redact_pii": _pii_mode(config)})
    result = CleanResult(rows_in=len(examples), rows_out=0)
    if pii_policy(config) == "warn":
        flagged = _rows_with_pii(examples)
        if flagged:
            console.print(f"[yellow]{role} data: {flagged} row(s) hold personal data (e-mail, phone, card, "
                          "IBAN, ...), kept as they are (data.pii: warn); data.pii: redact masks them[/yellow]")
            result.changed["pii_flagged"] += flagged
    clean_examples(examples, options, result)
    if result.removed or result.changed:
        console.print(f"{role} data cleaned: {result.accounting()}")
    removed.extend({**row, "_split": role} for row in result.removed_rows)
    pii_counts.update({k: v for k, v in result.changed.items() if k.startswith("pii_")})
    return result.examples, report.format


def pii_policy(config: ProjectConfig) -> str:
    """data.pii, or the policy data.clean.redact_pii implies (the older key): redact | drop | warn | off."""
    if config.data.pii is not None:
        return config.data.pii
    return {"mask": "redact", "drop": "drop", "off": "off"}[config.data.clean.redact_pii]


def _pii_mode(config: ProjectConfig) -> str:
    return {"redact": "mask", "drop": "drop", "warn": "off", "off": "off"}[pii_policy(config)]


def _rows_with_pii(examples: list[Example]) -> int:
    from tunesmith.data.content import scan_text

    return sum(any(issue.code.startswith("pii_") for _, text in e.texts() for issue in scan_text(text))
               for e in examples)


def _model_max_len(base_path: str, trust_remote_code: bool = False) -> int | None:
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    return getattr(model_config, "max_position_embeddings", None)


def prepare_data(config: ProjectConfig, run_dir: Path, tokenizer, base_path: str) -> dict:
    """Read, check and split the data; tokenize it; write run_dir/data/. Returns the stats."""
    if config.data.train is None:
        raise ConfigError("data.train is not set", "add 'data: {train: path/to/train.jsonl}' to the project file "
                          "or pass --set data.train=FILE")
    removed: list[dict] = []
    pii_counts: Counter = Counter()
    train, fmt = _read(config.data.train, config, "train", removed, pii_counts)
    if config.data.eval is not None:
        held, _ = _read(config.data.eval, config, "eval", removed, pii_counts)
        eval_source = "data.eval"
    else:
        train, held = split(train, config.data.eval_fraction, config.train.seed)
        eval_source = f"{config.data.eval_fraction:.0%} of data.train (seed {config.train.seed})"
    if config.data.test is not None:
        test, _ = _read(config.data.test, config, "test", removed, pii_counts)
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
    model_limit = _model_max_len(base_path, config.model.trust_remote_code)
    if model_limit and max_len > model_limit:
        console.print(f"data.max_seq_len {max_len} is above the model's limit; clipped to {model_limit}")
        max_len = model_limit

    stats: dict = {"format": fmt, "max_seq_len": max_len, "eval_source": eval_source, "test_source": test_source}
    data_dir = run_dir / "data"
    if is_generative(config):  # text + label as chat rows: the label is the answer (data/genclass.py)
        from tunesmith.data import genclass

        stats.update(genclass.prepare(tokenizer, train, held, test, max_len, run_dir, config.data.system_prompt))
    elif config.task != "generation":  # text + label(s) / target: encoded for a sequence-classification head
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
    stats["pii"] = {"policy": pii_policy(config), "rows_masked": pii_counts["pii_masked"],
                    "rows_dropped": sum(r.get("_reason") == "pii" for r in removed),
                    "rows_flagged": pii_counts["pii_flagged"]}
    write_jsonl_atomic(data_dir / "train.jsonl", [e.to_json() for e in train])
    write_jsonl_atomic(data_dir / "eval.jsonl", [e.to_json() for e in held])
    write_jsonl_atomic(data_dir / "test.jsonl", [e.to_json() for e in test])
    write_jsonl_atomic(data_dir / "removed.jsonl", removed)
    write_json_atomic(data_dir / "stats.json", stats)
    return stats


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("tunesmith", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors",
                    "numpy", "pydantic"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _git_commit(folder: str | None) -> dict | None:
    """The commit of the git checkout holding the project file, and whether it had uncommitted changes."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", folder or ".", *args], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        commit = git("rev-parse", "HEAD")
        return {"commit": commit, "dirty": bool(git("status", "--porcelain"))} if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def _hardware() -> dict:
    import os

    import torch

    info = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "processor": platform.processor(),
            "torch_threads": torch.get_num_threads()}
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
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where a parent folder should be, or a read-only disk
        raise RunDirError(f"cannot create the output folder '{run_dir}': {exc.strerror or exc}",
                          "set output to a folder you can write to (--set output=runs/NAME)") from None


def train_project(config: ProjectConfig, resume: bool = False, force: bool = False,
                  on_eval: Callable[[int, float], bool] | None = None, ignore_plan: bool = False) -> dict:
    """`tunesmith train`: prepare the data and fit; returns the run card. on_eval: see train.loop.fit.
    Refuses a configuration `tunesmith plan` predicts will not fit in memory, unless ignore_plan."""
    from tunesmith.plan import enforce_plan
    from tunesmith.train.loop import fit, small_onednn_cache

    small_onednn_cache()  # before the plan's GEMM benchmark, the process's first matrix product
    decoder = config.task == "generation" or is_generative(config)  # trained by train/loop.fit
    if not decoder:  # classification with a head, multilabel, regression: their own loop
        from tunesmith.train.classify import fit_task as fit
    run_dir = Path(config.output)
    started = time.time()
    resolved: ResolvedModel = resolve(config.model.base)
    enforce_plan(config, resolved.path, ignore=ignore_plan)  # before the run directory or any weight is touched
    check_weight_files(resolved.path, config.model.allow_pickle)  # before anything is written
    warn_remote_code(resolved.path, config.model.trust_remote_code)
    if is_generative(config):
        from tunesmith.models.genclass import require_decoder

        require_decoder(resolved.path, config.model.base, config.model.trust_remote_code)
    # Under torchrun only rank 0 prepares the run directory; the others wait for it, then train their share.
    from tunesmith.train import distributed
    from tunesmith.train.loop import pick_device

    device = pick_device(config.train.device)
    d = distributed.setup(device, config.train.distributed, config.method.kind)
    if decoder and True in (config.train.liger, config.train.cpu_kernels):
        # refuse before the data are prepared and the weights loaded (and build the CPU kernels now)
        from tunesmith.train.precision import resolve_compute

        compute = resolve_compute(config.train.precision, config.model.dtype, config.method.kind, device)
        if config.train.liger is True:
            from transformers import AutoConfig

            from tunesmith.train import liger

            model_type = AutoConfig.from_pretrained(resolved.path, trust_remote_code=config.model.trust_remote_code)
            liger.resolve(True, device, model_type.model_type, compute.autocast)
        if config.train.cpu_kernels is True:
            from tunesmith.train import cpu_kernels

            cpu_kernels.resolve(True, device, config.method.kind == "lora", compute.autocast, config.train.compile)
    if d.enabled and not decoder:
        raise ConfigError(f"task '{config.task}' trains in one process in this version (its loop is not "
                          "distributed yet)", "run it without torchrun / tunesmith launch")
    if d.main:
        _claim_run_dir(run_dir, resume, force)
        if resume:
            check_resume_config(run_dir, config, force)
        write_text_atomic(run_dir / "config.yaml", redact_text(dump_config(config)))
    tokenizer = load_tokenizer(resolved.path, config.model.trust_remote_code)
    if decoder:
        ensure_chat_template(tokenizer)
    stats = prepare_data(config, run_dir, tokenizer, resolved.path) if d.main else None
    distributed.barrier(d)
    summary = fit(config, run_dir, resolved.path, tokenizer, resume=resume, on_eval=on_eval, force=force)
    if not d.main:
        distributed.teardown(d)
        return {"train": summary, "rank": d.rank}
    card = {"name": config.name, "task": config.task, "model": {"base": config.model.base, "path": resolved.path,
                                                                "source": resolved.source},
            "method": config.method.kind, "seed": config.train.seed, "datasets_sha256": _dataset_hashes(config),
            "rows": {k: stats[k] for k in ("train", "eval", "test")}, "removed_rows": stats["removed"],
            "train": summary, "versions": _versions(), "git": _git_commit(config._source_dir),
            "hardware": _hardware(), "pii": stats["pii"], "adapter_step": summary["adapter_step"],
            "wall_seconds": {"train": round(time.time() - started, 1)}}
    card["git_commit"] = (card["git"] or {}).get("commit")
    card = redact(card)
    write_json_atomic(run_dir / "run_card.json", card)
    distributed.teardown(d)
    return card


def run_project(config: ProjectConfig, resume: bool = False, force: bool = False,
                ignore_plan: bool = False) -> dict | None:
    """`tunesmith run`: train, evaluate base vs fine-tuned, write the report. Returns eval/metrics.json."""
    from tunesmith.eval.evaluate import evaluate
    from tunesmith.report import write_report

    started = time.time()
    card = train_project(config, resume=resume, force=force, ignore_plan=ignore_plan)
    if card["train"].get("interrupted"):
        return None  # stopped by a signal: evaluation waits for `--resume`
    if card.get("rank"):
        return {}  # a torchrun rank other than 0: rank 0 evaluates and reports
    run_dir = Path(config.output)
    eval_started = time.time()
    metrics = evaluate(config, run_dir)
    card["wall_seconds"]["eval"] = round(time.time() - eval_started, 1)
    card["wall_seconds"]["total"] = round(time.time() - started, 1)
    write_json_atomic(run_dir / "run_card.json", card)
    write_report(run_dir)
    return metrics


def is_generative(config: ProjectConfig) -> bool:
    """Generative classification: a decoder writes the label (model.classifier: generative)."""
    return config.task == "classification" and config.model.classifier == "generative"


def read_run_card(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run_card.json").read_text())
