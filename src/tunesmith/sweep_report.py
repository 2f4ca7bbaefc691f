"""A sweep's results: the leaderboard (rows for --json, a rich table for people) and best.yaml."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tunesmith.config import dump_config
from tunesmith.console import console
from tunesmith.io import write_text_atomic

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def leaderboard_rows(study) -> list[dict]:
    """One row per trial, best first: complete trials by metric, then pruned, running and failed ones.
    Trials dropped as surplus (two workers racing for the last slot) never ran and are left out."""
    minimize = study.direction.name == "MINIMIZE"
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus"):
            continue
        complete = trial.state.name == "COMPLETE"
        rows.append({"trial": trial.number, "state": trial.state.name, "value": trial.value if complete else None,
                     "last_eval_loss": last_eval_loss(trial, minimize), "params": dict(trial.params),
                     "run_dir": trial.user_attrs.get("run_dir"), "error": trial.user_attrs.get("error")})

    def key(row: dict):
        value, loss = row["value"], row["last_eval_loss"]
        rank = (value if minimize else -value) if value is not None else loss if loss is not None else 0.0
        return STATE_ORDER.get(row["state"], 5), rank, row["trial"]

    return sorted(rows, key=key)


def last_eval_loss(trial, minimize: bool) -> float | None:
    """The trial's last reported eval loss (a maximizing study reports -eval_loss: see sweep._objective)."""
    if not trial.intermediate_values:
        return None
    value = trial.intermediate_values[max(trial.intermediate_values)]
    return value if minimize else -value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4g}"
    return "" if value is None else str(value)


def print_leaderboard(result: dict) -> None:
    rows = result["rows"]
    params = list(dict.fromkeys(k for row in rows for k in row["params"]))
    better = "lower" if result["direction"] == "minimize" else "higher"
    table = Table(title=f"study '{result['study']}': {result['metric']} ({better} is better)")
    table.add_column("trial", justify="right")
    table.add_column("state")
    for name in params:
        table.add_column(name, justify="right")
    table.add_column(result["metric"], justify="right")
    for row in rows:
        if row["value"] is not None:
            shown = f"{row['value']:.4f}"
        elif row["state"] == "PRUNED" and row["last_eval_loss"] is not None:  # the loss it was stopped at
            shown = f"{row['last_eval_loss']:.4f}" if result["metric"] == "eval_loss" else \
                f"(eval_loss {row['last_eval_loss']:.4f})"
        else:
            shown = ""
        table.add_row(str(row["trial"]), row["state"].lower(), *(_fmt(row["params"].get(p)) for p in params),
                      shown)
    console.print(table)
    if result["best"]:
        console.print(f"best config: {result['best']}  (train it with `tunesmith run {result['best']}`)")
    else:
        console.print("no trial completed yet, so there is no best.yaml")


def write_best(sweep, study) -> Path | None:
    """best.yaml: the full project file of the best complete trial, with its own output folder, so
    `tunesmith run best.yaml` trains it again (on all the settings the trial used)."""
    from tunesmith.sweep import trial_config

    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        return None
    config = trial_config(sweep, dict(best.params), f"{sweep.base.name}-best", sweep.folder / "best")
    header = (f"# Best of study '{study.study_name}': trial {best.number}, {sweep.base.sweep.metric} "
              f"{best.value:.6g}\n# Searched values: "
              + ", ".join(f"{k}={v}" for k, v in best.params.items()) + "\n")
    path = sweep.folder / "best.yaml"
    write_text_atomic(path, header + dump_config(config))
    return path
