"""`tunesmith sweep`: hyperparameter search with Optuna over ordinary runs.

Each trial is the project with a few `--set` overrides, trained into `<output>/sweep/trial-<n>/` (a normal run
directory, so `tunesmith runs compare` reads it). The study lives in an Optuna RDB storage: by default
`<output>/sweep/sweep.db` (SQLite), so running the command again continues the study; any RDB URL
(PostgreSQL, MySQL) lets workers on several machines share one study.

Three guarantees, and how they are kept:
- no trial runs twice: the storage hands out trial numbers in one transaction, and the run directory is named
  after the number;
- N means N: before each trial a worker counts the finished (complete or pruned) and running trials; a trial
  created in the race between two workers that both saw N-1 is dropped at once (FAIL, user attr "surplus");
- a dead worker's trial does not stay RUNNING: each trial beats a heartbeat into the storage, and a worker
  fails trials whose heartbeat is older than the grace period before it counts.
"""

from __future__ import annotations

import json
import math
import random
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith.config import ProjectConfig, SweepParam, load_config
from tunesmith.console import console
from tunesmith.errors import ConfigError, RunDirError, TunesmithError
from tunesmith.io import write_json_atomic, write_text_atomic

LOWER_IS_BETTER = {"eval_loss", "perplexity", "mse", "mae"}
MAX_FAILURES_IN_A_ROW = 3  # a trial that crashes for its params is noise; three in a row is a broken setup
ATTEMPTS = 6  # opening a new study database while other workers create it
GRID_POINTS = 3  # a low/high range under the grid sampler becomes low, middle, high


class SweepError(TunesmithError):
    """A sweep cannot start or keeps failing."""


