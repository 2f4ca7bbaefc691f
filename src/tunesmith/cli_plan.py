"""`tunesmith plan PROJECT.yaml [--device cuda:80GB] [--json]`: the memory and time table, and what fits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.console import console

FITS_STYLE = {"yes": "[green]yes[/green]", "tight": "[yellow]tight[/yellow]", "no": "[red]no[/red]", "n/a": "n/a"}


def _mb(value: float) -> str:
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_plan(plan) -> None:
    data, model = plan.data, plan.model
    worst = data["worst_micro_batch"]
    console.print(f"model {model['base']} ({model['type']}, {model['params']:,} parameters); "
                  f"device {plan.device.label}; {plan.precision}")
    console.print(f"data: {data['rows']} training rows, mean {data['mean_tokens']} tokens, longest "
                  f"{data['longest_row']} (max_seq_len {data['max_seq_len']}); heaviest micro-batch "
                  f"{worst['rows']} x {worst['width']} tokens, {worst['labelled_tokens']} labelled"
                  + (" (label share sampled)" if data["sampled"] else ""))
    table = Table(title=f"predicted peak memory at micro_batch_size {plan.configured['micro_batch_size']} "
                        f"(fits: <= 85% of {plan.device.memory_bytes / 2**30:.1f} GiB)")
    for column in ("method", "weights", "grads", "optimizer", "activations", "overhead", "total peak", "fits?",
                   "est. time/epoch"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for est in plan.estimates:
        name = est.method + (" *" if est.method == plan.configured["method"] or
                             (est.method == "lora" and plan.configured["method"] == "dora") else "")
        if est.fits == "n/a":
            table.add_row(name, "", "", "", "", "", "", "n/a", est.note)
            continue
        table.add_row(name, _mb(est.weights_mb), _mb(est.grads_mb), _mb(est.optimizer_mb), _mb(est.activations_mb),
                      _mb(est.overhead_mb), _mb(est.peak_mb), FITS_STYLE[est.fits], _duration(est.seconds_per_epoch))
    console.print(table)
    console.print("* configured. total peak = max(load, overhead + weights + optimizer + max(grads, activations)); "
                  f"time from {plan.throughput}")
    rec = plan.recommendation
    if rec.get("method"):
        console.print(f"recommended: {rec['method']} with micro_batch_size {rec['micro_batch_size']} "
                      f"(peak {_mb(rec['peak_mb'])}, time/epoch {_duration(rec['seconds_per_epoch'])}): {rec['set']}")
    else:
        console.print(f"[red]recommended: {rec['set']}[/red]")


def plan(project: Annotated[Path, typer.Argument(help="The YAML project file.")],
         set_: Annotated[list[str] | None, typer.Option("--set", help="Override a project key (repeatable).")] = None,
         device: Annotated[str | None, typer.Option(
             "--device", help="Plan for this device instead of this machine's: cpu, cuda, cpu:24GB, cuda:80GB, "
                              "cuda:80GB:H100 (GB = GiB).")] = None,
         json_: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False):
    """Predict peak memory and time per epoch of full, LoRA and QLoRA fine-tuning from config.json and the
    tokenized data, without loading any weight; say what fits and recommend a method and micro-batch size.
    Exit 1 when the configured method is predicted not to fit."""
    from tunesmith.config import load_config
    from tunesmith.errors import ConfigError
    from tunesmith.models.load import resolve
    from tunesmith.plan import make_plan
    from tunesmith.plan_device import parse_device

    config = load_config(project, set_ or [])
    target = parse_device(device)  # parse before the slower steps, so a typo fails at once
    if config.method.kind == "qlora" and target.kind == "cpu":
        raise ConfigError("method.kind 'qlora' needs a CUDA GPU (4-bit NF4 weights through bitsandbytes)",
                          "set method.kind: lora for the CPU, or plan a GPU with --device cuda:24GB")
    result = make_plan(config, resolve(config.model.base).path, target)
    chosen = result.estimate("lora" if config.method.kind == "dora" else config.method.kind)
    if json_:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_plan(result)
    if chosen.fits == "no":
        rec = result.recommendation
        raise ConfigError(f"method {config.method.kind} with micro_batch_size {config.train.micro_batch_size} is "
                          f"predicted to need {chosen.peak_mb / 1024:.1f} GiB, more than the "
                          f"{target.memory_bytes / 2**30:.1f} GiB of {target.kind} memory "
                          f"{'available now' if target.detected else 'given with --device'}",
                          rec["set"] if not rec.get("method") else f"use {rec['set']}", where=str(project))
