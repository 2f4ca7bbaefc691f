"""`tunesmith predict`: a file of prompts in, a JSONL file of predictions out, through the serving engine (so a
file of 1,000 prompts is generated in continuous batches, exactly as the server would answer them).

Input rows (JSONL, JSON, CSV, TSV, Parquet): `messages` (a trailing assistant turn is the reference and is
not shown to the model), ShareGPT `conversations`, alpaca `instruction` (+ `input`), or a prompt column with one
of the usual names (prompt, question, instruction, text, ...). Every input field is kept in the output row,
next to `prediction`, `finish_reason` and `completion_tokens`.
"""

from __future__ import annotations

import queue
from pathlib import Path

from tunesmith.data.formats import ALIASES, SHAREGPT_ROLES
from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError
from tunesmith.serve.engine import Engine, GenerationRequest
from tunesmith.serve.loading import Served, render_chat

MAX_SHOWN_PROBLEMS = 10


def _turns(value, sharegpt: bool) -> list[dict]:
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(value):
        role = turn.get(role_key) if isinstance(turn, dict) else None
        role = SHAREGPT_ROLES.get(str(role).lower()) if sharegpt else role
        content = turn.get(text_key) if isinstance(turn, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ValueError(f"turn {i} needs a {role_key} (system, user or assistant) and a text {text_key}")
        out.append({"role": role, "content": content})
    return out


def prompt_messages(row: dict) -> tuple[list[dict], str | None]:
    """(the conversation the model answers, the reference answer if the row carries one)."""
    for key, sharegpt in (("messages", False), ("conversations", True)):
        if key in row:
            turns = _turns(row[key], sharegpt)
            reference = turns.pop()["content"] if turns[-1]["role"] == "assistant" else None
            if not turns or turns[-1]["role"] == "system":
                raise ValueError(f"'{key}' has no user turn to answer")
            return turns, reference
    if isinstance(row.get("instruction"), str):
        extra = row.get("input")
        text = row["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return [{"role": "user", "content": text}], row.get("output")
    for key in ALIASES["input"]:
        if isinstance(row.get(key), str) and row[key].strip():
            reference = next((row[k] for k in ALIASES["output"] if isinstance(row.get(k), str)), None)
            return [{"role": "user", "content": row[key]}], reference
    raise ValueError(f"no prompt found: use messages, conversations, instruction or one of "
                     f"{', '.join(ALIASES['input'])}")


def read_prompts(path: Path) -> list[tuple[dict, list[dict]]]:
    """Every row with its conversation; all unusable rows are reported together, before any generation."""
    if not Path(path).is_file():
        raise DataError(f"'{path}' does not exist", "pass a JSONL (or JSON, CSV, Parquet) file of prompts")
    rows, problems = [], []
    _read, raw_rows = read_rows(Path(path))
    for raw in raw_rows:
        if raw.data is None:
            problems.append(f"{path}:{raw.line}  {raw.error[1]}")
            continue
        try:
            messages, _reference = prompt_messages(raw.data)
        except ValueError as exc:
            problems.append(f"{path}:{raw.line}  {exc}")
            continue
        rows.append((raw.data, messages))
    if problems:
        shown = "\n".join(problems[:MAX_SHOWN_PROBLEMS])
        more = f"\n... and {len(problems) - MAX_SHOWN_PROBLEMS} more" if len(problems) > MAX_SHOWN_PROBLEMS else ""
        raise DataError(f"{len(problems)} rows of '{path}' cannot be used:\n{shown}{more}",
                        "give each row `messages` (a list of role/content turns) or a `prompt` text")
    if not rows:
        raise DataError(f"'{path}' holds no rows", "add one prompt per line")
    return rows


def predict_rows(served: Served, engine: Engine, rows: list[tuple[dict, list[dict]]], max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 on_done=lambda: None) -> list[dict]:
    """Submit every row at once (the engine batches them) and collect the answers in input order."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    out: list[dict | None] = [None] * len(rows)
    for i, (row, messages) in enumerate(rows):
        ids = render_chat(served, messages)
        room = served.max_context - len(ids)
        if room < 1:
            raise DataError(f"row {i + 1} is {len(ids)} tokens, longer than the model's {served.max_context}",
                            "shorten the prompt")
        engine.submit(GenerationRequest(ids, min(max_new_tokens, room), lambda e, i=i: events.put((i, e)),
                                        temperature, top_p, (), None if seed is None else seed + i))
    remaining = len(rows)
    while remaining:
        i, event = events.get()
        if event["type"] == "delta":
            continue
        if event["type"] == "error":
            raise RuntimeError(f"generation failed: {event['message']}")
        out[i] = {**rows[i][0], "prediction": event["text"], "finish_reason": event["finish_reason"],
                  "completion_tokens": event["completion_tokens"]}
        remaining -= 1
        on_done()
    return out
