"""`tunesmith serve | predict | chat`: one loader, one batching engine, three front doors."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.console import console, err_console, progress_bar
from tunesmith.errors import ConfigError

SourceArg = Annotated[Path, typer.Argument(help="A run directory (config.yaml + adapter/) or an exported model "
                                                "folder (config.json + tokenizer).")]
DtypeOption = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or "
                                               "float16.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ThreadsOption = Annotated[int | None, typer.Option(help="CPU threads for generation (default: all cores).")]
SystemOption = Annotated[str | None, typer.Option("--system-prompt", help="System message for requests that "
                                                                          "have none (default: the run's "
                                                                          "data.system_prompt).")]
BatchOption = Annotated[int, typer.Option("--max-batch-size", min=1, help="Sequences generated together.")]
MaxTokensOption = Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens generated per answer at most.")]
TemperatureOption = Annotated[float, typer.Option(min=0.0, max=2.0, help="0 is greedy (deterministic).")]


def _load(source: Path, dtype: str, device: str, threads: int | None, model_id: str | None = None,
          system_prompt: str | None = None):
    from tunesmith.console import quiet_libraries

    quiet_libraries()
    import torch

    from tunesmith.serve.loading import DTYPES, load_served

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype '{dtype}' is not one of {', '.join(DTYPES)}", "use --dtype auto")
    # All cores by default: the worker thread is the only heavy user; the event loop just relays bytes.
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return load_served(source, model_id=model_id, dtype=dtype, device=device, system_prompt=system_prompt)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(source: SourceArg,
          host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback needs an API key.")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
          api_key: Annotated[str | None, typer.Option("--api-key", envvar="TUNESMITH_API_KEY", show_envvar=True,
                                                      help="Require 'Authorization: Bearer KEY' on /v1.")] = None,
          model_id: Annotated[str | None, typer.Option("--model-id", help="Model name clients must use "
                                                                          "(default: the run's name or the "
                                                                          "folder's name).")] = None,
          max_batch_size: BatchOption = 16,
          max_tokens_limit: Annotated[int, typer.Option("--max-tokens-limit", min=1,
                                                        help="Largest max_tokens a request may ask for.")] = 512,
          max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", min=1,
                                                         help="Longest prompt accepted, in tokens.")] = 2048,
          max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024,
                                                      help="Largest request body (413 above).")] = 1_000_000,
          max_queue: Annotated[int, typer.Option("--max-queue", min=1,
                                                 help="Requests allowed to wait (429 above).")] = 256,
          batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", min=0.0,
                                                       help="When idle, wait this long for more requests to "
                                                            "start together.")] = 5.0,
          system_prompt: SystemOption = None, dtype: DtypeOption = "auto", device: DeviceOption = "auto",
          threads: ThreadsOption = None,
          log_level: Annotated[str, typer.Option(help="uvicorn log level: warning, info, debug.")] = "warning"):
    """Serve the model over an OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/models,
    and /health. Concurrent requests share generation steps (continuous batching)."""
    if not _is_loopback(host) and not api_key:
        raise ConfigError(f"refusing to bind {host} without an API key: anyone who can reach this machine could "
                          "use the model", "pass --api-key KEY (or set TUNESMITH_API_KEY), or bind --host 127.0.0.1")
    import uvicorn

    from tunesmith.serve.app import Limits, create_app
    from tunesmith.serve.engine import Engine

    served = _load(source, dtype, device, threads, model_id, system_prompt)
    engine = None if served.kind == "classify" else Engine(  # a classifier answers /v1/classify, no engine
        served.model, served.tokenizer, max_batch_size=max_batch_size, max_queue=max_queue,
        max_context=served.max_context, batch_wait_s=batch_wait_ms / 1000).start()
    limits = Limits(max_tokens_limit, min(max_prompt_tokens, served.max_context - 1), max_body_bytes)
    app = create_app(served, engine, limits, api_key)
    console.print(f"serving '{served.model_id}' ({served.kind}) from {source} on http://{host}:{port}/v1 "
                  f"(batch ≤ {max_batch_size}, API key {'required' if api_key else 'off'}); Ctrl-C stops")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        if engine is not None:
            engine.stop()


def predict(source: SourceArg,
            input_: Annotated[Path, typer.Option("--input", "-i", help="Prompts: JSONL (or JSON, CSV, Parquet) "
                                                                       "with messages or a prompt column.")],
            output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write: each input row plus "
                                                                        "prediction.")],
            max_tokens: MaxTokensOption = 256, temperature: TemperatureOption = 0.0,
            top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
            seed: Annotated[int | None, typer.Option(help="Seed for sampling (row i uses seed + i).")] = None,
            max_batch_size: BatchOption = 16, system_prompt: SystemOption = None, dtype: DtypeOption = "auto",
            device: DeviceOption = "auto", threads: ThreadsOption = None):
    """Answer every prompt of a file with the fine-tuned model; writes JSONL (atomically) in input order.
    For a classification, multilabel or regression run: each row's text gets its label(s) or value and the
    probabilities."""
    from tunesmith.io import write_jsonl_atomic
    from tunesmith.serve.engine import Engine
    from tunesmith.serve.predict import predict_rows, read_prompts

    if _task(source) not in ("generation", None):
        from tunesmith.serve.classify import classify_rows, read_texts

        texts = read_texts(input_)
        with progress_bar("info") as progress:
            task = progress.add_task("predicting", total=len(texts), info="")
            out = classify_rows(source, texts, on_batch=lambda n: progress.update(task, advance=n))
        write_jsonl_atomic(output, out)
        console.print(f"wrote {len(out)} predictions to {output}")
        return

    rows = read_prompts(input_)
    served = _load(source, dtype, device, threads, system_prompt=system_prompt)
    engine = Engine(served.model, served.tokenizer, max_batch_size=max_batch_size, max_queue=len(rows) + 1,
                    max_context=served.max_context).start()
    try:
        with progress_bar("info") as progress:
            task = progress.add_task("predicting", total=len(rows), info="")
            out = predict_rows(served, engine, rows, max_tokens, temperature, top_p if top_p > 0 else 1.0, seed,
                               on_done=lambda: progress.update(task, advance=1))
    finally:
        engine.stop()
    write_jsonl_atomic(output, out)
    console.print(f"wrote {len(out)} predictions to {output}")


def _task(source: Path) -> str | None:
    """The task of a run directory (None for an exported model folder)."""
    if not (Path(source) / "config.yaml").is_file():
        from tunesmith.serve.loading import is_generative_export

        return "classification" if is_generative_export(Path(source)) else None
    from tunesmith.runs import load_run_config

    return load_run_config(Path(source)).task


def chat(source: SourceArg, max_tokens: MaxTokensOption = 512, temperature: TemperatureOption = 0.7,
         top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95, system_prompt: SystemOption = None,
         dtype: DtypeOption = "auto", device: DeviceOption = "auto", threads: ThreadsOption = None):
    """Talk to the model in the terminal; answers stream as they are generated. /reset forgets the
    conversation, /exit (or Ctrl-D) quits."""
    from tunesmith.serve.engine import Engine
    from tunesmith.serve.loading import render_chat

    served = _load(source, dtype, device, threads, system_prompt=system_prompt)
    engine = Engine(served.model, served.tokenizer, max_batch_size=1, max_context=served.max_context).start()
    history: list[dict] = []
    console.print(f"chatting with '{served.model_id}' (/reset, /exit)")
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                history = []
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            ids = render_chat(served, history)
            room = served.max_context - len(ids)
            if room < 1:
                err_console.print("the conversation is longer than the model's context: /reset to start over")
                history.pop()
                continue
            sys.stdout.write("model> ")
            answer = ""
            for event in engine.stream(ids, min(max_tokens, room), temperature=temperature,
                                       top_p=top_p if top_p > 0 else 1.0):
                if event["type"] == "delta":
                    sys.stdout.write(event["text"])
                    sys.stdout.flush()
                elif event["type"] == "done":
                    answer = event["text"]
                else:
                    err_console.print(f"generation failed: {event['message']}")
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": answer})
    finally:
        engine.stop()


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(predict)
    app.command()(chat)
