"""`tunesmith report RUN_DIR`: report.md with the metric table, the loss curve (an SVG beside it) and examples
side by side, from the run directory's files alone."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import RunDirError
from tunesmith.io import read_jsonl, write_text_atomic

EXAMPLES_SHOWN = 3  # most improved, most hurt, and a few in between
SVG_W, SVG_H, PAD = 640, 260, 40


def metric_table(metrics: dict) -> str:
    """Markdown table: metric | base | fine-tuned | delta."""
    lines = ["| metric | base | fine-tuned | delta |", "|---|---:|---:|---:|"]
    for name, tuned in metrics["finetuned"].items():
        base = metrics["base"].get(name)
        delta = metrics["delta"].get(name)
        lines.append(f"| {name} | {'' if base is None else f'{base:.4f}'} | {tuned:.4f} | "
                     f"{'' if delta is None else f'{delta:+.4f}'} |")
    return "\n".join(lines)


def _point(x: float, y: float, x_max: float, y_min: float, y_max: float) -> tuple[float, float]:
    span = (y_max - y_min) or 1.0
    return PAD + (x / x_max) * (SVG_W - 2 * PAD), SVG_H - PAD - (y - y_min) / span * (SVG_H - 2 * PAD)


def _polyline(points: list[tuple[float, float]], *scale: float) -> str:
    return " ".join("{:.1f},{:.1f}".format(*_point(x, y, *scale)) for x, y in points)


def loss_curve_svg(records: list[dict]) -> str:
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    values = [y for _, y in train + held]
    x_max = max(x for x, _ in train + held) or 1
    y_min, y_max = min(values), max(values)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{SVG_W}" height="{SVG_H}" fill="white"/>',
             f'<line x1="{PAD}" y1="{SVG_H - PAD}" x2="{SVG_W - PAD}" y2="{SVG_H - PAD}" stroke="#888"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{SVG_H - PAD}" stroke="#888"/>',
             f'<text x="{PAD}" y="{PAD - 8}">loss {y_max:.3f}</text>',
             f'<text x="{PAD}" y="{SVG_H - 10}">{y_min:.3f} (step 0 → {x_max})</text>',
             f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{_polyline(train, x_max, y_min, y_max)}"/>',
             f'<text x="{SVG_W - 190}" y="{PAD - 8}" fill="#1f77b4">train loss</text>']
    if held:
        parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="4" '
                     f'points="{_polyline(held, x_max, y_min, y_max)}"/>')
        for x, y in held:
            cx, cy = _point(x, y, x_max, y_min, y_max)
            parts.append(f'<circle r="3" fill="#d62728" cx="{cx:.1f}" cy="{cy:.1f}"/>')
        parts.append(f'<text x="{SVG_W - 100}" y="{PAD - 8}" fill="#d62728">eval loss</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _quote(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _examples_section(predictions: list[dict]) -> list[str]:
    has_base = predictions and "base_output" in predictions[0]
    if has_base:
        ranked = sorted(predictions, key=lambda p: p["finetuned_rougeL"] - p["base_rougeL"])
        picks = [("most improved", ranked[::-1][:EXAMPLES_SHOWN]), ("most hurt", ranked[:EXAMPLES_SHOWN])]
    else:
        picks = [("examples", predictions[:EXAMPLES_SHOWN * 2])]
    out = []
    for title, rows in picks:
        out.append(f"\n### {title.capitalize()} (ROUGE-L per example)\n")
        for row in rows:
            out.append(f"- **Input** ({row['source']}): {_quote(row['input'])}")
            out.append(f"  - reference: {_quote(row['reference'])}")
            if has_base:
                out.append(f"  - base ({row['base_rougeL']:.2f}): {_quote(row['base_output'])}")
            out.append(f"  - fine-tuned ({row['finetuned_rougeL']:.2f}): {_quote(row['finetuned_output'])}")
    return out


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    needed = [run_dir / "metrics.jsonl", run_dir / "eval" / "metrics.json", run_dir / "eval" / "predictions.jsonl"]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise RunDirError(f"cannot write the report: '{missing[0]}' is missing",
                          f"run `tunesmith eval {run_dir}` (and train first if adapter/ is missing)")
    records = read_jsonl(run_dir / "metrics.jsonl")
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    predictions = read_jsonl(run_dir / "eval" / "predictions.jsonl")
    card_path = run_dir / "run_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    stats_path = run_dir / "data" / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    source_path = run_dir / "eval" / "source.json"
    source = json.loads(source_path.read_text())["data"] if source_path.is_file() else "unknown"

    write_text_atomic(run_dir / "loss_curve.svg", loss_curve_svg(records))
    last = [r for r in records if "train_tokens_per_s" in r]
    lines = [f"# Run report: {card.get('name', run_dir.name)}", ""]
    if card:
        lines.append(f"Base model `{card['model']['base']}`, method `{card['method']}`, seed {card['seed']}, "
                     f"{card['rows']['train']['kept']} train / {card['rows']['eval']['kept']} eval rows.")
    if last:
        lines.append(f"Training: {last[-1]['steps']} steps, {last[-1]['train_tokens_per_s']:.0f} tokens/s, "
                     f"peak memory {last[-1]['peak_memory_mb']:.0f} MB on {last[-1]['device']}.")
    lines += ["", f"## Metrics on {metrics['n']} held-out examples ({source})", "", metric_table(metrics)]
    if "eval split" in str(stats.get("test_source", "")) and source == stats.get("test_source"):
        lines += ["", "Note: no separate test file was given, so these metrics are on the same eval split that "
                  "was watched during training."]
    lines += ["", "## Loss", "", "![loss curve](loss_curve.svg)", "", "## Examples", *_examples_section(predictions)]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
