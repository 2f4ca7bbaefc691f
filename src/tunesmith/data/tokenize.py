"""Render conversations with the model's chat template; label only the assistant turns (completion-only loss).

The chat template is rendered turn by turn: the text up to an assistant turn's generation prompt is a prefix
of the text through that turn, so the characters in between are the turn the model must learn, end-of-turn
token included (that is what teaches it to stop). Token offsets map those characters to tokens; every other
token gets the label -100, which cross-entropy ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import ModelError

IGNORE_INDEX = -100
# Used only when a tokenizer ships no chat template (GPT-2 and most base models): ChatML, which SmolLM2,
# Qwen and many others use, so exported models keep one well-known format.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_labels(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character span of each assistant turn."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    eos = tokenizer.eos_token or ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(prefix) and full.startswith(through)):
            raise ModelError("the model's chat template does not render conversations incrementally, so the "
                             "assistant turns cannot be located for completion-only loss",
                             "use a model whose chat template appends turns (ChatML, Llama 3, ...)")
        turn = through[len(prefix):]
        content_at = turn.find(message["content"])
        eos_at = turn.find(eos, content_at + len(message["content"])) if eos and content_at >= 0 else -1
        end = len(prefix) + (eos_at + len(eos) if eos_at >= 0 else len(turn.rstrip()))
        spans.append((len(prefix), end))
    return full, spans


def tokenize_example(tokenizer, messages: list[dict], max_seq_len: int) -> Tokenized | None:
    """Token ids and labels; None when truncation to max_seq_len leaves no assistant token to learn from."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (start, _end) in enumerate(encoded["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_seq_len
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    result = Tokenized(ids, labels, truncated)
    return result if result.n_labels else None


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """What the model sees at generation time: the conversation up to the assistant's turn."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def rendered_texts(tokenizer, examples) -> list[str]:
    """Each example as the model will read it (chat template applied), for token counts."""
    ensure_chat_template(tokenizer)
    return [_render(tokenizer, e.messages, add_generation_prompt=False) if e.messages is not None else e.text
            for e in examples]
