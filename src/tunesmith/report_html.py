"""report.html: one self-contained file (inline CSS and SVG, no script, no external URL) that opens offline.

Every piece of user text (data, model outputs, config values, file names) goes through html.escape; the SVG
charts escape their own labels (report_svg.py).
"""

from __future__ import annotations

from html import escape

from tunesmith.report import metric_rows, notes, picked_examples

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#222;
 line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}
.note{background:#fff4e5;border-left:4px solid #f0a202;padding:8px 12px;margin:8px 0}
.muted{color:#666}.examples td{width:25%;white-space:pre-wrap;font-size:.92em}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.85em}
.cm td{text-align:right;min-width:2.5em}.cm td.diag{background:#e6f4ea;font-weight:600}
"""


def _num(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], css_class: str = "", element_id: str = "") -> str:
    """rows hold already-escaped HTML cells."""
    attrs = (f' class="{css_class}"' if css_class else "") + (f' id="{element_id}"' if element_id else "")
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_section(report: dict) -> str:
    metrics, source = report["metrics"], report["source"]
    rows = []
    for row in metric_rows(metrics):
        css = "" if row["better"] is None else ("better" if row["better"] else "worse")
        name = escape(row["name"]) + (' <span class="muted">(lower is better)</span>' if row["lower_is_better"]
                                      else "")
        delta = "" if row["delta"] is None else f"{row['delta']:+.4f}"
        rows.append([name, f'<td class="num">{_num(row["base"])}</td>',
                     f'<td class="num">{_num(row["finetuned"])}</td>', f'<td class="num {css}">{delta}</td>'])
    where = escape(str(source.get("data", "unknown")))
    return (f"<h2>Metrics</h2><p>{metrics['n']} held-out examples from {where}; task "
            f"<code>{escape(str(metrics['task']))}</code>.</p>"
            + _table(["metric", "base", "fine-tuned", "delta"], rows, element_id="metric-table"))


def _data_section(report: dict) -> str:
    stats = report["stats"]
    parts = ["<h2>Data</h2>"]
    if stats:
        rows = [[role, *(f'<td class="num">{stats[role].get(k, "")}</td>' for k in
                         ("rows", "kept", "truncated", "tokens", "max_tokens"))]
                for role in ("train", "eval", "test") if role in stats]
        parts.append(f"<p>Format <code>{escape(str(stats.get('format')))}</code>, max_seq_len "
                     f"{escape(str(stats.get('max_seq_len')))}; eval rows: {escape(str(stats.get('eval_source')))}; "
                     f"test rows: {escape(str(stats.get('test_source')))}.</p>")
        parts.append(_table(["split", "rows", "kept", "truncated", "tokens", "longest"], rows, element_id="data-table"))
    if report["length_svg"]:
        parts.append(f"<h3>Train row lengths</h3>{report['length_svg']}")
    removed = report["removed_by_reason"]
    if removed:
        parts.append("<h3>Removed by cleaning</h3>" + _table(
            ["reason", "rows"], [[escape(r), f'<td class="num">{n}</td>'] for r, n in removed],
            element_id="removed-table") + '<p class="muted">Each removed row and its reason: data/removed.jsonl.</p>')
    else:
        parts.append("<p>Cleaning removed no rows.</p>")
    return "".join(parts)


def _score(row: dict, who: str) -> str:
    found = [f"{k.split('_', 1)[1]} {row[k]:.2f}" for k in (f"{who}_rougeL", f"{who}_meteor") if k in row]
    return f'<div class="muted">{escape(", ".join(found))}</div>' if found else ""


def _examples_section(report: dict) -> str:
    parts = ["<h2>Examples</h2>"]
    for title, rows in picked_examples(report):
        parts.append(f"<h3>{escape(title)}</h3>")
        if not rows:
            parts.append("<p class=\"muted\">none</p>")
            continue
        has_base = "base_output" in rows[0]
        header = ["input", "reference", *(["base"] if has_base else []), "fine-tuned"]
        cells = []
        for row in rows:
            line = [f"{escape(row['input'])}<div class=\"muted\">{escape(row['source'])}</div>",
                    escape(row["reference"])]
            if has_base:
                line.append(escape(row["base_output"]) + _score(row, "base"))
            line.append(escape(row["finetuned_output"]) + _score(row, "finetuned"))
            cells.append(line)
        parts.append(_table(header, cells, css_class="examples"))
    return "".join(parts)


def _forgetting_section(report: dict) -> str:
    f = report["forgetting"]
    if not f:
        return "<h2>Forgetting check</h2><p class=\"muted\">Not run (eval.forgetting is off, the base model was " \
               "not compared, or the task has no language-model head).</p>"
    css = "worse" if f["warning"] else ""
    return (f"<h2>Forgetting check</h2><p>Perplexity on {f['paragraphs']} paragraphs ({f['tokens']} tokens) of "
            f"general text that the model was not trained on:</p>"
            + _table(["model", "perplexity"], [["base", f'<td class="num">{f["base_perplexity"]:.3f}</td>'],
                                              ["fine-tuned", f'<td class="num">{f["finetuned_perplexity"]:.3f}</td>']],
                     element_id="forgetting-table")
            + f'<p class="{css}">{escape(f["message"])}</p>')


def _confusion_section(report: dict) -> str:
    # Contract in docs/evaluation.md: eval/confusion.json {"labels": [...], "matrix": [[...]]}, rows = true label,
    # columns = predicted label; or metrics.json finetuned.confusion_matrix.
    cm = report["confusion"]
    if cm is None:
        return "<!-- confusion matrix: none for this task (classification evals write eval/confusion.json) -->"
    labels = cm["labels"]
    rows = []
    for i, counts in enumerate(cm["matrix"]):
        label = escape(labels[i]) if i < len(labels) else str(i)
        rows.append([f"<th>{label}</th>"] + [f'<td class="{"diag" if i == j else ""}">{escape(str(c))}</td>'
                                             for j, c in enumerate(counts)])
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{escape(label)}</th>" for label in labels)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return (f'<h2>Confusion matrix (fine-tuned)</h2><table class="cm" id="confusion-matrix"><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table>")


def _config_section(report: dict) -> str:
    config = report["config"]
    keys = [("task", config.get("task")), ("model.base", (config.get("model") or {}).get("base"))]
    for section, fields in (("method", ("kind", "r", "lora_alpha", "target_modules")),
                            ("train", ("epochs", "max_steps", "lr", "micro_batch_size", "global_batch_size",
                                       "precision", "seed")),
                            ("data", ("train", "eval", "test", "max_seq_len")),
                            ("eval", ("metrics", "max_new_tokens", "forgetting_threshold_pct"))):
        for name in fields:
            keys.append((f"{section}.{name}", (config.get(section) or {}).get(name)))
    rows = [[f"<code>{escape(k)}</code>", escape(str(v))] for k, v in keys if v is not None]
    return ("<h2>Configuration</h2>" + _table(["key", "value"], rows, element_id="config-table")
            + f"<details><summary>config.yaml</summary><pre>{escape(report['config_text'])}</pre></details>")


def _run_card_section(report: dict) -> str:
    card = report["card"]
    if not card:
        return "<h2>Run card</h2><p class=\"muted\">run_card.json is missing.</p>"
    rows = [["wall time (s)", escape(", ".join(f"{k} {v}" for k, v in card.get("wall_seconds", {}).items()))],
            ["hardware", escape(", ".join(f"{k} {v}" for k, v in card.get("hardware", {}).items()))],
            ["versions", escape(", ".join(f"{k} {v}" for k, v in card.get("versions", {}).items()))],
            ["git commit", escape(str(card.get("git_commit")))], ["seed", escape(str(card.get("seed")))]]
    rows += [[f"sha256 of {escape(path)}", f"<code>{escape(digest)}</code>"]
             for path, digest in card.get("datasets_sha256", {}).items()]
    return "<h2>Run card</h2>" + _table(["field", "value"], rows, element_id="run-card")


def render_html(report: dict) -> str:
    card, records = report["card"], report["records"]
    name = card.get("name", report["run_dir"].name)
    summary = ""
    if card:
        summary = (f"<p>Base model <code>{escape(str(card['model']['base']))}</code>, method "
                   f"<code>{escape(str(card['method']))}</code>, {card['rows']['train']['kept']} train / "
                   f"{card['rows']['eval']['kept']} eval rows.</p>")
    last = [r for r in records if "train_tokens_per_s" in r]
    if last:
        summary += (f"<p>Training: {escape(str(last[-1].get('steps', last[-1]['step'])))} steps, "
                    f"{last[-1]['train_tokens_per_s']:.0f} tokens/s, peak memory {last[-1]['peak_memory_mb']:.0f} "
                    f"MB on {escape(str(last[-1].get('device', '?')))}.</p>")
    warnings = "".join(f'<div class="note">{escape(n)}</div>' for n in notes(report))
    loss = f"<h2>Loss</h2>{report['loss_svg']}" if report["loss_svg"] else "<h2>Loss</h2><p>No training records.</p>"
    body = "".join([f"<h1>Run report: {escape(str(name))}</h1>", summary, warnings, _metrics_section(report),
                    loss, _examples_section(report), _forgetting_section(report), _confusion_section(report),
                    _data_section(report), _config_section(report), _run_card_section(report)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>tunesmith report: '
            f'{escape(str(name))}</title><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
