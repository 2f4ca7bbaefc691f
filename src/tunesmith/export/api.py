"""`tunesmith export RUN_DIR --format F -o OUT`: write the artifact into a temporary folder beside OUT, load it
back the way its users will, check parity with the fine-tuned model, and only then move it to OUT. A failed
check (or a crash) leaves nothing under OUT."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tunesmith.console import progress_bar
from tunesmith.errors import ConfigError
from tunesmith.export import parity
from tunesmith.export.formats import FORMATS, Format, Job
from tunesmith.export.source import Reference, RunSource, open_run, run_tokenizer
from tunesmith.io import write_json_atomic

DEFAULT_GGUF_TYPE = "f16"
PARITY_FILE = "parity.json"


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _options(fmt: str, spec: Format, dtype: str | None, gguf_type: str | None) -> tuple[str | None, str | None]:
    from tunesmith.export.gguf_llama import GGUF_TYPES
    from tunesmith.export.hf import DTYPES

    if dtype not in (None, "auto") and spec.option != "dtype":
        raise ConfigError(f"--dtype applies to --format merged, not {fmt}",
                          "GGUF exports take --gguf-type; the adapter keeps the dtype it was trained in")
    if gguf_type is not None and spec.option != "gguf_type":
        raise ConfigError(f"--gguf-type applies to --format gguf and ollama, not {fmt}", "drop --gguf-type")
    if dtype not in (None, "auto", *DTYPES):
        raise ConfigError(f"unknown --dtype '{dtype}'", f"use auto or one of: {', '.join(DTYPES)}")
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise ConfigError(f"unknown --gguf-type '{gguf_type}'", f"use one of: {', '.join(GGUF_TYPES)}")
    if spec.option == "dtype":
        return dtype or "auto", None
    if spec.option == "gguf_type":
        return None, gguf_type or DEFAULT_GGUF_TYPE
    return None, None


def _run_examples(source: RunSource) -> list:
    from tunesmith.data.formats import Example
    from tunesmith.io import read_jsonl

    path = source.run_dir / "data" / "test.jsonl"
    if not path.is_file():
        return []
    rows = read_jsonl(path)[: parity.RUN_PROMPTS]
    space = _generative_space(source.run_dir)
    if space is not None:  # text + label rows: the conversation the generative classifier was trained on
        from tunesmith.data.genclass import chat

        return [Example(chat(space["system_prompt"], row["text"], row["label"]), str(path), i + 1)
                for i, row in enumerate(rows) if isinstance(row.get("text"), str) and row.get("label")]
    return [Example(row["messages"], str(path), i + 1) for i, row in enumerate(rows) if row.get("messages")]


def _generative_space(run_dir: Path) -> dict | None:
    """labels.json of a generative classification run (None for any other run)."""
    from tunesmith.data.encode import LABELS_FILE

    path = Path(run_dir) / LABELS_FILE
    space = json.loads(path.read_text()) if path.is_file() else None
    return space if space and space.get("classifier") == "generative" else None


def _job(run_dir: Path, fmt: str, dtype: str | None, gguf_type: str | None) -> tuple[Format, Job]:
    from tunesmith.export.hf import merged_dtype

    spec = _format(fmt)
    dtype, gguf_type = _options(fmt, spec, dtype, gguf_type)
    source = open_run(run_dir)
    job = Job(source, run_tokenizer(source), Reference(source),
              dtype=merged_dtype(dtype, source) if dtype else None, gguf_type=gguf_type)
    spec.check(job)
    return spec, job


def _check(fmt: str, spec: Format, job: Job, folder: Path, write: bool, progress, task) -> dict:
    """Reference outputs, (the write), rounded reference, the artifact's outputs; the parity report."""
    chats = parity.conversations(job.source, _run_examples(job.source))
    ids = parity.encode(job.tokenizer, parity.render(job.tokenizer, chats))
    progress.update(task, info="loading the fine-tuned model (fp32)")
    job.reference.load()
    progress.update(task, advance=1, info="running the fine-tuned model on the parity prompts")
    rounding = spec.rounding(job)
    # With rounding, the unrounded model is compared by logits only (top-1 agreement, |Δ|); the greedy outputs
    # are compared against the rounded reference, which must match exactly.
    fp32_outputs = parity.outputs(job.reference.model, ids, job.tokenizer, generate=rounding is None)
    if write:
        progress.update(task, advance=1, info=f"writing the {fmt} export")
        spec.write(job, folder)
    exact_reference = fp32_outputs
    if rounding is not None:
        progress.update(task, info="running the reference with the export's rounded weights")
        model = job.reference.merged()
        rounding(model)
        exact_reference = parity.outputs(model, ids, job.tokenizer)
    job.reference.release()
    progress.update(task, advance=1, info="loading the export back")
    model, tokenizer = spec.load(job, folder)
    progress.update(task, advance=1, info="running the export on the parity prompts")
    got = parity.outputs(model, ids, job.tokenizer)
    del model
    exact = parity.compare(exact_reference, got)
    vs_fp32 = parity.compare(fp32_outputs, got) if rounding is not None else None
    tokens = parity.tokenizer_check(job.tokenizer, tokenizer, chats)
    lossy = spec.lossy(job)
    failures = parity.judge(exact, tokens, vs_fp32, lossy)
    progress.update(task, advance=1, info="done")
    return parity.report(fmt, job.options(), exact, tokens, vs_fp32, lossy, failures)


