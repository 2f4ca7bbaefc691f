"""The streaming data doctor: the compact row index agrees with the in-memory dedup functions, the finding log
keeps file/line order across spills to disk, and `data check` / `data clean` stream files without holding
their rows (and leave nothing half-written when they fail)."""

import importlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import cli
from tunesmith.data import findings as findings_module
from tunesmith.data.check import check, scan
from tunesmith.data.clean import CleanOptions, CleanResult, clean, clean_examples
from tunesmith.data.dedup import cross_matches, exact_groups, near_duplicate_groups
from tunesmith.data.findings import FindingLog
from tunesmith.data.formats import Example, Finding, read_examples
from tunesmith.data.rowindex import RowIndex


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))


def planted_texts() -> list[str]:
    rng = random.Random(0)
    texts = [words(rng.randint(30, 60), seed=s) for s in range(200)]
    # 20 exact copies (case differs), 20 near copies (one word appended: Jaccard >= 0.96), 3 empty rows.
    return texts + [t.upper() for t in texts[:20]] + [t + " extra" for t in texts[20:40]] + ["", "...", ""]


def groups_of(first: np.ndarray, rows: np.ndarray) -> list[list[int]]:
    members: dict[int, list[int]] = {}
    for row, head in zip(rows.tolist(), first.tolist()):
        members.setdefault(head, []).append(row)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])


def index_of(texts: list[str], held: list[bool] | None = None, chunk: int = 37) -> RowIndex:
    index = RowIndex(near=True, prompts=held is not None)
    examples = [Example(None, "f.jsonl", i + 1, text=t) for i, t in enumerate(texts)]
    flags = held or [False] * len(texts)
    for lo in range(0, len(examples), chunk):  # several chunks, as a streamed file arrives
        index.add(examples[lo:lo + chunk], flags[lo:lo + chunk])
    return index.finish()


def test_row_index_finds_the_same_groups_as_the_in_memory_functions():
    texts = planted_texts()
    index = index_of(texts)
    rows = np.arange(len(texts))
    try:
        assert groups_of(index.exact_first(rows), rows) == exact_groups(texts)
        near = groups_of(index.near_first(rows), rows)
        assert near == near_duplicate_groups(texts)
        assert [g for g in near if g[0] < 200] == [[i, 200 + i] for i in range(40)]
        assert [240, 241, 242] in near  # rows without words group as exact copies only
    finally:
        index.close()


def test_row_index_leaks_match_cross_matches():
    texts = planted_texts()
    train, held = texts[:200], texts[200:]
    index = index_of(texts, held=[False] * 200 + [True] * len(held))
    try:
        found = index.leaks(np.arange(200, len(texts)), np.arange(200))
        ours = [(q - 200, r, s) for q, r, s in zip(*(a.tolist() for a in found))]
    finally:
        index.close()
    assert ours == cross_matches(train, held)
    assert len(ours) == 40 and all(s > 0.9 for _, _, s in ours)


def test_contradictions_name_the_first_row_of_the_prompt():
    examples = [Example(None, "f.jsonl", i + 1, text=t, label=l) for i, (t, l) in
                enumerate([("reset my pin", "account"), ("Reset my PIN!", "account"), ("reset my pin", "card"),
                           ("where is my bill", "billing")])]
    index = RowIndex(near=False)
    index.add(examples, [False] * 4)
    index.finish()
    rows, first = index.contradictions(np.arange(4))
    assert rows.tolist() == [2] and first.tolist() == [0]


def test_finding_log_merges_spilled_runs_in_file_and_line_order(tmp_path):
    rng = random.Random(1)
    made = [Finding(f"{name}.jsonl", rng.randint(1, 50), "", code, severity, "m", "f")
            for name in ("a", "b") for code, severity in (("duplicate", "warning"), ("invalid_json", "error"))
            for _ in range(40)]
    rng.shuffle(made)
    log = FindingLog(str(tmp_path), spill_at=7)
    log.extend(made)
    assert len(list(tmp_path.iterdir())) == len(made) // 7  # the runs went to disk
    out = list(log.sorted())
    assert [(f.file, f.line, f.severity != "error") for f in out] == \
        sorted((f.file, f.line, f.severity != "error") for f in made)
    assert Counter(f.code for f in out) == Counter(f.code for f in made) and len(log) == len(made)
    assert log.errors == sum(f.severity == "error" for f in made)
    log.close()
    assert not list(tmp_path.iterdir())


