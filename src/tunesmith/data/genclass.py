"""Generative classification data (model.classifier: generative): each text + label row becomes a chat example.

    system     "Classify the user's message. Answer with exactly one of these labels and nothing else:\n- billing\n..."
    user       the text
    assistant  the label

The label set is the classification head's (data/encode.task_space: sorted, from the training rows) and is saved
with the run as labels.json, with the system prompt beside it so prediction renders exactly what training saw.
The rows are then tokenized like generation rows (completion-only loss on the assistant turn) for train/loop.fit.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.formats import Example
from tunesmith.data.tokenize import prompt_text, tokenize_example
from tunesmith.io import write_jsonl_atomic

TASK_STATEMENT = "Classify the user's message. Answer with exactly one of these labels and nothing else:"


def system_prompt(labels: list[str], preamble: str | None = None) -> str:
    """The task and the allowed labels, one per line; data.system_prompt, when set, comes first."""
    listed = "\n".join(f"- {label}" for label in labels)
    head = f"{preamble.strip()}\n\n" if preamble and preamble.strip() else ""
    return f"{head}{TASK_STATEMENT}\n{listed}"


def chat(system: str, text: str, label: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return messages + ([{"role": "assistant", "content": label}] if label is not None else [])


MIN_TEXT_TOKENS = 16  # below this the prompt leaves too little of the text to classify


def prompt_overhead(tokenizer, system: str) -> int:
    """Tokens of the rendered prompt around an empty text: the system prompt with the labels, the turn markers."""
    return len(tokenizer(prompt_text(tokenizer, chat(system, "")), add_special_tokens=False)["input_ids"])


def clip_text(tokenizer, text: str, room: int) -> str:
    """The text cut at its end to `room` tokens, so the prompt leaves space for the answer within max_seq_len:
    cutting the rendered conversation instead would drop the label, the only part the loss reads."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= room else tokenizer.decode(ids[:room])


def text_room(tokenizer, system: str, labels: list[str], max_seq_len: int) -> int:
    """Tokens left for the text: max_seq_len less the prompt around it and the longest answer."""
    room = max_seq_len - prompt_overhead(tokenizer, system) - longest_answer(tokenizer, labels)
    if room < MIN_TEXT_TOKENS:
        from tunesmith.errors import ConfigError

        raise ConfigError(f"data.max_seq_len={max_seq_len} leaves {room} tokens for the text once the prompt "
                          f"listing the {len(labels)} labels and the longest label are in",
                          f"raise data.max_seq_len to at least {max_seq_len - room + 64}, or use "
                          "model.classifier: head for a label set this large")
    return room


def longest_answer(tokenizer, labels: list[str]) -> int:
    """Tokens of the longest label with its end-of-turn token (room the prompt must leave)."""
    eos = tokenizer.eos_token or ""
    return max(len(tokenizer(label + eos, add_special_tokens=False)["input_ids"]) for label in labels)


def prepare(tokenizer, train: list[Example], held: list[Example], test: list[Example], max_seq_len: int,
            run_dir: Path, preamble: str | None = None) -> dict:
    """Write labels.json (with the system prompt) and data/{train,eval}.tokens.jsonl; return the split stats."""
    from tunesmith.data.encode import check_known_labels, save_space, task_space

    space = task_space("classification", train)
    check_known_labels(held, space, "eval")
    check_known_labels(test, space, "test")
    system = system_prompt(space["labels"], preamble)
    space.update({"classifier": "generative", "system_prompt": system})
    save_space(run_dir, space)
    room = text_room(tokenizer, system, space["labels"], max_seq_len)
    stats: dict = {}
    for role, examples in (("train", train), ("eval", held)):
        rows, clipped = [], 0
        for e in examples:
            text = clip_text(tokenizer, e.text or "", room)
            clipped += text != (e.text or "")
            tokens = tokenize_example(tokenizer, chat(system, text, e.label), max_seq_len)
            if tokens is not None:
                rows.append({"input_ids": tokens.input_ids, "labels": tokens.labels, "truncated": text != e.text})
        write_jsonl_atomic(run_dir / "data" / f"{role}.tokens.jsonl", rows)
        lengths = [len(r["input_ids"]) for r in rows]
        stats[role] = {"rows": len(examples), "kept": len(rows), "truncated": clipped, "tokens": sum(lengths),
                       "max_tokens": max(lengths, default=0),
                       "label_tokens": sum(sum(x != -100 for x in r["labels"]) for r in rows)}
    counts = {label: 0 for label in space["labels"]}
    for e in train:
        counts[e.label] += 1
    stats["label_counts"] = counts
    return stats
