"""Exceptions that carry the fix. The CLI turns each into exit code 1 and a one-paragraph message."""

from __future__ import annotations


class TunesmithError(Exception):
    """A user-facing error: what went wrong, where, and how to fix it."""

    def __init__(self, message: str, fix: str | None = None, *, where: str | None = None):
        self.message = message
        self.fix = fix
        self.where = where
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\nFix: {self.fix}"
        return text


class ConfigError(TunesmithError):
    """The project file or a --set override is wrong."""


class DataError(TunesmithError):
    """A data file cannot be read or has rows that cannot be used."""


class ModelError(TunesmithError):
    """A base model cannot be found or loaded."""


class RunDirError(TunesmithError):
    """A run directory is missing a file a stage needs."""


class TrainingError(TunesmithError):
    """Training cannot go on (non-finite loss, no room for checkpoints); the last good checkpoint is kept."""
