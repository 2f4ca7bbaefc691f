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
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing run in the output folder; with "
                                                           "--resume, continue although the config changed.")]
PickleOption = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle-based .bin/.pt base weights "
                                                                  "(they can run code; only for weights you "
                                                                  "trust). Same as model.allow_pickle: true.")]
IgnorePlanOption = Annotated[bool, typer.Option("--ignore-plan", help="Train even when `tunesmith plan` predicts "
                                                                      "the run will not fit in memory.")]


def _config(project: Path, overrides: list[str] | None, allow_pickle: bool = False):
    from tunesmith.config import load_config

    config = load_config(project, overrides or [])
    if allow_pickle:
        config.model.allow_pickle = True
    return config


def _interrupted(card: dict, project: Path) -> bool:
    """After SIGINT/SIGTERM the run stopped at a checkpoint: say how to go on (exit code 0)."""
    stopped = card["train"].get("interrupted")
    if stopped:
        console.print(f"{stopped}: stopped after step {card['train']['steps']}, checkpoint "
                      f"{card['train']['checkpoint']} written; continue with: tunesmith train {project} --resume")
    return bool(stopped)


def _print_metrics(metrics: dict) -> None:
    table = Table(title=f"{metrics['task']}: base vs fine-tuned on {metrics['n']} held-out examples")
    for column in ("metric", "base", "fine-tuned", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, tuned in metrics["finetuned"].items():
        if not isinstance(tuned, (int, float)):
            continue  # e.g. a confusion matrix (docs/evaluation.md); the report draws it
        base, delta = metrics["base"].get(name), metrics["delta"].get(name)
        table.add_row(name, "" if base is None else f"{base:.4f}", f"{tuned:.4f}",
                      "" if delta is None else f"{delta:+.4f}")
    console.print(table)


@app.command()
def run(project: ProjectArg, set_: SetOption = None, resume: ResumeOption = False, force: ForceOption = False,
        allow_pickle: PickleOption = False, ignore_plan: IgnorePlanOption = False):
    """Run the whole pipeline: check and split the data, train, evaluate base vs fine-tuned, write the report."""
    from tunesmith.pipeline import read_run_card, run_project

    config = _config(project, set_, allow_pickle)
    metrics = run_project(config, resume=resume, force=force, ignore_plan=ignore_plan)
    if metrics is None:
        card = read_run_card(Path(config.output))
        _interrupted(card, project)
        console.print(f"(then `tunesmith run {project} --resume` evaluates and reports)")
        return
    if not metrics:
        return  # a torchrun rank other than 0: rank 0 prints the results
    _print_metrics(metrics)
    report_path = Path(config.output) / "report.html"
    console.print(f"run directory: {config.output}" + (f"  (report: {report_path})" if report_path.is_file() else ""))


@app.command()
def train(project: ProjectArg, set_: SetOption = None, resume: ResumeOption = False, force: ForceOption = False,
          allow_pickle: PickleOption = False, ignore_plan: IgnorePlanOption = False):
    """Check and split the data, then fine-tune; writes data/, metrics.jsonl, checkpoints/ and adapter/.
    SIGINT/SIGTERM finish the current step and write a checkpoint; --resume continues from it."""
    from tunesmith.pipeline import train_project

    config = _config(project, set_, allow_pickle)
    card = train_project(config, resume=resume, force=force, ignore_plan=ignore_plan)
    if _interrupted(card, project):
        return
    # full fine-tuning of a classification/regression model writes model/, every other run adapter/
    head = config.task != "generation" and config.model.classifier == "head"
    weights = "model" if head and config.method.kind == "full" else "adapter"
    console.print(f"trained {card['train']['steps']} steps at {card['train']['train_tokens_per_s']:.0f} tokens/s; "
                  f"weights in {Path(config.output) / weights}")


@app.command("eval")
def eval_(run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
          data: Annotated[str | None, typer.Option(help="Evaluate on this file instead of the run's test set.")]
          = None):
    """Generate with the base and the fine-tuned model on held-out data; write eval/metrics.json."""
    from tunesmith.eval.evaluate import evaluate

    _print_metrics(evaluate(None, run_dir, data))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory with eval/metrics.json.")]):
    """Write report.html (self-contained) and report.md: metrics, loss curves, data, examples, forgetting."""
    from tunesmith.report import write_report

    path = write_report(run_dir)
    console.print(f"wrote {path} and {path.with_name('report.md')}")


# Every other verb lives in its own module; `import tunesmith` stays light because they import lazily.
from tunesmith.cli_data import data_app  # noqa: E402
from tunesmith.cli_export import export_command  # noqa: E402
from tunesmith.cli_launch import launch  # noqa: E402
from tunesmith.cli_plan import plan  # noqa: E402
from tunesmith.cli_runs import runs_app  # noqa: E402
from tunesmith.cli_serve import register as register_serving  # noqa: E402  (serve, predict, chat)
from tunesmith.cli_sweep import sweep  # noqa: E402

app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.command()(plan)
app.command("export")(export_command)
app.command()(sweep)
app.command()(launch)
register_serving(app)


def main() -> None:
    try:
        if len(sys.argv) > 1 and sys.argv[1] in ("run", "train", "eval", "plan"):
            from tunesmith.console import quiet_libraries

            quiet_libraries()
        app()
    except TunesmithError as exc:
        from tunesmith.redact import redact_text

        err_console.print(f"[red]error:[/red] {escape(redact_text(exc.render()))}")  # a bad value may be a token
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
