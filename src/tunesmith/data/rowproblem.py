"""The exception a row parser raises for a row that cannot be used; data/formats.py turns it into a Finding with
the file and line (data/targets.py raises it too, so it lives apart from both)."""

from __future__ import annotations


class RowProblem(Exception):
    def __init__(self, field_name: str, code: str, message: str, fix: str | None = None):
        super().__init__(message)
        self.field_name, self.code, self.message = field_name, code, message
        self.fix = fix  # None: the code's usual fix (FIXES)
