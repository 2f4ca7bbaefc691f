"""report.html and report.md from a hand-made run directory (fast, every section filled), and rendered in
headless Chromium: the page draws something, and the DOM holds the metric table and the SVG plots."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import cli
from tunesmith.errors import RunDirError
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.report import confusion_of, write_report

EVIL = '<script>alert("x")</script>'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")


def make_run(run: Path, confusion: bool = False) -> Path:
    records = [{"step": s, "epoch": s / 10, "loss": 3.0 - 0.1 * s, "lr": 1e-4} for s in range(1, 21)]
    records += [{"step": 10, "eval_loss": 2.4}, {"step": 20, "eval_loss": 1.9}]
    records[19].update(train_tokens_per_s=321.0, peak_memory_mb=812.0, steps=20, device="cpu")
    write_jsonl_atomic(run / "metrics.jsonl", records)
    write_json_atomic(run / "eval" / "metrics.json", {
        "task": "generation", "n": 3,
        "base": {"rougeL": 0.2, "meteor": 0.25, "perplexity": 12.0},
        "finetuned": {"rougeL": 0.5, "meteor": 0.45, "perplexity": 6.0},
        "delta": {"rougeL": 0.3, "meteor": 0.2, "perplexity": -6.0}})
    rows = [{"source": "d.jsonl:1", "input": f"Summarize {EVIL}", "reference": "Tom & Ann meet.",
             "base_output": "no idea", "finetuned_output": "Tom & Ann meet.", "base_rougeL": 0.0,
             "finetuned_rougeL": 1.0, "base_meteor": 0.0, "finetuned_meteor": 0.99},
            {"source": "d.jsonl:2", "input": "Second dialogue", "reference": "They buy bread.",
             "base_output": "They buy bread.", "finetuned_output": "Bread.", "base_rougeL": 1.0,
             "finetuned_rougeL": 0.5, "base_meteor": 0.99, "finetuned_meteor": 0.2},
            {"source": "d.jsonl:3", "input": "Third", "reference": "x", "base_output": "x", "finetuned_output": "x",
             "base_rougeL": 1.0, "finetuned_rougeL": 1.0}]
    write_jsonl_atomic(run / "eval" / "predictions.jsonl", rows)
    write_json_atomic(run / "eval" / "comparison.json", {
        "by": "rougeL", "improved": [{"index": 0, "source": "d.jsonl:1", "base": 0.0, "finetuned": 1.0, "delta": 1.0}],
        "hurt": [{"index": 1, "source": "d.jsonl:2", "base": 1.0, "finetuned": 0.5, "delta": -0.5}]})
    write_json_atomic(run / "eval" / "source.json", {"data": "the eval split", "same_as_watched_eval": True,
                                                     "note": "watched during training", "metrics_unavailable": {}})
    write_json_atomic(run / "eval" / "forgetting.json", {
        "probe": "tunesmith/eval/probe.txt", "paragraphs": 30, "tokens": 2000, "base_perplexity": 20.0,
        "finetuned_perplexity": 25.0, "change_pct": 25.0, "threshold_pct": 10.0, "warning": True,
        "message": "perplexity on general text rose 25.0% (threshold 10%)"})
    write_json_atomic(run / "data" / "stats.json", {
        "format": "prompt_completion", "max_seq_len": 512, "eval_source": "10% of data.train",
        "test_source": "the eval split", "train": {"rows": 40, "kept": 40, "truncated": 1, "tokens": 4000,
                                                   "max_tokens": 300},
        "eval": {"rows": 3, "kept": 3, "truncated": 0, "tokens": 300, "max_tokens": 120}, "test": {"rows": 3}})
    write_jsonl_atomic(run / "data" / "train.tokens.jsonl",
                       [{"input_ids": [1] * (20 + 7 * i), "labels": [], "truncated": False} for i in range(40)])
    write_jsonl_atomic(run / "data" / "removed.jsonl", [
        {"prompt": "a", "_reason": "duplicate"}, {"prompt": "b", "_reason": "duplicate"},
        {"prompt": "c", "_reason": f"pii {EVIL}"}])
    (run / "config.yaml").write_text(f"name: demo\ntask: generation\nmodel:\n  base: tiny\ndata:\n  train: '{EVIL}'\n")
    write_json_atomic(run / "run_card.json", {
        "name": "demo", "model": {"base": "tiny"}, "method": "lora", "seed": 0,
        "rows": {"train": {"kept": 40}, "eval": {"kept": 3}, "test": {"rows": 3}},
        "datasets_sha256": {"/data/d.jsonl": "ab" * 32}, "versions": {"torch": "2.13.0"},
        "hardware": {"machine": "x86_64", "cpu_count": 2}, "git_commit": None,
        "wall_seconds": {"train": 12.5, "eval": 3.0, "total": 15.5}})
    if confusion:
        write_json_atomic(run / "eval" / "confusion.json", {"labels": ["billing", "refund <b>"],
                                                            "matrix": [[5, 1], [2, 7]]})
    return run


def test_html_report_is_self_contained_and_escapes_user_text(tmp_path):
    run = make_run(tmp_path / "run")
    path = write_report(run)
    html = path.read_text()
    assert path.name == "report.html" and (run / "report.md").is_file() and (run / "loss_curve.svg").is_file()
    assert EVIL not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    # No external resource: nothing fetched over the network, no link to another file.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "url(" not in html and "@import" not in html
    assert 'id="metric-table"' in html and 'id="loss-curve"' in html and 'id="length-histogram"' in html
    assert html.count("<polyline") == 2  # train and eval loss
    assert "Tom &amp; Ann meet." in html and "Most improved" in html and "Most hurt" in html
    # perplexity fell: an improvement although the delta is negative
    assert re.search(r'class="num better">-6\.0000', html) and "(lower is better)" in html
    assert "watched during training" in html and "rose 25.0%" in html
    assert "duplicate" in html and "ab" * 32 in html and "train 12.5" in html
    assert "confusion matrix: none" in html  # the marked slot for classification runs


def test_markdown_report_has_the_table_the_note_and_the_examples(tmp_path):
    run = make_run(tmp_path / "run")
    write_report(run)
    md = (run / "report.md").read_text()
    assert "| perplexity (lower is better) | 12.0000 | 6.0000 | -6.0000 |" in md
    assert "| rougeL | 0.2000 | 0.5000 | +0.3000 |" in md
    assert "watched during training" in md and "## Forgetting check" in md and "+25.0%" in md
    assert "Most improved" in md and "2 duplicate" in md


def test_confusion_matrix_contract(tmp_path):
    run = make_run(tmp_path / "run", confusion=True)
    html = write_report(run).read_text()
    table = html[html.index('id="confusion-matrix"'):]
    table = table[: table.index("</table>")]
    assert "refund &lt;b&gt;" in table and '<td class="diag">7</td>' in table and '<td class="">1</td>' in table
    assert confusion_of({"finetuned": {"confusion_matrix": [[1, 0], [0, 1]]}}, None)["labels"] == ["0", "1"]
    assert confusion_of({"finetuned": {"accuracy": 1.0}}, None) is None


def test_missing_eval_is_a_run_dir_error(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "eval" / "metrics.json").unlink()
    with pytest.raises(RunDirError, match="tunesmith eval"):
        write_report(run)
    result = cli("report", run)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", *args], capture_output=True, text=True, timeout=timeout)


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    run = make_run(tmp_path / "run", confusion=True)
    html = write_report(run)
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and charts, not a blank page
    # The loss chart's blue line was drawn somewhere on the page.
    assert any(abs(r - 0x1F) < 40 and abs(g - 0x77) < 40 and abs(b - 0xB4) < 40 for _, (r, g, b) in colours)

    dom = _chromium("--dump-dom", html.as_uri()).stdout
    assert '<table id="metric-table">' in dom and ">meteor<" in dom
    assert dom.count("<svg") >= 2 and 'id="loss-curve"' in dom and 'id="length-histogram"' in dom
    assert 'id="confusion-matrix"' in dom and "<script>alert" not in dom


def test_when_no_example_changed_both_headings_stay_and_examples_are_shown(tmp_path):
    run = make_run(tmp_path / "run")
    write_json_atomic(run / "eval" / "comparison.json", {"by": "rougeL", "improved": [], "hurt": []})
    write_report(run)
    md = (run / "report.md").read_text()
    assert "### Most improved (rougeL per example)\n\n- none" in md and "Most hurt" in md
    assert "no per-example rougeL changed" in md and "Second dialogue" in md
