"""`tunesmith data clean`: fix what can be fixed, remove what cannot be used, and account for every row.

rows in = rows out + rows removed, by reason. The input is never edited; the output and the removal log are
written atomically, so a crash leaves neither half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tunesmith.data.formats import Example, FileScan, expand_paths, iter_file
from tunesmith.data.rowindex import RowIndex
from tunesmith.errors import DataError

CHUNK_ROWS = 2048  # rows fed to the dedup index and the tokenizer at once

FILE_LEVEL_CODES = {"bom", "mixed_newlines", "empty_file", "header_only", "bad_header"}


@dataclass
class CleanOptions:
    normalize: bool = True  # Unicode NFC, line endings, runs of spaces
    strip_html: bool = True
    fix_mojibake: bool = True
    redact_pii: Literal["off", "mask", "drop"] = "off"
    dedup: Literal["none", "exact", "near"] = "exact"
    too_long: Literal["keep", "truncate", "drop"] = "keep"  # needs a tokenizer and max_seq_len
    max_seq_len: int | None = None


@dataclass
class CleanResult:
    rows_in: int
    rows_out: int
    removed: Counter = field(default_factory=Counter)  # reason -> rows
    changed: Counter = field(default_factory=Counter)  # fix -> rows changed
    examples: list[Example] = field(default_factory=list, repr=False)
    removed_rows: list[dict] = field(default_factory=list, repr=False)

    def accounting(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.removed.most_common()) or "none"
        fixes = ", ".join(f"{n} {fix}" for fix, n in self.changed.most_common()) or "none"
        return (f"{self.rows_in} rows in = {self.rows_out} out + {sum(self.removed.values())} removed "
                f"({reasons}); rows changed: {fixes}")


def _map_texts(example: Example, function) -> bool:
    """Apply function to every text field in place; True when anything changed."""
    changed = False
    if example.messages is not None:
        for message in example.messages:
            new = function(message["content"])
            changed |= new != message["content"]
            message["content"] = new
    elif example.text is not None:
        new = function(example.text)
        changed |= new != example.text
        example.text = new
    return changed


def _has_empty_text(example: Example) -> bool:
    return any(not text.strip() for _, text in example.texts())


def fix_row(example: Example, options: CleanOptions, result: CleanResult) -> tuple[str, str] | None:
    """Clean one row in place; (reason, detail) when the row must go instead."""
    from tunesmith.data import content

    fixes = [("mojibake_fixed", options.fix_mojibake, content.fix_mojibake),
             ("html_stripped", options.strip_html, content.strip_html),
             ("normalized", options.normalize, content.normalize_text)]
    for name, enabled, function in fixes:
        if enabled and _map_texts(example, function):
            result.changed[name] += 1
    if options.redact_pii == "mask":
        if _map_texts(example, lambda text: content.redact_pii(text)[0]):
            result.changed["pii_masked"] += 1
    elif options.redact_pii == "drop" and any(issue.code.startswith("pii_") for _, text in example.texts()
                                               for issue in content.scan_text(text)):
        return "pii", "the row holds personal data (--redact-pii drop)"
    if _has_empty_text(example):
        return "empty_after_cleaning", "a text field is empty once cleaned"
    return None


class _Survivors:
    """What the cross-row steps need of the rows that survived `fix_row`: the dedup index and token lengths,
    fed in chunks. `decide` then says, per surviving row, drop (reason, detail) or keep (and truncate?)."""

    def __init__(self, options: CleanOptions, tokenizer, folder: str | None):
        self.options, self.tokenizer = options, tokenizer
        self.index = RowIndex(near=options.dedup == "near", folder=folder) if options.dedup != "none" else None
        self.measure = options.too_long != "keep" and tokenizer is not None and bool(options.max_seq_len)
        self._lengths: list[np.ndarray] = []

    def add(self, chunk: list[Example]) -> None:
        if self.index is not None:
            self.index.add(chunk, [False] * len(chunk))
        if self.measure:
            from tunesmith.data.check import token_lengths
            from tunesmith.data.tokenize import rendered_texts

            self._lengths.append(np.array(token_lengths(self.tokenizer, rendered_texts(self.tokenizer, chunk))))

    def decide(self, n: int) -> tuple[dict[int, tuple[str, str]], np.ndarray]:
        """({row: (reason, detail)} for rows to remove, a mask of kept text rows to truncate)."""
        drop: dict[int, tuple[str, str]] = {}
        too_long = np.zeros(n, dtype=bool)
        if self.index is not None:
            index = self.index.finish()
            rows = np.arange(len(index))
            exact = index.exact_first(rows)
            first = index.near_first(rows) if self.options.dedup == "near" else exact
            for row in np.flatnonzero(first != rows).tolist():
                # An exact copy is a "duplicate" in either mode; only the rest are "near_duplicate".
                reason = "duplicate" if exact[row] != row else "near_duplicate"
                drop[row] = reason, f"copy of {index.where(int(first[row]))}, which is kept"
        if self.measure:
            lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
            too_long = lengths > self.options.max_seq_len
            if self.options.too_long == "drop":
                for row in np.flatnonzero(too_long).tolist():
                    drop.setdefault(row, ("too_long", f"{lengths[row]} tokens > max_seq_len "
                                                      f"{self.options.max_seq_len}"))
        return drop, too_long

    def close(self) -> None:
        if self.index is not None:
            self.index.close()  # its signature file

    def truncate(self, record: dict) -> bool:
        """Cut a text row to max_seq_len tokens. Conversations are never cut here: the trainer truncates them
        and counts it."""
        if "messages" in record or self.options.too_long != "truncate":
            return False
        ids = self.tokenizer(record["text"], add_special_tokens=False)["input_ids"][:self.options.max_seq_len]
        record["text"] = self.tokenizer.decode(ids)
        return True


def clean_examples(examples: list[Example], options: CleanOptions, result: CleanResult, tokenizer=None) -> None:
    """Clean rows held in memory (the pipeline's path; `clean` streams files through the same steps)."""
    kept: list[Example] = []
    for example in examples:
        removal = fix_row(example, options, result)
        if removal:
            result.removed[removal[0]] += 1
            result.removed_rows.append({**example.to_json(), "_reason": removal[0], "_detail": removal[1]})
        else:
            kept.append(example)
    survivors = _Survivors(options, tokenizer, None)
    try:
        for lo in range(0, len(kept), CHUNK_ROWS):
            survivors.add(kept[lo:lo + CHUNK_ROWS])
        drop, too_long = survivors.decide(len(kept))
    finally:
        survivors.close()
    result.examples = []
    for i, example in enumerate(kept):
        if i in drop:
            result.removed[drop[i][0]] += 1
            result.removed_rows.append({**example.to_json(), "_reason": drop[i][0], "_detail": drop[i][1]})
        else:
            if too_long[i] and example.messages is None and options.too_long == "truncate":
                ids = tokenizer(example.text, add_special_tokens=False)["input_ids"][:options.max_seq_len]
                example.text = tokenizer.decode(ids)
                result.changed["truncated"] += 1
            result.examples.append(example)
    result.rows_out = len(result.examples)


def clean(spec: str | list[str], out: str | Path, options: CleanOptions, fmt: str = "auto",
          columns: dict[str, str | list[str]] | None = None, task: str = "generation", tokenizer=None) -> CleanResult:
    """Stream the files through the fixes into a staging file beside OUT (only compact per-row keys stay in
    memory), decide the cross-row removals, then stream the staging file into OUT and the removal log.
    Both appear at once, by rename, when everything has been written."""
    out = Path(out)
    paths = expand_paths(spec)
    if any(out.resolve() == p.resolve() for p in paths):
        raise DataError(f"the output '{out}' is one of the input files", "write the cleaned data to a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    removed_path = out.with_name(f"{out.stem}.removed.jsonl")
    result = CleanResult(rows_in=0, rows_out=0)
    survivors = _Survivors(options, tokenizer, str(out.parent))
    temporary = [_temp_beside(out) for _ in range(3)]
    (stage_path, stage), (removed_tmp, removed_log), (out_tmp, out_file) = temporary
    try:
        def remove(record: dict, reason: str, detail: str) -> None:
            result.removed[reason] += 1
            removed_log.write(json.dumps({**record, "_reason": reason, "_detail": detail}, ensure_ascii=False)
                              + "\n")

        chunk: list[Example] = []

        def flush() -> None:
            survivors.add(chunk)
            for example in chunk:
                stage.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
            chunk.clear()

        for path in paths:
            file_scan = FileScan(str(path))
            for item in iter_file(path, fmt, columns, task, file_scan):
                if isinstance(item, Example):
                    removal = fix_row(item, options, result)
                    if removal:
                        remove(item.to_json(), *removal)
                        continue
                    chunk.append(item)
                    if len(chunk) >= CHUNK_ROWS:
                        flush()
                    continue
                finding, raw = item
                if finding.severity == "error" and finding.code not in FILE_LEVEL_CODES:
                    remove({"row": raw, "_source": f"{finding.file}:{finding.line}"}, finding.code,
                           f"{finding.field}: {finding.message}".lstrip(": "))
            flush()
            result.rows_in += file_scan.rows
        stage.close()
        n = sum(1 for _ in open(stage_path, encoding="utf-8"))
        drop, too_long = survivors.decide(n)
        with open(stage_path, encoding="utf-8") as staged:
            for i, line in enumerate(staged):
                if i in drop:
                    remove(json.loads(line), *drop[i])
                    continue
                if too_long[i]:
                    record = json.loads(line)
                    if survivors.truncate(record):
                        result.changed["truncated"] += 1
                        line = json.dumps(record, ensure_ascii=False) + "\n"
                out_file.write(line)
                result.rows_out += 1
        assert result.rows_in == result.rows_out + sum(result.removed.values()), result.accounting()
        for handle in (removed_log, out_file):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        os.replace(out_tmp, out)
        os.replace(removed_tmp, removed_path)
    finally:
        survivors.close()
        for path, handle in temporary:
            handle.close()
            Path(path).unlink(missing_ok=True)
    return result


def _temp_beside(out: Path):
    handle, path = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    return path, os.fdopen(handle, "w", encoding="utf-8")
