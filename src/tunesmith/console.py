"""One rich console for all output, and the progress bar every long stage uses."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def progress_bar(*extra_fields: str) -> Progress:
    """A bar with step counts, time, and the training loss and tokens/s when the task carries them."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    columns.append(TextColumn("{task.fields[info]}" if "info" in extra_fields else
                              "loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s"))
    return Progress(*columns, console=console, transient=False)
