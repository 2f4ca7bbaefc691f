"""`tunesmith data check`: every problem of a data set, row by row, with the fix.

Structural problems (unparseable rows, missing fields, wrong types, role order) are errors: those rows cannot
be used. Everything else (duplicates, contradictions, leakage, personal data, placeholders, length, labels,
size) is a warning: the rows are usable, but the user should look.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from tunesmith.data.formats import Example, Finding, Mapping, read_examples
from tunesmith.errors import DataError

MAX_LISTED = 20  # findings quoted in an error message; the full list is one `data check` away
MIN_GOOD_EXAMPLES = 500  # the usual guidance for a basic task; several thousand for complex ones
MIN_PER_LABEL = 10  # fewer examples than this per class rarely teach the class
IMBALANCE_RATIO = 20  # largest class / smallest class above this is flagged
HELD_OUT_WORDS = ("test", "eval", "valid", "dev", "holdout")

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


def duplicate_findings(examples: list[Example]) -> list[Finding]:
    """Exact and near duplicates of whole rows, and contradictions: one prompt, different answers or labels."""
    from tunesmith.data.dedup import exact_groups, near_duplicate_groups, normalize_for_match

    if len(examples) < 2:
        return []
    findings = []
    whole = [e.input_text + "\n" + e.output_text for e in examples]
    exact_of: dict[int, int] = {}
    for group in exact_groups(whole):
        for i in group[1:]:
            exact_of[i] = group[0]
            findings.append(_warn(examples[i], "", "duplicate", f"same row as {_where(examples[group[0]])}",
                                  [examples[group[0]].line]))
    for group in near_duplicate_groups(whole):
        for i in group[1:]:
            if exact_of.get(i) is None:
                findings.append(_warn(examples[i], "", "near_duplicate",
                                      f"nearly the same row as {_where(examples[group[0]])}", [examples[group[0]].line]))
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_prompt[normalize_for_match(example.input_text)].append(i)
    for members in by_prompt.values():
        first = members[0]
        answer = normalize_for_match(examples[first].output_text)
        for i in members[1:]:
            if normalize_for_match(examples[i].output_text) != answer:
                what = "label" if examples[i].messages is None else "answer"
                findings.append(_warn(examples[i], "", "contradiction",
                                      f"same prompt as {_where(examples[first])} with a different {what}",
                                      [examples[first].line]))
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


def label_findings(examples: list[Example]) -> list[Finding]:
    counts: Counter[str] = Counter()
    first_seen: dict[str, Example] = {}
    for example in examples:
        for label in example.labels if example.labels is not None else [example.label]:
            if label is not None:
                counts[label] += 1
                first_seen.setdefault(label, example)
    if not counts:
        return []
    findings = []
    variants: dict[str, list[str]] = defaultdict(list)
    for label in counts:
        variants["".join(label.split()).casefold()].append(label)
    for spellings in variants.values():
        if len(spellings) > 1:
            shown = ", ".join(f"'{s}' ({counts[s]})" for s in spellings)
            findings.append(_warn(first_seen[spellings[1]], "label", "label_variants",
                                  f"one label spelled {len(spellings)} ways: {shown}"))
    for label, n in counts.items():
        if n < MIN_PER_LABEL:
            findings.append(_warn(first_seen[label], "label", "few_examples_for_label",
                                  f"label '{label}' has only {n} example(s) (fewer than {MIN_PER_LABEL})"))
    (top, top_n), (low, low_n) = counts.most_common(1)[0], counts.most_common()[-1]
    if low_n and top_n / low_n > IMBALANCE_RATIO:
        findings.append(_warn(first_seen[low], "label", "label_imbalance",
                              f"label '{top}' has {top_n} examples, '{low}' only {low_n} ({top_n / low_n:.0f}:1)"))
    return findings


def check(spec: str | list[str], fmt: str = "auto", columns: dict[str, str] | None = None,
          task: str = "generation", tokenizer=None, max_seq_len: int | None = None,
          quality: bool = True) -> CheckReport:
    """Read and check files. Files whose names say test/eval/valid/dev are checked for leakage from the rest."""
    from tunesmith.data.formats import expand_paths

    paths = expand_paths(spec)
    examples, findings, mapping, rows = read_examples([str(p) for p in paths], fmt, columns, task)
    report = CheckReport(rows=rows, usable=len(examples), format=mapping.format if mapping else None,
                         mapping=mapping.describe() if mapping else None, findings=findings, examples=examples)
    if quality and examples:
        held = [e for e in examples if is_held_out(e.file)]
        train = [e for e in examples if not is_held_out(e.file)]
        report.findings += content_findings(examples)
        # Copies inside train (or inside the held-out files) are duplicates; copies across them are leakage.
        report.findings += duplicate_findings(train) + duplicate_findings(held)
        report.findings += leakage_findings(train, held)
        report.findings += label_findings(train or examples)
        if tokenizer is not None and max_seq_len:
            report.findings += length_findings(examples, tokenizer, max_seq_len)
        if train and len(train) < MIN_GOOD_EXAMPLES:  # held-out files are small on purpose
            report.findings.append(_warn(train[0], "", "too_few_examples",
                                         f"{len(train)} usable training rows; the guidance is at least "
                                         f"{MIN_GOOD_EXAMPLES} good examples for a basic task"))
    report.findings.sort(key=lambda f: (f.file, f.line, f.severity != "error"))
    return report


def summarize(findings: list[Finding]) -> str:
    counts = Counter(f.code for f in findings)
    return ", ".join(f"{n} {code}" for code, n in counts.most_common())


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
