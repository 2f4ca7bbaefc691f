"""Keep secrets out of what a run writes (config.yaml, run_card.json, tracking params).

A secret is the value of an environment variable whose name says so (HF_TOKEN, OPENAI_API_KEY, MY_SECRET,
DB_PASSWORD, ...), or a string shaped like a well-known token (Hugging Face hf_..., OpenAI sk-..., GitHub
ghp_..., AWS AKIA...). Values shorter than 8 characters are not treated as secrets: TOKENIZERS_PARALLELISM=false
would otherwise blank every "false".
"""

from __future__ import annotations

import os
import re

REDACTED = "[redacted]"
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
TOKEN_SHAPES = re.compile(r"\b(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
                          r"AKIA[0-9A-Z]{16})\b")
MIN_SECRET_CHARS = 8


def secret_values() -> list[str]:
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)  # longest first, so a secret containing another goes whole


def redact_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return TOKEN_SHAPES.sub(REDACTED, text)


def redact(data):
    """A copy of a JSON-like value with every secret in its strings (keys included) replaced."""
    if isinstance(data, str):
        return redact_text(data)
    if isinstance(data, dict):
        return {redact(k): redact(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    return data
