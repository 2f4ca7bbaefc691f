"""`tunesmith data check`: every problem of a data set, row by row, with the fix."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from tunesmith.data.formats import Example, Finding, read_examples
from tunesmith.errors import DataError

MAX_LISTED = 20  # findings quoted in an error message; the full list is one `data check` away


@dataclass
class CheckReport:
    rows: int
    usable: int
    format: str | None
    findings: list[Finding] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list, repr=False)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_json(self) -> dict:
        return {"rows": self.rows, "usable": self.usable, "format": self.format,
                "findings": [asdict(f) for f in self.findings]}


def _duplicate_findings(examples: list[Example]) -> list[Finding]:
    """Exact duplicate conversations: usable, but they over-weight one answer and can leak into eval."""
    seen: dict[tuple, Example] = {}
    findings = []
    for example in examples:
        key = tuple((m["role"], " ".join(m["content"].split()).casefold()) for m in example.messages)
        first = seen.setdefault(key, example)
        if first is not example:
            findings.append(Finding(example.file, example.line, "messages", "duplicate", "warning",
                                    f"same conversation as line {first.line}", "remove one of the copies",
                                    related_lines=[first.line]))
    return findings


def check(spec: str | list[str], fmt: str = "auto") -> CheckReport:
    examples, findings, detected, rows = read_examples(spec, fmt)
    findings += _duplicate_findings(examples)
    return CheckReport(rows=rows, usable=len(examples), format=detected, findings=findings, examples=examples)


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
                        f"fix or remove those rows (`tunesmith data check {errors[0].file}` lists them all)")
    if not report.examples:
        raise DataError(f"the {role} data holds no usable rows", "add rows in a supported format")
    return report.examples
