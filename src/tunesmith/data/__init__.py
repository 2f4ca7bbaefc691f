"""Data stage: formats → check → split → tokenize → batching. `tunesmith.data.check(path)` mirrors the CLI."""

from __future__ import annotations


def check(spec, fmt: str = "auto"):
    from tunesmith.data.check import check as _check

    return _check(spec, fmt)
