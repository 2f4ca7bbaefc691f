"""What stops a training run safely: SIGINT/SIGTERM (finish the step, checkpoint, exit 0), non-finite loss or
gradients (skip the update, stop after train.max_bad_steps in a row), and an output folder that cannot hold
the checkpoints (refused before the first step)."""

from __future__ import annotations

import math
import shutil
import signal
import threading
from pathlib import Path

from tunesmith.console import err_console
from tunesmith.errors import RunDirError, TrainingError


class StopRequest:
    """While active, SIGINT and SIGTERM set `.signal` instead of killing the process, so the loop can finish
    the optimizer step it is in and write a checkpoint. A second Ctrl-C stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        err_console.print(f"{self.signal} received: finishing this step, then writing a checkpoint "
                          "(Ctrl-C again to stop at once, without one)")

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be set from the main thread (a sweep may train in another one).
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class BadStepGuard:
    """Counts optimizer steps in a row whose loss or gradient norm is NaN/inf; those steps are skipped."""

    def __init__(self, limit: int, in_a_row: int = 0) -> None:
        self.limit = limit
        self.in_a_row = in_a_row

    def finite(self, loss: float, grad_norm: float) -> bool:
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        self.in_a_row = 0 if ok else self.in_a_row + 1
        return ok

    def check(self, step: int, lr: float, loss: float, grad_norm: float, last_checkpoint: str | None) -> None:
        """Warn about a skipped step; raise once more than `limit` steps in a row were skipped."""
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        value = loss if what == "loss" else grad_norm
        if self.in_a_row <= self.limit:
            err_console.print(f"[yellow]warning: step {step}: the {what} is not finite ({value}); "
                              f"the update is skipped ({self.in_a_row} in a row, train.max_bad_steps={self.limit})"
                              "[/yellow]")
            return
        kept = f"the last good checkpoint, {last_checkpoint}, is intact" if last_checkpoint else \
            "no checkpoint was written yet"
        raise TrainingError(f"training stopped at step {step}: the {what} was NaN or infinite for "
                            f"{self.in_a_row} steps in a row (more than train.max_bad_steps={self.limit}) at "
                            f"learning rate {lr:.3g}; {kept}",
                            f"lower train.lr (e.g. {lr / 4:.2g}), check the data for broken or extreme rows "
                            "(`tunesmith data check FILE`), or set train.precision: fp32; then continue with "
                            "--resume --force (the config changed) or start again with --force")


def checkpoint_bytes(model) -> int:
    """Expected size of one checkpoint: the trainable weights plus AdamW's two moments per weight (fp32), so a
    LoRA with 1.2M trainable parameters takes 1.2M x (4 + 2 x 4) bytes = 14 MB."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += p.numel() * (p.element_size() + 2 * 4)
    return total


def check_output_room(run_dir: Path, needed_bytes: int) -> None:
    """Refuse to start when the checkpoint folder cannot be written or lacks room for two checkpoints (the one
    being written while the previous one is kept)."""
    folder = run_dir / "checkpoints"
    probe = folder / ".write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to the output folder '{folder}': {exc.strerror or exc}",
                          "set output to a folder you can write to (--set output=runs/NAME)") from None
    free = shutil.disk_usage(folder).free
    if free < 2 * needed_bytes:
        raise RunDirError(f"not enough free disk space for checkpoints in '{folder}': {free / 2**20:,.1f} MiB "
                          f"free, {2 * needed_bytes / 2**20:,.1f} MiB needed (two checkpoints of "
                          f"{needed_bytes / 2**20:,.1f} MiB: trainable weights + optimizer state)",
                          "free disk space, or set output to a folder on a larger disk (--set output=PATH)")
