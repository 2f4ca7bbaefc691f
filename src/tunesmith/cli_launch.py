"""`tunesmith launch`: the torchrun command line for a project, printed and run, for people who don't want to
remember it. torchrun starts, watches and stops the processes; tunesmith only builds its arguments."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.console import console
from tunesmith.errors import ConfigError


def torchrun_command(project: Path, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str = "127.0.0.1", master_port: int = 29500, verb: str = "train",
                     extra: list[str] | None = None) -> list[str]:
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ConfigError(f"--nproc {nproc}, --nnodes {nnodes}, --node-rank {node_rank} do not make a group",
                          "use --nproc ≥ 1 processes per machine, --nnodes ≥ 1 and 0 ≤ --node-rank < --nnodes")
    if verb not in ("train", "run"):
        raise ConfigError(f"--verb {verb} cannot be launched on several processes", "use --verb train or run")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        command += [f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}"]
    else:  # one machine: a free local rendezvous, so two launches on one machine don't collide
        command += ["--standalone"]
    return command + ["-m", "tunesmith.cli", verb, str(project), *(extra or [])]


def launch(project: Annotated[Path, typer.Argument(help="The YAML project file.")],
           nproc: Annotated[int, typer.Option(help="Processes on this machine (one per GPU; CPU: 2 at most "
                                                   "helps on 2 cores).")] = 2,
           nnodes: Annotated[int, typer.Option(help="Machines in the job.")] = 1,
           node_rank: Annotated[int, typer.Option(help="This machine's index, 0 … nnodes-1.")] = 0,
           master_addr: Annotated[str, typer.Option(help="Address of the node with rank 0.")] = "127.0.0.1",
           master_port: Annotated[int, typer.Option(help="Its rendezvous port.")] = 29500,
           verb: Annotated[str, typer.Option(help="train or run.")] = "train",
           set_: Annotated[list[str] | None, typer.Option("--set", help="Project override (repeatable).")] = None,
           resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")] = False,
           force: Annotated[bool, typer.Option("--force", help="Replace an existing run.")] = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command only.")] = False):
    """Train one project on several processes (and machines) through torchrun: prints the command, then runs it."""
    extra = [arg for value in set_ or [] for arg in ("--set", value)]
    extra += ["--resume"] * resume + ["--force"] * force
    command = torchrun_command(project, nproc, nnodes, node_rank, master_addr, master_port, verb, extra)
    console.print(shlex.join(command), soft_wrap=True)
    if not dry_run:
        sys.stdout.flush()
        os.execv(command[0], command)  # torchrun takes over this process: signals and exit code are its own