def _failure(fmt: str, result: dict, out: Path) -> parity.ParityError:
    lossy_only = all(f.startswith("top-1 agreement") for f in result["failures"])
    fix = ("export with --gguf-type f16, which keeps the model's behaviour; q8_0 rounds this model too coarsely"
           if lossy_only else "this is an exporter bug or a model layout it does not handle: export with "
           "--format merged or adapter instead, and report the numbers above")
    return parity.ParityError(f"the {fmt} export does not reproduce the fine-tuned model: "
                              f"{'; '.join(result['failures'])}; nothing was written to '{out}'", fix)


def _share(folder: Path) -> None:
    """Exports are meant to be served and copied: give them the umask's usual modes, not the owner-only ones
    of temporary files (mkdtemp makes 0700 folders)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _install(folder: Path, out: Path) -> None:
    """Put the checked export under its final name; an older export there (with --force) goes only after."""
    _share(folder)
    trash = None
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / out.name)
    os.replace(folder, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def export_run(run_dir: str | Path, fmt: str, out: str | Path, dtype: str | None = None,
               gguf_type: str | None = None, force: bool = False) -> dict:
    """Export a run, check parity, and return the parity report (also written to OUT/parity.json)."""
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"'{out}' already exists", "pass --force to replace it, or choose another -o folder")
    space = _generative_space(Path(run_dir))
    if _task(Path(run_dir)) != "generation" and space is None:
        return _export_classifier(Path(run_dir), fmt, out)
    spec, job = _job(Path(run_dir), fmt, dtype, gguf_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        with progress_bar("info") as progress:
            task = progress.add_task(f"export {fmt}", total=5, info="")  # the five steps of _check
            result = _check(fmt, spec, job, folder, True, progress, task)
        if not result["passed"]:
            raise _failure(fmt, result, out)
        write_json_atomic(folder / PARITY_FILE, result)
        if space is not None:  # generative classifier: the labels and prompt, so the export reloads as one
            stats = json.loads((Path(run_dir) / "data" / "stats.json").read_text())
            write_json_atomic(folder / "labels.json", {**space, "max_seq_len": stats["max_seq_len"]})
        _install(folder, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when installed
    return result


def _task(run_dir: Path) -> str:
    from tunesmith.runs import load_run_config

    return load_run_config(run_dir).task


def _export_classifier(run_dir: Path, fmt: str, out: Path) -> dict:
    """Classification, multilabel and regression runs: export/classifier.py, the same temp-folder discipline."""
    from tunesmith.export import classifier

    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        classifier.write(run_dir, fmt, folder)
        result = classifier.check(run_dir, fmt, folder)
        if not result["passed"]:
            raise classifier.failure(fmt, result, out)
        write_json_atomic(folder / PARITY_FILE, result)
        _install(folder, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def verify_export(run_dir: str | Path, folder: str | Path) -> dict:
    """Check an existing export folder against its run again (format and options from its parity.json);
    returns the report without raising when it fails."""
    folder = Path(folder)
    written = json.loads((folder / PARITY_FILE).read_text())
    spec, job = _job(Path(run_dir), written["format"], written.get("dtype"), written.get("gguf_type"))
    with progress_bar("info") as progress:
        task = progress.add_task(f"verify {written['format']}", total=4, info="")  # _check without the write
        return _check(written["format"], spec, job, folder, False, progress, task)