@dataclass
class Sweep:
    """What every trial of one worker shares."""

    project: Path
    overrides: list[str]
    base: ProjectConfig
    folder: Path
    space: dict[str, SweepParam]
    trials: int
    direction: str
    last_error: BaseException | None = None


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("optuna is not installed", "pip install 'optuna>=4' (tunesmith's own dependencies "
                         "include it; reinstall tunesmith)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print our own one-line trial results
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_space(config: ProjectConfig) -> dict[str, SweepParam]:
    """The search space when the project sets none: a decade either side of the task's lr (log scale: lr matters
    by factors, not by steps), the usual LoRA ranks 8-32 with alpha 16-64 (alpha/r from 0.5 to 8), 1-3 epochs."""
    lr = config.train.lr or 2.0e-4
    space = {"train.lr": SweepParam(low=lr / 10, high=lr * 10, log=True)}
    if config.method.kind != "full":
        space["method.r"] = SweepParam(choices=[8, 16, 32])
        space["method.lora_alpha"] = SweepParam(choices=[16, 32, 64])
    space["train.epochs"] = SweepParam(choices=[1, 2, 3])
    return space


def resolve_direction(config: ProjectConfig) -> str:
    if config.sweep.direction != "auto":
        return config.sweep.direction
    return "minimize" if config.sweep.metric in LOWER_IS_BETTER else "maximize"


def _check_metric(config: ProjectConfig) -> None:
    metric = config.sweep.metric
    known = ["eval_loss"] + list(config.eval.metrics if isinstance(config.eval.metrics, list) else [])
    if metric not in known:
        raise ConfigError(f"sweep.metric '{metric}' is not measured by this project",
                          f"use one of: {', '.join(known)} (eval_loss needs no generation, so it is the fastest)",
                          where="sweep.metric")


def _is_int_key(dotted: str) -> bool:
    """Whether a project key holds an int (method.r) rather than a float (train.lr): decides suggest_int."""
    section, key = dotted.rsplit(".", 1)
    model = ProjectConfig
    for part in section.split("."):
        model = model.model_fields[part].annotation
    annotation = model.model_fields[key].annotation
    return annotation is int or getattr(annotation, "__args__", ()) == (int, type(None))


def grid_values(name: str, param: SweepParam) -> list:
    """The points the grid sampler visits for one key."""
    if param.choices is not None:
        return list(param.choices)
    integer = _is_int_key(name)
    if param.step is not None:
        count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
        points = [param.low + i * param.step for i in range(count)]
    elif param.log:
        ratio = (param.high / param.low) ** (1 / (GRID_POINTS - 1))
        points = [param.low * ratio ** i for i in range(GRID_POINTS)]
    else:
        points = [param.low + (param.high - param.low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    return sorted({int(round(p)) for p in points}) if integer else [float(f"{p:.6g}") for p in points]


def suggest(trial, space: dict[str, SweepParam], grid: bool) -> dict:
    values = {}
    for name, param in space.items():
        if grid or param.choices is not None:
            values[name] = trial.suggest_categorical(name, grid_values(name, param) if grid else param.choices)
        elif _is_int_key(name):
            values[name] = trial.suggest_int(name, int(param.low), int(param.high), log=param.log,
                                             step=max(1, round(param.step or 1)))
        else:
            values[name] = trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
    return values


def _yaml_scalar(value) -> str:
    # PyYAML writes 1e-05 as 1.0e-05: the form YAML 1.1 reads back as a float (plain "1e-05" is a string).
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def trial_config(sweep: Sweep, values: dict, name: str, output: Path) -> ProjectConfig:
    """The project with a trial's values applied through --set, the same path a user's overrides take."""
    sets = [f"{key}={_yaml_scalar(value)}" for key, value in values.items()]
    config = load_config(sweep.project, sweep.overrides + sets + [f"name={name}", f"output={output}"])
    train = config.train
    if train.global_batch_size % train.micro_batch_size:
        # micro_batch_size is a memory cap: the largest divisor of the global batch under it gives the same
        # optimizer step (global 24, micro 16 -> micro 12 x 2 accumulation) without ever needing more memory.
        train.micro_batch_size = max(d for d in range(1, train.micro_batch_size + 1)
                                     if train.global_batch_size % d == 0)
    return config


def _eval_position(run_dir: Path, step: int) -> int:
    """Where an evaluation happened, in thousandths of an epoch: trials with different batch sizes take
    different numbers of steps per epoch, and the median pruner compares trials at equal positions."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        for line in reversed(lines):
            record = json.loads(line)
            if "eval_loss" in record and record["step"] == step and "epoch" in record:
                return int(round(record["epoch"] * 1000))
    except (OSError, ValueError):
        pass
    return step


def _live_before(study, number: int | None = None) -> int:
    """Trials that count toward N: finished (complete or pruned) or still running."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False, states=counted)
    return sum(1 for t in trials if number is None or t.number < number)


def _objective(sweep: Sweep, trial) -> float:
    import optuna

    from tunesmith.pipeline import train_project

    if _live_before(trial.study, trial.number) >= sweep.trials:
        trial.set_user_attr("surplus", True)  # another worker took the last slot while this one asked
        raise _Surplus()
    values = suggest(trial, sweep.space, sweep.base.sweep.sampler == "grid")
    run_dir = sweep.folder / f"trial-{trial.number}"
    trial.set_user_attr("run_dir", str(run_dir))
    console.print(f"[bold]trial {trial.number}[/bold]: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
    if run_dir.exists() and any(run_dir.iterdir()):
        error = RunDirError(f"'{run_dir}' already holds a run that is not trial {trial.number} of study "
                            f"'{trial.study.study_name}' (the study's storage was replaced, or another study uses "
                            "this folder)", "delete the sweep folder's trial-* folders, or give the sweep another "
                            "output with --set output=runs/NEW")
        sweep.last_error = error  # not _record_failure: that folder is not ours to write in
        trial.set_user_attr("error", error.render()[:500])
        raise error
    sign = 1.0 if sweep.direction == "minimize" else -1.0  # pruning watches eval loss; flip it for maximize
    state = {"loss": None, "pruned": False}

    def on_eval(step: int, eval_loss: float) -> bool:
        state["loss"] = eval_loss
        trial.report(sign * eval_loss, _eval_position(run_dir, step))
        state["pruned"] = trial.should_prune()
        return state["pruned"]

    try:
        config = trial_config(sweep, values, f"{sweep.base.name}-trial-{trial.number}", run_dir)
        train_project(config, on_eval=on_eval)
        if state["pruned"]:
            _write_trial(run_dir, trial, "PRUNED", None, sweep)
            raise optuna.TrialPruned(f"eval loss {state['loss']:.4f}")
        if sweep.base.sweep.metric == "eval_loss":
            if state["loss"] is None:
                raise SweepError("training finished without a held-out evaluation",
                                 "give eval data (data.eval, or data.eval_fraction > 0)")
            value = state["loss"]
        else:
            from tunesmith.eval.evaluate import evaluate

            value = evaluate(config, run_dir)["finetuned"][sweep.base.sweep.metric]
    except optuna.TrialPruned:
        raise
    except BaseException as exc:
        _record_failure(run_dir, trial, exc, sweep)
        raise
    _write_trial(run_dir, trial, "COMPLETE", value, sweep)
    return value


class _Surplus(Exception):
    pass


def _record_failure(run_dir: Path, trial, exc: BaseException, sweep: Sweep) -> None:
    sweep.last_error = exc
    message = exc.render() if isinstance(exc, TunesmithError) else f"{type(exc).__name__}: {exc}"
    trial.set_user_attr("error", message[:500])
    if run_dir.is_dir():
        write_text_atomic(run_dir / "error.txt", "".join(traceback.format_exception(exc)))
        _write_trial(run_dir, trial, "FAIL", None, sweep)


def _write_trial(run_dir: Path, trial, state: str, value, sweep: Sweep) -> None:
    """trial.json beside the run: `tunesmith runs list` shows the trial's state without the storage."""
    write_json_atomic(run_dir / "trial.json", {"study": trial.study.study_name, "number": trial.number,
                                               "state": state, "metric": sweep.base.sweep.metric, "value": value,
                                               "params": trial.params})


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _storage(url: str, config: ProjectConfig):
    import optuna
    import sqlalchemy.exc

    def stale(study, trial) -> None:
        console.print(f"[yellow]trial {trial.number} stopped beating (its worker died): marked FAIL[/yellow]")

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # wait out locks
    # Workers that open a new database at the same moment all try to create its tables and stamp its schema
    # version; the losers see "already exists" or a unique-constraint error. Each step checks what is there
    # first, so a loser retries after a pause and finds the winner's schema.
    for attempt in range(ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=config.sweep.heartbeat_interval_s,
                grace_period=config.sweep.grace_period_s, heartbeat_stale_trial_callback=stale)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as exc:
            text = str(getattr(exc, "orig", exc))
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or any(
                w in text.lower() for w in ("locked", "already exists", "duplicate"))
            if attempt == ATTEMPTS - 1 or not racing:
                fix = ("check that the folder of the SQLite file exists and is writable" if url.startswith("sqlite")
                       else "check that the database server is reachable and the URL's user, password and "
                            "database are right")
                raise SweepError(f"cannot open the study storage '{_hide_password(url)}': {text}", fix) from None
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))  # jitter: racing workers must not retry in step
        except (sqlalchemy.exc.ArgumentError, ImportError, ModuleNotFoundError) as exc:
            raise SweepError(f"cannot use the study storage '{_hide_password(url)}': {exc}",
                             "pass an SQLAlchemy URL such as sqlite:///sweep.db or "
                             "postgresql+psycopg2://user:pass@host/db, and install its driver "
                             "(pip install psycopg2-binary, or pymysql for mysql+pymysql://)") from None


def _hide_password(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':')[0]}:***@{host}"
    return url


def _sampler(config: ProjectConfig, space: dict[str, SweepParam]):
    import optuna

    kind, seed = config.sweep.sampler, config.sweep.seed
    if kind == "grid":
        return optuna.samplers.GridSampler({k: grid_values(k, p) for k, p in space.items()}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: workers sharing a study treat each other's running trials as bad results, so they do not
    # all sample the same promising point.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(config: ProjectConfig, direction: str):
    import optuna

    cfg = config.sweep
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.pruner == "threshold":
        if cfg.prune_threshold is None:
            raise ConfigError("sweep.pruner is 'threshold' but sweep.prune_threshold is not set",
                              "set sweep.prune_threshold to the eval loss above which a trial stops, e.g. 2.5",
                              where="sweep.prune_threshold")
        # Reported values are -eval_loss when the study maximizes (see _objective), so the bound flips too.
        if direction == "minimize":
            return optuna.pruners.ThresholdPruner(upper=cfg.prune_threshold)
        return optuna.pruners.ThresholdPruner(lower=-cfg.prune_threshold)
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup_trials)


def sweep_folder(config: ProjectConfig) -> Path:
    return Path(config.output).resolve() / "sweep"


def open_study(config: ProjectConfig, storage: str | None, study_name: str | None, space: dict[str, SweepParam]):
    optuna = _optuna()
    folder = sweep_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{folder / 'sweep.db'}"
    direction = resolve_direction(config)
    study = optuna.create_study(storage=_storage(url, config), sampler=_sampler(config, space),
                                pruner=_pruner(config, direction), study_name=study_name or config.name,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study '{study.study_name}' in '{_hide_password(url)}' was created to "
                          f"{study.direction.name.lower()}, but this sweep would {direction} {config.sweep.metric}",
                          "keep sweep.metric and sweep.direction as they were, or start a new study (--study NAME)")
    return study


def run_sweep(project: Path, trials: int, overrides: list[str] | None = None, storage: str | None = None,
              study_name: str | None = None) -> dict:
    """Run trials until the study holds `trials` finished (complete or pruned) ones; write best.yaml.
    Returns {"study", "folder", "best": path or None, "rows": leaderboard rows}."""
    _optuna()  # first, so a missing optuna is a message, not a traceback
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from tunesmith.sweep_report import last_eval_loss, leaderboard_rows, write_best

    if trials < 1:
        raise ConfigError(f"--trials {trials} is not a positive number", "pass e.g. --trials 20")
    overrides = list(overrides or [])
    base = load_config(project, overrides)
    _check_metric(base)
    space = dict(base.sweep.params) or default_space(base)
    if base.sweep.sampler == "grid":
        size = math.prod(len(grid_values(k, p)) for k, p in space.items())
        if trials > size:
            console.print(f"the grid has {size} points: running {size} trials, not {trials}")
            trials = size
    study = open_study(base, storage, study_name, space)
    sweep = Sweep(project=Path(project), overrides=overrides, base=base, folder=sweep_folder(base), space=space,
                  trials=trials, direction=resolve_direction(base))
    console.print(f"study '{study.study_name}': {_live_before(study)} of {trials} trials finished or running; "
                  f"searching {', '.join(space)} for the {sweep.direction.replace('ize', 'um')} "
                  f"{base.sweep.metric}")
    failures = 0
    while True:
        fail_stale_trials(study)
        if _live_before(study) >= trials:
            break
        done: list = []
        study.optimize(lambda trial: _objective(sweep, trial), n_trials=1, catch=(Exception,),
                       callbacks=[lambda _study, frozen: done.append(frozen)])
        frozen = done[0]
        if frozen.user_attrs.get("surplus"):
            break
        if frozen.state == TrialState.FAIL:
            failures += 1
            error = sweep.last_error
            if isinstance(error, TunesmithError):
                raise error  # the project itself is wrong: every trial would fail the same way
            console.print(f"[red]trial {frozen.number} failed: {frozen.user_attrs.get('error', error)}[/red]")
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise SweepError(f"{failures} trials in a row failed; the last: {frozen.user_attrs.get('error')}",
                                 f"read the tracebacks in {sweep.folder}/trial-*/error.txt")
        else:
            failures = 0
            if frozen.state == TrialState.PRUNED:
                loss = last_eval_loss(frozen, sweep.direction == "minimize")
                console.print(f"trial {frozen.number} pruned at eval_loss {loss:.4f}")
            else:
                console.print(f"trial {frozen.number} complete: {base.sweep.metric} {frozen.value:.4f}")
    best = write_best(sweep, study)
    result = {"study": study.study_name, "folder": str(sweep.folder), "best": None if best is None else str(best),
              "metric": base.sweep.metric, "direction": sweep.direction, "rows": leaderboard_rows(study)}
    write_json_atomic(sweep.folder / "leaderboard.json", result)  # for scripts: stdout also carries training logs
    return result
