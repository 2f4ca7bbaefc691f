"""`tunesmith runs list|compare`: what the runs under a folder achieved, and how two or more runs differ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.console import console

runs_app = typer.Typer(help="List and compare run directories (sweep trials included).", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _num(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.3g}"  # learning rates: 0.000495, not 0.0005
        text = f"{value:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text  # 100 stays 100; 5.50 becomes 5.5
    return str(value)


def _signed(value) -> str:
    return "" if value is None else ("+" if value >= 0 else "") + _num(value)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


@runs_app.command("list")
def list_cmd(folder: Annotated[Path, typer.Argument(help="Folder searched recursively for run directories.")]
             = Path("runs"), as_json: JsonOption = False):
    """Every run under FOLDER (any folder with config.yaml, sweep trials included) with its key metrics."""
    from tunesmith.runs import find_runs, run_summary

    summaries = [run_summary(r) for r in find_runs(folder)]
    if as_json:
        print(json.dumps({"folder": str(folder), "runs": summaries}, indent=2))
        return
    if not summaries:
        console.print(f"no runs under {folder} (a run directory holds config.yaml)")
        return
    table = Table(title=f"{len(summaries)} run(s) under {folder}")
    for column in ("run", "status", "task", "base model", "method", "steps", "train loss", "best eval loss",
                   "metric", "fine-tuned", "delta", "tokens/s", "wall s", "trial"):
        table.add_column(column, justify="left" if column in ("run", "status", "task", "base model", "method",
                                                               "metric", "trial") else "right")
    for s in summaries:
        main = s["main_metric"]
        trial = s.get("trial") or {}
        table.add_row(escape(_relative(s["run"], folder)), s["status"], s["task"] or "",
                      escape(Path(s["base_model"]).name if s["base_model"] else ""), s["method"] or "",
                      _num(s["steps"]), _num(s["final_train_loss"]), _num(s["best_eval_loss"]),
                      main if main in s["finetuned"] else "", _num(s["finetuned"].get(main)),
                      _signed(s["delta"].get(main)), _num(s["train_tokens_per_s"], 0), _num(s["wall_seconds"], 1),
                      (trial.get("state") or "").lower())
    console.print(table)


@runs_app.command("compare")
def compare_cmd(run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories; deltas are "
                                                                     "relative to the first.")],
                as_json: JsonOption = False):
    """The config keys that differ (dotted) and the metrics side by side, with deltas against the first run."""
    from tunesmith.runs import compare_runs

    if len(run_dirs) < 2:
        raise typer.BadParameter("give at least two run directories", param_hint="RUN_DIRS")
    result = compare_runs(run_dirs)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    names = [escape(Path(r).name) for r in result["runs"]]
    for i, run in enumerate(result["runs"]):
        console.print(f"[{i + 1}] {escape(run)}")
    table = Table(title="config differences")
    table.add_column("key")
    for i, name in enumerate(names):
        table.add_column(f"[{i + 1}] {name}", justify="right")
    for key, values in result["config_differences"].items():
        table.add_row(key, *(escape(_num(v)) for v in values))
    if result["config_differences"]:
        console.print(table)
    else:
        console.print("the configs are the same (apart from name and output)")
    table = Table(title=f"metrics (delta against [1] {names[0]})")
    table.add_column("metric")
    for i, name in enumerate(names):
        table.add_column(f"[{i + 1}] {name}", justify="right")
    for metric, row in result["metrics"].items():
        if all(v is None for v in row["values"]):
            continue
        cells = [_num(row["values"][0])] + [f"{_num(v)} ({_signed(d)})" if d is not None else _num(v)
                                            for v, d in zip(row["values"][1:], row["delta"][1:])]
        table.add_row(metric, *cells)
    console.print(table)
