"""Run the real `tunesmith` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
