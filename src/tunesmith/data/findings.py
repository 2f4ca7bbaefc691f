"""Findings of a streamed check, kept in file and line order without holding them all: past SPILL_AT they
are sorted and written to a temporary run file, and reading merges the runs (an external sort), so a check
of a file with a finding on every one of its millions of rows stays within a bounded memory."""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from tunesmith.data.formats import Finding

SPILL_AT = 50_000  # findings held before a sorted run goes to disk (~25 MB of Finding objects)


def _order(finding: Finding) -> tuple:
    return finding.file, finding.line, finding.severity != "error"


class FindingLog:
    def __init__(self, folder: str | None = None, spill_at: int = SPILL_AT):
        self.counts: Counter[tuple[str, str]] = Counter()  # (severity, code) -> findings
        self._held: list[Finding] = []
        self._runs: list[str] = []
        self._folder, self._spill_at = folder, spill_at

    def add(self, finding: Finding) -> None:
        self.counts[(finding.severity, finding.code)] += 1
        self._held.append(finding)
        if len(self._held) >= self._spill_at:
            self._spill()

    def extend(self, findings) -> None:
        for finding in findings:
            self.add(finding)

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def errors(self) -> int:
        return sum(n for (severity, _), n in self.counts.items() if severity == "error")

    def _spill(self) -> None:
        handle, path = tempfile.mkstemp(prefix=".tunesmith-findings-", suffix=".jsonl", dir=self._folder)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for finding in sorted(self._held, key=_order):
                out.write(json.dumps(asdict(finding), ensure_ascii=False) + "\n")
        self._runs.append(path)
        self._held = []

    def sorted(self) -> Iterator[Finding]:
        """Every finding, ordered by file, line, errors first (stable within a row)."""
        def read(path: str) -> Iterator[Finding]:
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    yield Finding(**json.loads(line))

        held = sorted(self._held, key=_order)
        yield from heapq.merge(*(read(p) for p in self._runs), held, key=_order)

    def close(self) -> None:
        for path in self._runs:
            Path(path).unlink(missing_ok=True)
        self._runs = []
