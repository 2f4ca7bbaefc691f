"""`tunesmith data clean`: fix what can be fixed, remove what cannot be used, and account for every row.

rows in = rows out + rows removed, by reason. The input is never edited; the output and the removal log are
written atomically, so a crash leaves neither half-written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunesmith.data.formats import Example, expand_paths, read_examples
from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError
from tunesmith.io import write_jsonl_atomic

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


def _raw_rows(files: set[str]) -> dict[tuple[str, int], dict | None]:
    """The raw rows of the given files by (file, line), to log unusable rows as they were."""
    out: dict[tuple[str, int], dict | None] = {}
    for name in files:
        _read, rows = read_rows(Path(name))
        for raw in rows:
            out[(name, raw.line)] = raw.data
    return out


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


def clean_examples(examples: list[Example], options: CleanOptions, result: CleanResult, tokenizer=None) -> None:
    from tunesmith.data import content
    from tunesmith.data.dedup import exact_groups, near_duplicate_groups

    def remove(example: Example, reason: str, detail: str) -> None:
        result.removed[reason] += 1
        result.removed_rows.append({**example.to_json(), "_reason": reason, "_detail": detail})

    fixes = [("mojibake_fixed", options.fix_mojibake, content.fix_mojibake),
             ("html_stripped", options.strip_html, content.strip_html),
             ("normalized", options.normalize, content.normalize_text)]
    kept: list[Example] = []
    for example in examples:
        for name, enabled, function in fixes:
            if enabled and _map_texts(example, function):
                result.changed[name] += 1
        if options.redact_pii != "off":
            if options.redact_pii == "mask":
                if _map_texts(example, lambda text: content.redact_pii(text)[0]):
                    result.changed["pii_masked"] += 1
            elif any(issue.code.startswith("pii_") for _, text in example.texts() for issue in
                     content.scan_text(text)):
                remove(example, "pii", "the row holds personal data (--redact-pii drop)")
                continue
        if _has_empty_text(example):
            remove(example, "empty_after_cleaning", "a text field is empty once cleaned")
            continue
        kept.append(example)

    if options.dedup != "none":
        whole = [e.input_text + "\n" + e.output_text for e in kept]
        groups = near_duplicate_groups(whole) if options.dedup == "near" else exact_groups(whole)
        drop = {}
        for group in groups:
            for i in group[1:]:
                drop[i] = group[0]
        for i, first in sorted(drop.items()):
            reason = "duplicate" if options.dedup == "exact" else "near_duplicate"
            remove(kept[i], reason, f"copy of {kept[first].file}:{kept[first].line}, which is kept")
        kept = [e for i, e in enumerate(kept) if i not in drop]

    if options.too_long != "keep" and tokenizer is not None and options.max_seq_len:
        from tunesmith.data.check import token_lengths
        from tunesmith.data.tokenize import rendered_texts

        lengths = token_lengths(tokenizer, rendered_texts(tokenizer, kept))
        survivors = []
        for example, length in zip(kept, lengths):
            if length <= options.max_seq_len:
                survivors.append(example)
            elif options.too_long == "drop" or example.messages is not None:
                # Conversations are never cut here: the trainer truncates them and counts it.
                if options.too_long == "drop":
                    remove(example, "too_long", f"{length} tokens > max_seq_len {options.max_seq_len}")
                    continue
                survivors.append(example)
            else:
                ids = tokenizer(example.text, add_special_tokens=False)["input_ids"][:options.max_seq_len]
                example.text = tokenizer.decode(ids)
                result.changed["truncated"] += 1
                survivors.append(example)
        kept = survivors
    result.examples = kept
    result.rows_out = len(kept)


def clean(spec: str | list[str], out: str | Path, options: CleanOptions, fmt: str = "auto",
          columns: dict[str, str] | None = None, task: str = "generation", tokenizer=None) -> CleanResult:
    out = Path(out)
    paths = expand_paths(spec)
    if any(out.resolve() == p.resolve() for p in paths):
        raise DataError(f"the output '{out}' is one of the input files", "write the cleaned data to a new file")
    examples, findings, _mapping, rows = read_examples([str(p) for p in paths], fmt, columns, task)
    result = CleanResult(rows_in=rows, rows_out=0)
    unusable = [f for f in findings if f.severity == "error" and f.code not in FILE_LEVEL_CODES]
    raw = _raw_rows({f.file for f in unusable}) if unusable else {}
    for finding in unusable:
        result.removed[finding.code] += 1
        result.removed_rows.append({"row": raw.get((finding.file, finding.line)), "_source":
                                    f"{finding.file}:{finding.line}", "_reason": finding.code,
                                    "_detail": f"{finding.field}: {finding.message}".lstrip(": ")})
    clean_examples(examples, options, result, tokenizer)
    assert result.rows_in == result.rows_out + sum(result.removed.values()), result.accounting()
    write_jsonl_atomic(out, [e.to_json() for e in result.examples])
    write_jsonl_atomic(out.with_name(f"{out.stem}.removed.jsonl"), result.removed_rows)
    return result
