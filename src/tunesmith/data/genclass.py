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


def clip_text(tokenizer, system: str, text: str, budget: int) -> str:
    """The text cut (at its end) so the prompt leaves `budget` tokens for the answer within max_seq_len: cutting
    the rendered conversation instead would drop the label, the only part the loss reads."""
    overhead = len(tokenizer(prompt_text(tokenizer, chat(system, "")), add_special_tokens=False)["input_ids"])
    room = budget - overhead
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if room <= 0 or len(ids) <= room:
        return text if room > 0 else ""
    return tokenizer.decode(ids[:room])


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
    budget = max_seq_len - longest_answer(tokenizer, space["labels"])
    stats: dict = {}
    for role, examples in (("train", train), ("eval", held)):
        rows, clipped = [], 0
        for e in examples:
            text = clip_text(tokenizer, system, e.text or "", budget)
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
