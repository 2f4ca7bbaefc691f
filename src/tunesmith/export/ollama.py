"""The Ollama Modelfile that goes beside an exported GGUF: the chat template rewritten in Ollama's Go-template
syntax, the stop tokens, and the decoding parameters tunesmith evaluated with.

`ollama create NAME -f Modelfile` in the export folder turns it into an Ollama model.
"""

from __future__ import annotations

from tunesmith.errors import ModelError
from tunesmith.export.chat import ROLES, TurnLayout

MODEL_FILE = "model.gguf"
# Ollama reserves a KV cache for num_ctx tokens; more than 8,192 costs memory most fine-tunes never use
# (SmolLM2-135M: 30 layers x 2 x 3 KV heads x 64 x 2 bytes = 23 KB per token, 190 MB at 8,192).
MAX_NUM_CTX = 8192


def _literal(text: str, what: str) -> str:
    # Go templates copy text outside {{ }} as it is; only a "{{" inside would be read as an action.
    if "{{" in text or '"""' in text:
        raise ModelError(f"the chat template's {what} contains '{{{{' or '\"\"\"', which a Modelfile cannot hold "
                         "as literal text", "export with --format gguf and write the Modelfile TEMPLATE by hand")
    return text


def go_template(layout: TurnLayout) -> str:
    """The Jinja chat template as an Ollama TEMPLATE: each message in turn, then the generation prompt."""
    roles = [r for r in ROLES if r in layout.turns]
    generic = {(layout.turns[r].prefix.replace(r, "{role}", 1), layout.turns[r].suffix) for r in roles}
    if len(generic) == 1:
        # One pattern for every role (ChatML, Llama 3): the role name goes in as {{ .Role }}.
        prefix, suffix = generic.pop()
        if prefix.count("{role}") != 1:
            raise ModelError("the chat template's turns do not name their role", "export with --format gguf and "
                             "write the Modelfile TEMPLATE by hand")
        head, tail = prefix.split("{role}")
        body = (f"{_literal(head, 'turn prefix')}{{{{ .Role }}}}{_literal(tail, 'turn prefix')}{{{{ .Content }}}}"
                f"{_literal(suffix, 'turn suffix')}")
    else:
        branches = []
        for i, role in enumerate(roles):
            turn = layout.turns[role]
            keyword = "if" if i == 0 else "else if"
            branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{_literal(turn.prefix, role + " prefix")}'
                            f"{{{{ .Content }}}}{_literal(turn.suffix, role + ' suffix')}")
        body = "".join(branches) + "{{ end }}"
    return (f"{_literal(layout.bos_text, 'opening text')}{{{{ range .Messages }}}}{body}{{{{ end }}}}"
            f"{_literal(layout.generation_prompt, 'generation prompt')}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(layout: TurnLayout, stops: list[str], context_length: int, sampling: dict[str, float],
              source: str) -> str:
    """The Modelfile text. `sampling` holds Ollama parameter names (temperature, top_p, top_k)."""
    lines = [f"# {source}", "# Build it with: ollama create NAME -f Modelfile", f"FROM ./{MODEL_FILE}", "",
             f'TEMPLATE """{go_template(layout)}"""']
    if layout.default_system is not None:
        # The Jinja template inserts this when a conversation has no system message; Ollama does the same with
        # the SYSTEM instruction.
        lines.append(f'SYSTEM """{_literal(layout.default_system, "default system prompt")}"""')
    lines.append("")
    lines += [f"PARAMETER stop {_quote(stop)}" for stop in stops]
    lines += [f"PARAMETER {name} {value:g}" for name, value in sampling.items()]
    lines.append(f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"
