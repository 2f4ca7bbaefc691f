"""`tunesmith data check`: every problem of a data set, row by row, with the fix.

Structural problems (unparseable rows, missing fields, wrong types, role order) are errors: those rows cannot
be used. Everything else (duplicates, contradictions, leakage, personal data, placeholders, length, labels,
size) is a warning: the rows are usable, but the user should look.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.findings import FindingLog
from tunesmith.data.formats import GENERATION_FORMATS, Example, FileScan, Finding, Mapping, iter_file
from tunesmith.data.rowindex import RowIndex
from tunesmith.errors import DataError

MAX_LISTED = 20  # findings quoted in an error message; the full list is one `data check` away
MIN_GOOD_EXAMPLES = 500  # the usual guidance for a basic task; several thousand for complex ones
MIN_PER_LABEL = 10  # fewer examples than this per class rarely teach the class
IMBALANCE_RATIO = 20  # largest class / smallest class above this is flagged
HELD_OUT_WORDS = ("test", "eval", "valid", "dev", "holdout")
CHUNK_ROWS = 2048  # rows checked at once: big enough for the tokenizer's batch mode, small enough to stream

QUALITY_FIXES = {
    "duplicate": "remove the copies (`tunesmith data clean` keeps the first)",
    "near_duplicate": "remove the near copies (`tunesmith data clean --dedup near` keeps the first)",
    "contradiction": "make the answers (or labels) of the same prompt agree, or remove the wrong one",
    "leakage": "remove the row from the held-out file, or from train, so the metrics stay honest",
    "too_long": "raise max_seq_len, shorten the row, or let `tunesmith data clean --too-long drop` remove it",
    "few_examples_for_label": "add examples of this label, or merge it into a related one",
    "label_imbalance": "add examples of the rare labels, or set class weights (classification)",
    "label_variants": "spell each label one way (`tunesmith data clean` does not guess which one is right)",
    "too_few_examples": f"aim for at least {MIN_GOOD_EXAMPLES} good examples (several thousand for complex tasks)",
}


@dataclass
class CheckReport:
    rows: int
    usable: int
    format: str | None
    mapping: str | None = None
    findings: list[Finding] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list, repr=False)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_json(self) -> dict:
        return {"rows": self.rows, "usable": self.usable, "format": self.format, "mapping": self.mapping,
                "findings": [asdict(f) for f in self.findings]}


def _warn(example: Example, field_name: str, code: str, message: str, related: list[int] | None = None,
          fix: str | None = None) -> Finding:
    return Finding(example.file, example.line, field_name, code, "warning", message, fix or QUALITY_FIXES[code],
                   related or [])


def _where(example: Example) -> str:
    return f"{example.file}:{example.line}"


def content_findings(examples: list[Example]) -> list[Finding]:
    """One finding per kind of problem per field, quoting the first match and counting the rest."""
    from tunesmith.data.content import FIXES, scan_text

    findings = []
    for example in examples:
        for field_name, text in example.texts():
            by_code: dict[str, list] = defaultdict(list)
            for issue in scan_text(text):
                by_code[issue.code].append(issue)
            for code, issues in by_code.items():
                first = issues[0].match if len(issues[0].match) <= 40 else issues[0].match[:37] + "..."
                more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
                findings.append(_warn(example, field_name, code, f"{issues[0].kind} '{first}'{more}",
                                      fix=FIXES[code]))
    return findings


def is_held_out(path: str) -> bool:
    from pathlib import Path

    stem = Path(path).stem.lower()
    return any(word in stem for word in HELD_OUT_WORDS)


def leakage_findings(train: list[Example], held: list[Example]) -> list[Finding]:
    """Held-out rows whose prompt also appears, exactly or nearly, in train."""
    from tunesmith.data.dedup import cross_matches

    if not train or not held:
        return []
    findings = []
    for query, reference, similarity in cross_matches([e.input_text for e in train], [e.input_text for e in held]):
        kind = "the same prompt as" if similarity >= 1.0 else f"a near copy ({similarity:.0%}) of"
        findings.append(_warn(held[query], "", "leakage", f"{kind} train row {_where(train[reference])}",
                              [train[reference].line]))
    return findings


def length_findings(examples: list[Example], tokenizer, max_seq_len: int) -> list[Finding]:
    """Rows longer than max_seq_len in the model's tokens, and how much truncation would cut."""
    from tunesmith.data.tokenize import rendered_texts

    findings = []
    lengths = token_lengths(tokenizer, rendered_texts(tokenizer, examples))
    for example, length in zip(examples, lengths):
        if length > max_seq_len:
            findings.append(_warn(example, "", "too_long", f"{length} tokens, max_seq_len is {max_seq_len}: "
                                  f"{length - max_seq_len} tokens would be cut"))
    return findings


