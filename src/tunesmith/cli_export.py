"""`tunesmith export RUN_DIR --format merged|adapter|gguf|ollama -o OUT`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from tunesmith.console import console


def export_command(
        run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train` or `run`.")],
        format_: Annotated[Literal["merged", "adapter", "gguf", "ollama"], typer.Option(
            "--format", "-f", help="merged: the adapter merged into the base, a standard Hugging Face folder "
            "(transformers, vLLM, TGI); adapter: the PEFT adapter alone; gguf: one GGUF file (llama.cpp, "
            "LM Studio); ollama: the GGUF plus a Modelfile.")],
        out: Annotated[Path, typer.Option("--output", "-o", help="The folder to write (must not exist or be "
                                          "empty, unless --force).")],
        dtype: Annotated[Literal["auto", "bf16", "fp16", "fp32"], typer.Option(
            help="merged only: auto is the base model's own dtype.")] = "auto",
        gguf_type: Annotated[Literal["f16", "q8_0", "bf16", "f32"] | None, typer.Option(
            "--gguf-type", help="gguf and ollama: f16 (default), or q8_0 at about half the size.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing OUT folder.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the parity report as one JSON object.")]
        = False):
    """Export a fine-tuned run, after checking that the export reproduces the fine-tuned model.

    The export is loaded back as its users load it and compared with the fine-tuned model on fixed chat prompts (next-token logits at every position, 32-token greedy outputs). Only an export that passes is moved to OUT, with the numbers in OUT/parity.json; one that fails exits 1 and leaves nothing behind. See docs/export.md.
    """  # noqa: E501  (typer shows docstring lines as they are; a wrapped line would show wrapped twice)
    from tunesmith.console import quiet_libraries
    from tunesmith.export.api import export_run
    from tunesmith.export.parity import print_table

    quiet_libraries()
    dtype = None if format_ != "merged" and dtype == "auto" else dtype
    if as_json:
        with console.capture():  # stdout carries the JSON alone; errors still go to stderr
            result = export_run(run_dir, format_, out, dtype=dtype, gguf_type=gguf_type, force=force)
        typer.echo(json.dumps(result, indent=2))
        return
    result = export_run(run_dir, format_, out, dtype=dtype, gguf_type=gguf_type, force=force)
    if "task" in result:  # a classifier's parity: logits on the run's test texts
        console.print(f"parity on {result['texts']} texts: max |Δlogit| {result['max_abs_logit_diff']:.2e} "
                      f"(≤ {result['threshold_max_abs']}), same predictions: {result['same_predictions']}")
    else:
        print_table(result)
    console.print(f"{format_} export written to {out} (parity report: {out / 'parity.json'})")
