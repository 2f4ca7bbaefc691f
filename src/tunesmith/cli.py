"""The `tunesmith` command line. Exit codes: 0 success, 1 a user error (a message naming the file, the field
and the fix; no traceback), 2 bad usage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.console import console, err_console
from tunesmith.errors import TunesmithError

app = typer.Typer(help="Fine-tune, evaluate and report on language models from one YAML project file.",
                  pretty_exceptions_enable=False, no_args_is_help=True, add_completion=False)

SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a project key, e.g. --set "
                                                                   "train.epochs=1 (repeatable).")]
ProjectArg = Annotated[Path, typer.Argument(help="The YAML project file.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing run in the output folder.")]


def _config(project: Path, overrides: list[str] | None):
    from tunesmith.config import load_config

    return load_config(project, overrides or [])


def _print_metrics(metrics: dict) -> None:
    table = Table(title=f"{metrics['task']}: base vs fine-tuned on {metrics['n']} held-out examples")
    for column in ("metric", "base", "fine-tuned", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, tuned in metrics["finetuned"].items():
        base, delta = metrics["base"].get(name), metrics["delta"].get(name)
        table.add_row(name, "" if base is None else f"{base:.4f}", f"{tuned:.4f}",
                      "" if delta is None else f"{delta:+.4f}")
    console.print(table)


@app.command()
def run(project: ProjectArg, set_: SetOption = None, resume: ResumeOption = False, force: ForceOption = False):
    """Run the whole pipeline: check and split the data, train, evaluate base vs fine-tuned, write the report."""
    from tunesmith.pipeline import run_project

    config = _config(project, set_)
    metrics = run_project(config, resume=resume, force=force)
    _print_metrics(metrics)
    console.print(f"run directory: {config.output}  (report: {Path(config.output) / 'report.md'})")


@app.command()
def train(project: ProjectArg, set_: SetOption = None, resume: ResumeOption = False, force: ForceOption = False):
    """Check and split the data, then fine-tune; writes data/, metrics.jsonl, checkpoints/ and adapter/."""
    from tunesmith.pipeline import train_project

    config = _config(project, set_)
    card = train_project(config, resume=resume, force=force)
    console.print(f"trained {card['train']['steps']} steps at {card['train']['train_tokens_per_s']:.0f} tokens/s; "
                  f"adapter in {Path(config.output) / 'adapter'}")


@app.command("eval")
def eval_(run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
          data: Annotated[str | None, typer.Option(help="Evaluate on this file instead of the run's test set.")]
          = None):
    """Generate with the base and the fine-tuned model on held-out data; write eval/metrics.json."""
    from tunesmith.eval.evaluate import evaluate

    _print_metrics(evaluate(None, run_dir, data))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory with eval/metrics.json.")]):
    """Write report.md (metric table, loss curve, examples side by side) from a run directory."""
    from tunesmith.report import write_report

    console.print(f"wrote {write_report(run_dir)}")


from tunesmith.cli_data import data_app  # noqa: E402  (the data verbs live in their own module)
from tunesmith.cli_export import export_command  # noqa: E402

app.add_typer(data_app, name="data")
app.command("export")(export_command)


def main() -> None:
    try:
        if len(sys.argv) > 1 and sys.argv[1] in ("run", "train", "eval"):
            from tunesmith.console import quiet_libraries

            quiet_libraries()
        app()
    except TunesmithError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.render())}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