def token_lengths(tokenizer, texts: list[str], batch_size: int = 1024) -> list[int]:
    lengths: list[int] = []
    for start in range(0, len(texts), batch_size):  # the fast tokenizer's batch mode runs in Rust threads
        encoded = tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        lengths += [len(ids) for ids in encoded]
    return lengths


class LabelTally:
    """Label counts and where each label is first seen, fed row by row."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.first_seen: dict[str, tuple[str, int]] = {}

    def add(self, example: Example) -> None:
        for label in example.labels if example.labels is not None else [example.label]:
            if label is not None:
                self.counts[label] += 1
                self.first_seen.setdefault(label, (example.file, example.line))

    def findings(self) -> list[Finding]:
        counts = self.counts
        if not counts:
            return []

        def warn(label: str, code: str, message: str) -> Finding:
            file, line = self.first_seen[label]
            return Finding(file, line, "label", code, "warning", message, QUALITY_FIXES[code], [])

        findings = []
        variants: dict[str, list[str]] = defaultdict(list)
        for label in counts:
            variants["".join(label.split()).casefold()].append(label)
        for spellings in variants.values():
            if len(spellings) > 1:
                shown = ", ".join(f"'{s}' ({counts[s]})" for s in spellings)
                findings.append(warn(spellings[1], "label_variants",
                                     f"one label spelled {len(spellings)} ways: {shown}"))
        for label, n in counts.items():
            if n < MIN_PER_LABEL:
                findings.append(warn(label, "few_examples_for_label",
                                     f"label '{label}' has only {n} example(s) (fewer than {MIN_PER_LABEL})"))
        (top, top_n), (low, low_n) = counts.most_common(1)[0], counts.most_common()[-1]
        if low_n and top_n / low_n > IMBALANCE_RATIO:
            findings.append(warn(low, "label_imbalance",
                                 f"label '{top}' has {top_n} examples, '{low}' only {low_n} ({top_n / low_n:.0f}:1)"))
        return findings


def label_findings(examples: list[Example]) -> list[Finding]:
    tally = LabelTally()
    for example in examples:
        tally.add(example)
    return tally.findings()


@dataclass
class Scan:
    """A streamed check: counts, the findings (in file/line order via `findings.sorted()`), and the examples
    only when asked for (the pipeline needs them; `data check` on a large file does not)."""

    rows: int
    usable: int
    format: str | None
    mapping: str | None
    findings: FindingLog
    examples: list[Example] | None


def scan(paths: list[Path], fmt: str = "auto", columns: dict[str, str | list[str]] | None = None,
         task: str = "generation", tokenizer=None, max_seq_len: int | None = None, quality: bool = True,
         keep_examples: bool = False, folder: str | None = None) -> Scan:
    """Read and check files in one streaming pass: rows are checked in chunks of CHUNK_ROWS and only compact
    per-row keys (data/rowindex.py) stay for the checks across rows, which run at the end."""
    log = FindingLog(folder)
    held_files = any(is_held_out(str(p)) for p in paths)
    index = RowIndex(near=True, prompts=held_files, folder=folder) if quality else None
    train_labels, all_labels = LabelTally(), LabelTally()
    examples: list[Example] | None = [] if keep_examples else None
    chunk: list[Example] = []
    rows = usable = 0
    mapping: Mapping | None = None

    def flush() -> None:
        if quality and chunk:
            log.extend(content_findings(chunk))
            if tokenizer is not None and max_seq_len:
                log.extend(length_findings(chunk, tokenizer, max_seq_len))
            index.add(chunk, [is_held_out(e.file) for e in chunk])
        chunk.clear()

    try:
        for path in paths:
            file_scan = FileScan(str(path))
            held = is_held_out(str(path))
            for item in iter_file(path, fmt, columns, task, file_scan):
                if isinstance(item, Example):
                    usable += 1
                    chunk.append(item)
                    all_labels.add(item)
                    if not held:
                        train_labels.add(item)
                    if examples is not None:
                        examples.append(item)
                    if len(chunk) >= CHUNK_ROWS:
                        flush()
                else:
                    log.add(item[0])
            flush()
            rows += file_scan.rows
            mapping = mapping or file_scan.mapping
        if quality and usable:
            generation = mapping is not None and mapping.format in GENERATION_FORMATS
            log.extend(_cross_row_findings(index.finish(), generation))
            log.extend((train_labels if train_labels.counts else all_labels).findings())
    except BaseException:
        log.close()
        raise
    finally:
        if index is not None:
            index.close()  # its temporary signature files
    return Scan(rows, usable, mapping.format if mapping else None, mapping.describe() if mapping else None,
                log, examples)


def _cross_row_findings(index: RowIndex, generation: bool) -> Iterator[Finding]:
    """Duplicates and contradictions inside train (and inside the held-out files), leakage across them, and
    the size check: all from the compact index."""
    def warn(row: int, code: str, message: str, related: int) -> Finding:
        return Finding(index.files[index.file[row]], int(index.line[row]), "", code, "warning", message,
                       QUALITY_FIXES[code], [int(index.line[related])])

    held, train = np.flatnonzero(index.held), np.flatnonzero(~index.held)
    # Copies inside train (or inside the held-out files) are duplicates; copies across them are leakage.
    for subset in (train, held):
        if len(subset) < 2:
            continue
        exact = index.exact_first(subset)
        near = index.near_first(subset)
        # Only the rows that repeat another become Python objects: a list per row of the subset would cost
        # ~36 bytes a row for each of them.
        copies = np.flatnonzero(exact != subset)
        for row, first in zip(subset[copies].tolist(), exact[copies].tolist()):
            yield warn(row, "duplicate", f"same row as {index.where(first)}", first)
        close = np.flatnonzero((near != subset) & (exact == subset))
        for row, first in zip(subset[close].tolist(), near[close].tolist()):
            yield warn(row, "near_duplicate", f"nearly the same row as {index.where(first)}", first)
        what = "answer" if generation else "label"
        for row, first in zip(*(a.tolist() for a in index.contradictions(subset))):
            yield warn(row, "contradiction", f"same prompt as {index.where(first)} with a different {what}", first)
    for row, ref, similarity in zip(*(a.tolist() for a in index.leaks(held, train))):
        kind = "the same prompt as" if similarity >= 1.0 else f"a near copy ({similarity:.0%}) of"
        yield warn(row, "leakage", f"{kind} train row {index.where(ref)}", ref)
    if len(train) and len(train) < MIN_GOOD_EXAMPLES:  # held-out files are small on purpose
        yield Finding(index.files[index.file[train[0]]], int(index.line[train[0]]), "", "too_few_examples",
                      "warning", f"{len(train)} usable training rows; the guidance is at least "
                      f"{MIN_GOOD_EXAMPLES} good examples for a basic task", QUALITY_FIXES["too_few_examples"], [])


def check(spec: str | list[str], fmt: str = "auto", columns: dict[str, str | list[str]] | None = None,
          task: str = "generation", tokenizer=None, max_seq_len: int | None = None,
          quality: bool = True) -> CheckReport:
    """Read and check files. Files whose names say test/eval/valid/dev are checked for leakage from the rest."""
    from tunesmith.data.formats import expand_paths

    result = scan(expand_paths(spec), fmt, columns, task, tokenizer, max_seq_len, quality, keep_examples=True)
    try:
        findings = list(result.findings.sorted())
    finally:
        result.findings.close()
    return CheckReport(rows=result.rows, usable=result.usable, format=result.format, mapping=result.mapping,
                       findings=findings, examples=result.examples)


def summarize(findings: list[Finding]) -> str:
    return summarize_counts(Counter((f.severity, f.code) for f in findings))


def summarize_counts(counts: Counter) -> str:
    """'3 duplicate, 1 invalid_json' from {(severity, code): n}, most frequent first."""
    by_code: Counter[str] = Counter()
    for (_, code), n in counts.items():
        by_code[code] += n
    return ", ".join(f"{n} {code}" for code, n in by_code.most_common())


def require_usable(report: CheckReport, role: str) -> list[Example]:
    """The pipeline refuses a data set with unusable rows rather than dropping them behind the user's back."""
    errors = report.errors
    if errors:
        listed = "\n".join("  " + f.render() for f in errors[:MAX_LISTED])
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise DataError(f"the {role} data has {len(errors)} unusable row(s) ({summarize(errors)}):\n{listed}{more}",
                        f"fix or remove those rows (`tunesmith data check {errors[0].file}` lists them all; "
                        "`tunesmith data clean` removes them with a log)")
    if not report.examples:
        raise DataError(f"the {role} data holds no usable rows", "add rows in a supported format")
    return report.examples


__all__ = ["CheckReport", "Mapping", "check", "require_usable", "summarize"]
