"""Read a chat template's turn layout by rendering it, so other formats (Ollama's Go template, GGUF stop
tokens, generation_config eos ids) can be derived from the Jinja template the model was trained with.

The Jinja source is never parsed: the template is rendered on marker messages and the text around each
marker is the role's prefix and suffix. This works for every template whose turns are rendered one after the
other (ChatML, Llama 3, Zephyr, Mistral-style); a template that is not (one that reorders or merges turns) is
reported as not analyzable instead of being guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import ModelError

ROLES = ("system", "user", "assistant")
# Distinct, unlikely strings: a template that trims or edits the content leaves them intact.
MARKERS = {role: f"XQZ{role.upper()}CONTENTQZX" for role in ROLES}


@dataclass(frozen=True)
class Turn:
    prefix: str  # text before the message content
    suffix: str  # text after it, up to the next turn


@dataclass(frozen=True)
class TurnLayout:
    turns: dict[str, Turn]  # role -> layout; "system" is absent when the template refuses system messages
    generation_prompt: str  # appended by add_generation_prompt=True (e.g. "<|im_start|>assistant\n")
    default_system: str | None  # system content the template inserts when the conversation has none
    bos_text: str  # text the template writes once before the first turn (e.g. "<s>"), often ""


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _message(role: str) -> dict:
    return {"role": role, "content": MARKERS[role]}


def _refuse(what: str) -> ModelError:
    return ModelError(f"the chat template {what}, so it cannot be translated to another template language",
                      "export with --format merged or adapter, which keep the Jinja template as it is")


def _after(longer: str, shorter: str, what: str) -> str:
    if not longer.startswith(shorter):
        raise _refuse(what)
    return longer[len(shorter):]


def _split(block: str, role: str) -> Turn:
    if block.count(MARKERS[role]) != 1:
        raise _refuse(f"does not render a {role} message as one block holding its content once")
    prefix, suffix = block.split(MARKERS[role])
    return Turn(prefix, suffix)


def analyze(tokenizer) -> TurnLayout:
    """Each role's prefix/suffix, the generation prompt, and the text the template writes once at the start
    (a BOS string, a default system turn)."""
    system, user, assistant = (_message(role) for role in ROLES)
    try:
        first = _render(tokenizer, [system], False)
        head = [system]
    except Exception:  # noqa: BLE001  (templates raise their own errors, e.g. "system role not supported")
        first, head = "", []
    upto = [_render(tokenizer, head + [user], False), _render(tokenizer, head + [user, assistant], False),
            _render(tokenizer, head + [user, assistant, user], False)]
    prompt = _render(tokenizer, head + [user, assistant, user], True)
    interleaved = "does not render turns one after another"
    # A user turn that follows an assistant turn carries nothing that is written once (BOS, default system).
    turns = {"assistant": _split(_after(upto[1], upto[0], interleaved), "assistant"),
             "user": _split(_after(upto[2], upto[1], interleaved), "user")}
    generation_prompt = _after(prompt, upto[2], "adds a generation prompt that does not extend the conversation")
    user_text = turns["user"].prefix + MARKERS["user"] + turns["user"].suffix
    alone = _render(tokenizer, [user], False)
    if not alone.endswith(user_text) or (first and _after(upto[0], first, interleaved) != user_text):
        raise _refuse("renders a user turn differently depending on its place (it merges the system prompt "
                      "into the first user turn, say)")
    opening = alone[: len(alone) - len(user_text)]  # written once before the first turn
    if not first:
        return TurnLayout(turns, generation_prompt, None, opening)
    system_turn = _split(first, "system")
    if system_turn.prefix.startswith(opening):  # only a BOS string (or nothing) opens every conversation
        turns["system"] = Turn(system_turn.prefix[len(opening):], system_turn.suffix)
        return TurnLayout(turns, generation_prompt, None, opening)
    # The template inserts a system turn of its own when the conversation has none (SmolLM2 does): the
    # opening is a system turn around that default text.
    prefix, suffix = system_turn.prefix, system_turn.suffix
    if opening.startswith(prefix) and opening.endswith(suffix) and len(opening) >= len(prefix) + len(suffix):
        turns["system"] = system_turn
        return TurnLayout(turns, generation_prompt, opening[len(prefix): len(opening) - len(suffix)], "")
    raise _refuse("opens a conversation with text that is neither a BOS string nor a default system turn")


def end_of_turn_token(tokenizer, layout: TurnLayout) -> str | None:
    """The special token that closes an assistant turn (ChatML's <|im_end|>, Llama 3's <|eot_id|>), if any."""
    suffix = layout.turns["assistant"].suffix.strip()
    specials = {str(t) for t in tokenizer.added_tokens_decoder.values() if t.special}
    for token in sorted(specials, key=len, reverse=True):
        if suffix.startswith(token):
            return token
    return None
