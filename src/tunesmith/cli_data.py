"""`tunesmith data check|clean|stats|split`: the data doctor's verbs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.console import console
from tunesmith.errors import ConfigError

data_app = typer.Typer(help="Check, clean, profile and split data sets before training.", no_args_is_help=True)

Files = Annotated[list[Path], typer.Argument(help="Data files (JSONL, JSON, CSV, TSV, Parquet) or folders.")]
FormatOption = Annotated[str, typer.Option("--format", help="auto, chat, sharegpt, alpaca, prompt_completion, "
                                                            "text_label, text_labels, text_target or text.")]
ColumnOption = Annotated[list[str] | None, typer.Option("--column", help="Map a role to a column, e.g. "
                                                                          "--column input=ticket (repeatable).")]
TaskOption = Annotated[str, typer.Option(help="generation, classification, multilabel or regression: decides "
                                              "how text+label files are read.")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Count tokens with this model's tokenizer "
                                                                 "(embedded name or folder).")]
MaxLenOption = Annotated[int, typer.Option(help="max_seq_len to check lengths against (with --model).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
SHOWN_PER_CODE = 10


def _columns(pairs: list[str] | None) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for pair in pairs or []:
        role, _, column = pair.partition("=")
        if role not in ("input", "output", "label", "labels", "target") or not column:
            raise ConfigError(f"--column '{pair}' is not role=column", "roles: input, output, label, labels, "
                              "target; e.g. --column input=ticket --column label=team (several regression "
                              "targets: --column target=quality,speed)")
        # several regression targets, as data.columns {target: [quality, speed]} in a project file
        out[role] = [c.strip() for c in column.split(",")] if role == "target" and "," in column else column
    return out


def _tokenizer(model: str | None):
    if model is None:
        return None
    from tunesmith.console import quiet_libraries
    from tunesmith.models.load import load_tokenizer, resolve

    quiet_libraries()
    return load_tokenizer(resolve(model).path)


@data_app.command("check")
def check_cmd(files: Files, format_: FormatOption = "auto", column: ColumnOption = None,
              task: TaskOption = "generation", model: ModelOption = None, max_seq_len: MaxLenOption = 1024,
              as_json: JsonOption = False):
    """Report every problem row by row (file:line  field  problem → fix), grouped and counted.

    Files named *test*, *eval*, *valid* or *dev* are also checked for leakage from the others. Exit 1 when a row
    cannot be used; 0 with warnings only."""
    from tunesmith.data.check import scan
    from tunesmith.data.formats import expand_paths

    # Streamed: rows are checked chunk by chunk and findings come back in file/line order from a log that
    # spills to disk, so a check of any size holds neither all rows nor all findings.
    report = scan(expand_paths([str(f) for f in files]), format_, _columns(column), task, _tokenizer(model),
                  max_seq_len)
    log = report.findings
    try:
        if as_json:
            _print_json_report(report)
        else:
            _print_report(report)
    finally:
        log.close()
    raise typer.Exit(1 if log.errors else 0)


def _print_json_report(report) -> None:
    """One JSON object, its findings array written one finding at a time."""
    import sys
    from dataclasses import asdict

    head = {"rows": report.rows, "usable": report.usable, "format": report.format, "mapping": report.mapping}
    out = sys.stdout
    out.write(json.dumps(head, ensure_ascii=False, indent=2)[:-2] + ',\n  "findings": [')
    for i, finding in enumerate(report.findings.sorted()):
        out.write(("," if i else "") + "\n    " + json.dumps(asdict(finding), ensure_ascii=False))
    out.write("\n  ]\n}\n")


def _print_report(report) -> None:
    from tunesmith.data.check import summarize_counts

    log = report.findings
    console.print(f"read as {report.mapping}")
    shown: dict[tuple[str, str], list] = defaultdict(list)
    for finding in log.sorted():
        listed = shown[(finding.severity, finding.code)]
        if len(listed) < SHOWN_PER_CODE:
            listed.append(finding)
    for key in sorted(log.counts, key=lambda k: (k[0] != "error", k[1])):
        severity, code = key
        style = "red" if severity == "error" else "yellow"
        console.print(f"\n[{style}]{severity}[/{style}] [bold]{code}[/bold] ({log.counts[key]})")
        for finding in shown[key]:
            console.print("  " + escape(finding.render()))
        if log.counts[key] > SHOWN_PER_CODE:
            console.print(f"  ... and {log.counts[key] - SHOWN_PER_CODE} more (--json lists all)")
    summary = f": {summarize_counts(log.counts)}" if len(log) else ""
    console.print(f"\n{report.rows} rows, {report.usable} usable, {log.errors} error(s), "
                  f"{len(log) - log.errors} warning(s){summary}")


@data_app.command("clean")
def clean_cmd(files: Files,
              out: Annotated[Path, typer.Option("-o", "--out", help="Output JSONL of canonical records.")],
              format_: FormatOption = "auto", column: ColumnOption = None, task: TaskOption = "generation",
              redact_pii: Annotated[str, typer.Option(help="off, mask (<EMAIL>, <PHONE>, ...) or drop.")] = "off",
              dedup: Annotated[str, typer.Option(help="none, exact or near.")] = "exact",
              too_long: Annotated[str, typer.Option(help="keep, truncate or drop (with --model).")] = "keep",
              no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep whitespace/Unicode as is.")]
              = False,
              keep_html: Annotated[bool, typer.Option("--keep-html", help="Do not strip HTML.")] = False,
              model: ModelOption = None, max_seq_len: MaxLenOption = 1024):
    """Fix what can be fixed, remove what cannot be used; OUT plus OUT-stem.removed.jsonl with every removed row
    and its reason. Never edits the input."""
    from tunesmith.config import CleanConfig
    from tunesmith.data.clean import CleanOptions, clean

    choices = CleanConfig(redact_pii=redact_pii, dedup=dedup, too_long=too_long)  # validates the choices
    options = CleanOptions(**{**choices.model_dump(), "normalize": not no_normalize, "strip_html": not keep_html},
                           max_seq_len=max_seq_len)
    result = clean([str(f) for f in files], out, options, format_, _columns(column), task, _tokenizer(model))
    console.print(result.accounting())
    console.print(f"wrote {out} and {out.with_name(out.stem + '.removed.jsonl')}")


@data_app.command("stats")
def stats_cmd(files: Files, format_: FormatOption = "auto", column: ColumnOption = None,
              task: TaskOption = "generation",
              model: Annotated[str, typer.Option("--model", help="Tokenizer to count with.")]
              = "smollm2-135m-instruct",
              max_seq_len: MaxLenOption = 1024,
              plot: Annotated[Path | None, typer.Option(help="Also write a length histogram PNG here.")] = None,
              as_json: JsonOption = False):
    """Counts, token-length percentiles (p50/p90/p99/max), rows over max_seq_len, labels, a length histogram."""
    from tunesmith.data.check import check, require_usable
    from tunesmith.data.stats import compute_stats, histogram_lines
    from tunesmith.data.stats import plot as plot_png

    report = check([str(f) for f in files], format_, _columns(column), task, quality=False)
    stats = compute_stats(require_usable(report, "input"), _tokenizer(model), max_seq_len)
    if plot is not None:
        plot_png(stats, plot)
    lengths = stats.pop("_lengths")
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    table = Table(title=f"{stats['rows']} rows ({report.mapping}), tokens in {model}")
    for name in ("tokens", "p50", "p90", "p99", "max", "mean"):
        table.add_column(name, justify="left" if name == "tokens" else "right")
    for part, values in stats["tokens"].items():
        table.add_row(part, *(str(values[k]) for k in ("p50", "p90", "p99", "max", "mean")))
    console.print(table)
    console.print(f"{stats['over_max_seq_len']} of {len(lengths)} rows exceed max_seq_len {max_seq_len}")
    for line in histogram_lines(stats):
        console.print(line)
    if "labels" in stats:
        console.print("labels: " + ", ".join(f"{k} {v}" for k, v in stats["labels"].items()))
    if plot is not None:
        console.print(f"wrote {plot}")


@data_app.command("split")
def split_cmd(file: Files, out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the splits.")],
              ratios: Annotated[str, typer.Option(help="train,eval[,test] fractions.")] = "0.8,0.1,0.1",
              seed: Annotated[int, typer.Option(help="Random seed of the split.")] = 0,
              format_: FormatOption = "auto", column: ColumnOption = None, task: TaskOption = "generation"):
    """Split into train/eval/test JSONL (canonical records): seeded, stratified by label, near-duplicate prompts
    kept in one split; prints the leakage check."""
    from tunesmith.data.check import check, leakage_findings, require_usable
    from tunesmith.data.split import split_ratios
    from tunesmith.io import write_jsonl_atomic

    try:
        fractions = [float(r) for r in ratios.split(",")]
    except ValueError:
        raise ConfigError(f"--ratios '{ratios}' is not a list of numbers", "use e.g. --ratios 0.8,0.1,0.1") from None
    examples = require_usable(check([str(f) for f in file], format_, _columns(column), task, quality=False),
                              "input")
    parts = split_ratios(examples, fractions, seed)
    names = ["train", "eval", "test"][:len(parts)]
    for name, part in zip(names, parts):
        write_jsonl_atomic(out / f"{name}.jsonl", [e.to_json() for e in part])
        console.print(f"{name}: {len(part)} rows → {out / (name + '.jsonl')}")
    leaks = sum(len(leakage_findings(parts[0], part)) for part in parts[1:])
    console.print(f"leakage check: {leaks} held-out row(s) repeat a train prompt exactly or nearly")
