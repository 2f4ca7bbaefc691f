"""The run directory: the contract between stages (see docs/ARCHITECTURE.md). Reading it back: one run's
config, a summary of its key metrics (`tunesmith runs list`), and two or more runs side by side
(`tunesmith runs compare`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tunesmith.config import ProjectConfig
from tunesmith.errors import RunDirError


def load_run_config(run_dir: Path) -> ProjectConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"'{run_dir}' is not a tunesmith run directory (no config.yaml)",
                          "pass the folder that `tunesmith train` or `tunesmith run` wrote (the project's output)")
    return ProjectConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


# What `tunesmith runs list` shows as "the" eval metric of a task (all of them are in --json).
MAIN_METRIC = {"generation": "rougeL", "classification": "accuracy", "multilabel": "f1_micro", "regression": "mse"}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_records(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a run killed mid-write leaves a partial last line
            continue
    return records


def _read_config(run_dir: Path) -> dict | None:
    """config.yaml as a dict, or None when it is not ours to read (another tool's config.yaml, a broken file)."""
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def find_runs(folder: Path) -> list[Path]:
    """Every run directory (a folder with config.yaml) under folder, sweep trials included, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"'{folder}' is not a folder", "pass the folder that holds your runs (default: runs)")
    found = [p.parent for p in folder.rglob("config.yaml") if _read_config(p.parent) is not None]
    return sorted(found, key=lambda p: [int(part) if part.isdigit() else part
                                        for part in re.split(r"(\d+)", str(p))])


def _numbers(scores) -> dict:
    if not isinstance(scores, dict):
        return {}
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_summary(run_dir: Path) -> dict:
    """The key facts of one run, read from its files only (the run directory contract)."""
    run_dir = Path(run_dir)
    raw = _read_config(run_dir) or {}
    card = _read_json(run_dir / "run_card.json") or {}
    metrics = _read_json(run_dir / "eval" / "metrics.json")
    trial = _read_json(run_dir / "trial.json")
    records = _read_records(run_dir / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    last = train[-1] if train else {}
    status = "evaluated" if metrics else "trained" if (run_dir / "adapter").is_dir() and card else "incomplete"
    wall = card.get("wall_seconds", {})
    task = raw.get("task")
    summary = {
        "run": str(run_dir), "name": raw.get("name"), "status": status, "task": task,
        "base_model": (raw.get("model") or {}).get("base"), "method": (raw.get("method") or {}).get("kind"),
        "steps": card.get("train", {}).get("steps", last.get("step")),
        "final_train_loss": last.get("loss"), "best_eval_loss": min(evals) if evals else None,
        "train_tokens_per_s": last.get("train_tokens_per_s", card.get("train", {}).get("train_tokens_per_s")),
        "wall_seconds": wall.get("total", wall.get("train")),
        "main_metric": MAIN_METRIC.get(task), "finetuned": {}, "delta": {},
    }
    if metrics:  # numbers only: a classification run may also carry a confusion matrix there
        summary["finetuned"] = _numbers(metrics.get("finetuned"))
        summary["delta"] = _numbers(metrics.get("delta"))
    if trial:
        summary["trial"] = {k: trial.get(k) for k in ("study", "number", "state", "metric", "value")}
    return summary


def flatten(data: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists stay values."""
    out = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# Keys that differ between any two runs by construction: showing them would bury the real differences.
ALWAYS_DIFFERENT = {"output", "name"}
COMPARED = ("steps", "final_train_loss", "best_eval_loss", "train_tokens_per_s", "wall_seconds")


def compare_runs(run_dirs: list[Path]) -> dict:
    """Config keys that differ, and metrics side by side with their change from the first run."""
    for run_dir in run_dirs:
        # Read, not validated: runs written by another tunesmith version may hold keys this one lacks.
        if _read_config(Path(run_dir)) is None:
            raise RunDirError(f"'{run_dir}' is not a tunesmith run directory (no readable config.yaml)",
                              "pass folders that `tunesmith train` or `tunesmith run` wrote; `tunesmith runs list` "
                              "shows them")
    configs = [flatten(_read_config(Path(r)) or {}) for r in run_dirs]
    keys = sorted({k for c in configs for k in c} - ALWAYS_DIFFERENT)
    differences = {k: [c.get(k) for c in configs] for k in keys
                   if any(c.get(k) != configs[0].get(k) for c in configs[1:])}
    summaries = [run_summary(r) for r in run_dirs]
    rows = {name: [s[name] for s in summaries] for name in COMPARED}
    eval_names = list(dict.fromkeys(k for s in summaries for k in s["finetuned"]))
    rows.update({f"eval.{k}": [s["finetuned"].get(k) for s in summaries] for k in eval_names})
    metrics = {}
    for name, values in rows.items():
        first = values[0]
        deltas = [None if v is None or first is None else round(v - first, 6) for v in values]
        metrics[name] = {"values": values, "delta": deltas}
    return {"runs": [str(r) for r in run_dirs], "config_differences": differences, "metrics": metrics}