def big_file(path: Path, n: int) -> Path:
    """Rows i % 20 == 19 copy the row before once normalized; rows i % 20 == 9 repeat it with one word added at
    the end (Jaccard ~0.98: always found); the last line is broken JSON."""
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            prompt, answer = words(25, seed=i) + f" ticket {i}?", words(20, seed=10**6 + i)
            if i % 20 == 19:
                prompt, answer = words(25, seed=i - 1) + f" TICKET {i - 1}!", words(20, seed=10**6 + i - 1)
            elif i % 20 == 9:
                prompt, answer = words(25, seed=i - 1) + f" ticket {i - 1}?", words(20, seed=10**6 + i - 1) + " ok"
            out.write(json.dumps({"prompt": prompt, "completion": answer}) + "\n")
        out.write("{broken\n")
    return path


def test_streamed_check_holds_no_rows_and_agrees_with_the_in_memory_report(tmp_path, monkeypatch):
    path = big_file(tmp_path / "big.jsonl", 5000)
    monkeypatch.setattr(findings_module, "SPILL_AT", 100)  # force the spill path
    streamed = scan([path], folder=str(tmp_path))
    assert streamed.examples is None and streamed.rows == 5001 and streamed.usable == 5000
    listed = list(streamed.findings.sorted())
    streamed.findings.close()
    report = check(str(path))
    assert [(f.line, f.code, f.message) for f in listed] == [(f.line, f.code, f.message) for f in report.findings]
    counts = Counter(f.code for f in listed)
    assert counts["duplicate"] == 250 and counts["near_duplicate"] == 250 and counts["contradiction"] == 250
    assert counts["invalid_json"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]  # no temporary file left behind

    result = cli("data", "check", path, "--json")
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert payload["rows"] == 5001 and len(payload["findings"]) == len(listed)
    assert payload["findings"][-1]["code"] == "invalid_json" and payload["findings"][-1]["line"] == 5001


def test_streamed_clean_equals_the_in_memory_clean_and_accounts_for_every_row(tmp_path):
    path = big_file(tmp_path / "big.jsonl", 3000)
    out = tmp_path / "out" / "clean.jsonl"
    options = CleanOptions(dedup="near")
    result = clean(str(path), out, options)
    assert result.rows_in == 3001 and result.rows_out == 2700
    assert result.removed == Counter({"duplicate": 150, "near_duplicate": 150, "invalid_json": 1})
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    removed = [json.loads(line) for line in (out.parent / "clean.removed.jsonl").read_text().splitlines()]
    assert len(kept) == 2700 and len(removed) == 301
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.jsonl", "clean.removed.jsonl"]

    examples, _findings, _mapping, _rows = read_examples(str(path))
    memory = CleanResult(rows_in=len(examples), rows_out=0)
    clean_examples(examples, CleanOptions(dedup="near"), memory)
    assert [e.to_json() for e in memory.examples] == kept


def test_a_failed_clean_leaves_no_output_and_no_temporary_files(tmp_path, monkeypatch):
    path = big_file(tmp_path / "big.jsonl", 300)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "clean.jsonl").write_text("the previous output\n")

    def fail(self, n):
        raise OSError("disk full")

    # The package re-exports the function `clean`, which shadows the module's dotted name.
    monkeypatch.setattr(importlib.import_module("tunesmith.data.clean")._Survivors, "decide", fail)
    with pytest.raises(OSError, match="disk full"):
        clean(str(path), out_dir / "clean.jsonl", CleanOptions(dedup="near"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["clean.jsonl"]
    assert (out_dir / "clean.jsonl").read_text() == "the previous output\n"
