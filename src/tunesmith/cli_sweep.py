"""`tunesmith sweep`: hyperparameter search over ordinary runs (see tunesmith/sweep.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sweep(project: Annotated[Path, typer.Argument(help="The YAML project file (its sweep: section sets the "
                                                       "search space).")],
          trials: Annotated[int, typer.Option("--trials", help="Finished trials the study should hold; running the "
                                                               "command again continues up to this number.")],
          sampler: Annotated[str | None, typer.Option(help="tpe (default), random or grid.")] = None,
          storage: Annotated[str | None, typer.Option(help="Optuna RDB URL shared by workers, e.g. postgresql+"
                                                           "psycopg2://user:pass@host/db (default: an SQLite file "
                                                           "in <output>/sweep/).")] = None,
          study: Annotated[str | None, typer.Option(help="Study name in the storage (default: the project "
                                                         "name).")] = None,
          metric: Annotated[str | None, typer.Option(help="eval_loss (default, fast) or an eval metric such as "
                                                          "rougeL (each trial then generates).")] = None,
          set_: Annotated[list[str] | None, typer.Option("--set", help="Override a project key for every trial, "
                                                                       "e.g. --set train.max_steps=50.")] = None):
    """Search hyperparameters with Optuna: each trial is a run in <output>/sweep/trial-N/; prints a leaderboard
    and writes <output>/sweep/best.yaml and leaderboard.json. Several workers (machines) can share one study with --storage."""
    from tunesmith.console import quiet_libraries
    from tunesmith.errors import ConfigError
    from tunesmith.sweep import run_sweep
    from tunesmith.sweep_report import print_leaderboard

    quiet_libraries()
    overrides = list(set_ or [])
    if sampler is not None:
        if sampler not in ("tpe", "random", "grid"):
            raise ConfigError(f"--sampler '{sampler}' is not known", "use tpe, random or grid", where="--sampler")
        overrides.append(f"sweep.sampler={sampler}")
    if metric is not None:
        overrides.append(f"sweep.metric={metric}")
    result = run_sweep(project, trials, overrides, storage=storage, study_name=study)
    print_leaderboard(result)
