"""One rich console for all output, and the progress bar every long stage uses."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=False, highlight=False, soft_wrap=True)  # no hard wraps in logs and pipes
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def progress_bar(*extra_fields: str) -> Progress:
    """A bar with step counts, time, and the training loss and tokens/s when the task carries them."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    columns.append(TextColumn("{task.fields[info]}" if "info" in extra_fields else
                              "loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s"))
    return Progress(*columns, console=console, transient=False)


def quiet_libraries() -> None:
    """Our own progress bars replace the libraries' per-file bars and deprecation chatter."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*(gradient_checkpointing|generation flags).*")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
