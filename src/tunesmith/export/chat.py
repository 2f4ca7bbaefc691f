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
    """Each role's prefix/suffix, the generation prompt and any default system prompt of the template."""
    system, user, assistant = (_message(role) for role in ROLES)
    try:
        first = _render(tokenizer, [system], False)
        conversation = [system, user]
    except Exception:  # noqa: BLE001  (templates raise their own errors, e.g. "system role not supported")
        first, conversation = "", [user]
    upto_user = _render(tokenizer, conversation, False)
    upto_assistant = _render(tokenizer, conversation + [assistant], False)
    prompt = _render(tokenizer, conversation, True)
    turns = {"user": _split(_after(upto_user, first, "does not render turns one after another"), "user"),
             "assistant": _split(_after(upto_assistant, upto_user, "does not render turns one after another"),
                                 "assistant")}
    generation_prompt = _after(prompt, upto_user, "adds a generation prompt that does not extend the conversation")
    bos_text, default_system = "", None
    if first:
        system_turn = _split(first, "system")
        # Text written once before the first turn (a BOS string) sits in front of the system prefix. When the
        # roles share one pattern (ChatML: "<|im_start|>" + role + "\n"), the user prefix tells where it ends.
        generic = turns["user"].prefix.replace("user", "system", 1)
        if generic != turns["user"].prefix and system_turn.prefix.endswith(generic):
            bos_text = system_turn.prefix[: len(system_turn.prefix) - len(generic)]
            system_turn = Turn(generic, system_turn.suffix)
        turns["system"] = system_turn
        # A template that inserts a system turn of its own when the conversation has none (SmolLM2 does).
        user_text = turns["user"].prefix + MARKERS["user"] + turns["user"].suffix
        alone = _render(tokenizer, [user], False)
        if alone.endswith(user_text):
            opening = alone[: len(alone) - len(user_text)].removeprefix(bos_text)
            if opening.startswith(system_turn.prefix) and opening.endswith(system_turn.suffix) and opening:
                default_system = opening[len(system_turn.prefix): len(opening) - len(system_turn.suffix)]
    return TurnLayout(turns, generation_prompt, default_system, bos_text)


def end_of_turn_token(tokenizer, layout: TurnLayout) -> str | None:
    """The special token that closes an assistant turn (ChatML's <|im_end|>, Llama 3's <|eot_id|>), if any."""
    suffix = layout.turns["assistant"].suffix.strip()
    specials = {str(t) for t in tokenizer.added_tokens_decoder.values() if t.special}
    for token in sorted(specials, key=len, reverse=True):
        if suffix.startswith(token):
            return token
    return None
