"""`tunesmith report RUN_DIR`: report.html (self-contained: inline SVG, inline CSS, no external URL) and
report.md, from the run directory's files alone. What each section shows is listed in docs/evaluation.md."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from tunesmith.errors import RunDirError
from tunesmith.eval.metrics import LOWER_IS_BETTER
from tunesmith.io import read_jsonl, write_text_atomic
from tunesmith.report_svg import histogram, loss_chart

EXAMPLES_SHOWN = 3  # most improved and most hurt, each


def _json(path: Path, default=None):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _token_lengths(path: Path) -> list[int]:
    if not path.is_file():
        return []
    return [len(row["input_ids"]) for row in read_jsonl(path)]


def confusion_of(metrics: dict, sidecar: dict | None) -> dict | None:
    """The confusion matrix contract (docs/evaluation.md): eval/confusion.json {"labels", "matrix"} (rows: true
    label, columns: predicted), else metrics.json finetuned.confusion_matrix as that dict or a bare matrix."""
    found = sidecar or metrics.get("finetuned", {}).get("confusion_matrix")
    if isinstance(found, list):
        found = {"labels": [str(i) for i in range(len(found))], "matrix": found}
    if not isinstance(found, dict) or not isinstance(found.get("matrix"), list):
        return None
    labels = [str(label) for label in found.get("labels") or range(len(found["matrix"]))]
    return {"labels": labels, "matrix": found["matrix"]}


def collect(run_dir: Path) -> dict:
    """Everything the report shows, read from the run directory."""
    run_dir = Path(run_dir)
    needed = [run_dir / "metrics.jsonl", run_dir / "eval" / "metrics.json", run_dir / "eval" / "predictions.jsonl"]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise RunDirError(f"cannot write the report: '{missing[0]}' is missing",
                          f"run `tunesmith eval {run_dir}` (and train first if adapter/ is missing)")
    eval_dir, data_dir = run_dir / "eval", run_dir / "data"
    metrics = _json(eval_dir / "metrics.json")
    removed = read_jsonl(data_dir / "removed.jsonl") if (data_dir / "removed.jsonl").is_file() else []
    config_path = run_dir / "config.yaml"
    source = _json(eval_dir / "source.json", {})
    stats = _json(data_dir / "stats.json", {})
    if "same_as_watched_eval" not in source:  # written by an older tunesmith eval
        source["same_as_watched_eval"] = source.get("data") == stats.get("test_source") and \
            "eval split" in str(stats.get("test_source", ""))
    return {
        "run_dir": run_dir, "records": read_jsonl(run_dir / "metrics.jsonl"), "metrics": metrics,
        "predictions": read_jsonl(eval_dir / "predictions.jsonl"), "card": _json(run_dir / "run_card.json", {}),
        "stats": stats, "source": source, "comparison": _json(eval_dir / "comparison.json"),
        "forgetting": _json(eval_dir / "forgetting.json"),
        "confusion": confusion_of(metrics, _json(eval_dir / "confusion.json")),
        "removed_by_reason": Counter(str(r.get("_reason", "unknown")) for r in removed).most_common(),
        "lengths": _token_lengths(data_dir / "train.tokens.jsonl"),
        "config": yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {},
        "config_text": config_path.read_text(encoding="utf-8") if config_path.is_file() else "",
    }


def metric_rows(metrics: dict) -> list[dict]:
    """One row per numeric metric: name, base, fine-tuned, delta, and whether the change is an improvement."""
    rows = []
    for name, tuned in metrics["finetuned"].items():
        if not isinstance(tuned, (int, float)) or isinstance(tuned, bool):
            continue  # e.g. a confusion matrix
        delta = metrics["delta"].get(name)
        lower = name.split("/", 1)[0] in LOWER_IS_BETTER  # "mse/quality": one regression target's mse
        better = None if not delta else (delta < 0) == lower
        rows.append({"name": name, "base": metrics["base"].get(name), "finetuned": tuned, "delta": delta,
                     "better": better, "lower_is_better": lower})
    return rows


def metric_table(metrics: dict) -> str:
    """Markdown table: metric | base | fine-tuned | delta."""
    lines = ["| metric | base | fine-tuned | delta |", "|---|---:|---:|---:|"]
    for row in metric_rows(metrics):
        base, delta = row["base"], row["delta"]
        name = row["name"] + (" (lower is better)" if row["lower_is_better"] else "")
        lines.append(f"| {name} | {'' if base is None else f'{base:.4f}'} | {row['finetuned']:.4f} | "
                     f"{'' if delta is None else f'{delta:+.4f}'} |")
    return "\n".join(lines)


def picked_examples(report: dict) -> list[tuple[str, list[dict]]]:
    """(title, prediction rows): the most improved and most hurt by the per-example score, else the first few."""
    predictions, comparison = report["predictions"], report["comparison"]
    if comparison:
        by = comparison["by"]
        picks = [(f"Most {kind} ({by} per example)",
                  [predictions[e["index"]] for e in comparison[kind][:EXAMPLES_SHOWN]])
                 for kind in ("improved", "hurt")]
        if not (comparison["improved"] or comparison["hurt"]):
            picks.append((f"Examples (no per-example {by} changed)", predictions[:EXAMPLES_SHOWN * 2]))
        return picks
    if predictions and "base_rougeL" in predictions[0]:  # an eval without comparison.json
        ranked = sorted(predictions, key=lambda p: p["finetuned_rougeL"] - p["base_rougeL"])
        return [("Most improved (rougeL per example)", ranked[::-1][:EXAMPLES_SHOWN]),
                ("Most hurt (rougeL per example)", ranked[:EXAMPLES_SHOWN])]
    return [("Examples", predictions[:EXAMPLES_SHOWN * 2])]


def notes(report: dict) -> list[str]:
    """Plain-text warnings shown at the top of both reports."""
    out = []
    if report["source"].get("same_as_watched_eval"):
        out.append(report["source"].get("note") or "no separate test file was given, so these metrics are on the "
                   "same eval split that was watched during training")
    for name, why in (report["source"].get("metrics_unavailable") or {}).items():
        out.append(f"{name} was not computed: {why}")
    if report["forgetting"] and report["forgetting"]["warning"]:
        out.append(report["forgetting"]["message"])
    return out


def _quote(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _markdown(report: dict) -> str:
    card, metrics, stats = report["card"], report["metrics"], report["stats"]
    lines = [f"# Run report: {card.get('name', report['run_dir'].name)}", ""]
    lines += [f"> **Note:** {n}" for n in notes(report)] + ([""] if notes(report) else [])
    if card:
        lines.append(f"Base model `{card['model']['base']}`, method `{card['method']}`, seed {card['seed']}, "
                     f"{card['rows']['train']['kept']} train / {card['rows']['eval']['kept']} eval rows.")
    last = [r for r in report["records"] if "train_tokens_per_s" in r]
    if last:
        lines.append(f"Training: {last[-1].get('steps', last[-1]['step'])} steps, "
                     f"{last[-1]['train_tokens_per_s']:.0f} tokens/s, peak memory "
                     f"{last[-1]['peak_memory_mb']:.0f} MB on {last[-1].get('device', '?')}.")
    lines += ["", f"## Metrics on {metrics['n']} held-out examples ({report['source'].get('data', 'unknown')})", "",
              metric_table(metrics)]
    if report["forgetting"]:
        f = report["forgetting"]
        lines += ["", "## Forgetting check", "", f"Perplexity on {f['paragraphs']} paragraphs of general text: "
                  f"base {f['base_perplexity']:.2f}, fine-tuned {f['finetuned_perplexity']:.2f} "
                  f"({f['change_pct']:+.1f}%, warning above {f['threshold_pct']:g}%)."]
    if stats:
        lines += ["", "## Data", "", "| split | rows | kept | truncated | tokens |", "|---|---:|---:|---:|---:|"]
        for role in ("train", "eval"):
            if role in stats:
                s = stats[role]
                lines.append(f"| {role} | {s['rows']} | {s['kept']} | {s['truncated']} | {s['tokens']} |")
        if "test" in stats:
            lines.append(f"| test | {stats['test']['rows']} | | | |")
        if report["removed_by_reason"]:
            lines += ["", "Removed by cleaning: " + ", ".join(f"{n} {r}" for r, n in report["removed_by_reason"])]
    lines += ["", "## Loss", "", "![loss curve](loss_curve.svg)", "", "## Examples"]
    for title, rows in picked_examples(report):
        lines.append(f"\n### {title}\n")
        if not rows:
            lines.append("- none")
        for row in rows:
            lines.append(f"- **Input** ({row['source']}): {_quote(row['input'])}")
            lines.append(f"  - reference: {_quote(row['reference'])}")
            if "base_output" in row:  # generation runs, and generative classifiers (no per-row rougeL there)
                lines.append(f"  - base{_row_score(row, 'base')}: {_quote(row['base_output'])}")
            lines.append(f"  - fine-tuned{_row_score(row, 'finetuned')}: {_quote(row['finetuned_output'])}")
    return "\n".join(lines) + "\n"


def _row_score(row: dict, who: str) -> str:
    return f" ({row[f'{who}_rougeL']:.2f})" if f"{who}_rougeL" in row else ""


def write_report(run_dir: Path) -> Path:
    """Write report.html, report.md and loss_curve.svg; return the path of report.html."""
    from tunesmith.report_html import render_html

    report = collect(run_dir)
    run_dir = report["run_dir"]
    report["loss_svg"] = loss_chart(report["records"])
    report["length_svg"] = histogram(report["lengths"], "length-histogram", "Train rows by length in tokens",
                                     "tokens per row (chat template applied)")
    write_text_atomic(run_dir / "loss_curve.svg", report["loss_svg"])
    write_text_atomic(run_dir / "report.md", _markdown(report))
    write_text_atomic(run_dir / "report.html", render_html(report))
    return run_dir / "report.html"
