"""Read JSONL files in the chat, prompt/completion and alpaca formats into one canonical record type.

Every row that cannot be used becomes a `Finding` with the file, the 1-based line, the field and the fix;
nothing is dropped without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import DataError

FORMATS = ("chat", "prompt_completion", "alpaca")
ROLES = ("system", "user", "assistant")
# Keys that identify each format; the first format whose keys a row has wins.
FORMAT_KEYS = {"chat": ("messages",), "prompt_completion": ("prompt", "completion"),
               "alpaca": ("instruction", "output")}


@dataclass
class Finding:
    file: str
    line: int
    field: str
    code: str
    severity: str  # "error": the row cannot be used; "warning": usable, but look at it
    message: str
    fix: str
    related_lines: list[int] = field(default_factory=list)

    def render(self) -> str:
        return f"{self.file}:{self.line}  {self.field}  {self.message}  → {self.fix}"


@dataclass
class Example:
    """The canonical record: a conversation whose assistant turns are the training targets."""

    messages: list[dict[str, str]]
    file: str
    line: int
    meta: dict = field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Everything before the last assistant turn: what the model sees at evaluation time."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def reference(self) -> str:
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]

    def to_json(self) -> dict:
        return {"messages": self.messages, **self.meta, "_source": f"{self.file}:{self.line}"}


def expand_paths(spec: str | list[str] | None) -> list[Path]:
    """A file, a list of files, or a folder (its *.jsonl files, sorted) → existing file paths."""
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise DataError(f"folder '{path}' holds no .jsonl files", "put the data in .jsonl files there")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"data file '{path}' does not exist",
                            "check the path (paths in a project file are relative to that file's folder)")
    return paths


def detect_format(row: dict) -> str | None:
    for name, keys in FORMAT_KEYS.items():
        if all(k in row for k in keys):
            return name
    return None


def _text_problem(value, name: str) -> tuple[str, str] | None:
    if value is None:
        return "missing_field", f"'{name}' is missing"
    if not isinstance(value, str):
        return "wrong_type", f"'{name}' is a {type(value).__name__}, expected a string"
    if not value.strip():
        return "empty_field", f"'{name}' is empty"
    return None


def _row_to_messages(row: dict, fmt: str) -> tuple[list[dict[str, str]] | None, str, str, str]:
    """Return (messages, field, code, message); messages is None when the row is unusable."""
    if fmt == "prompt_completion":
        for name in ("prompt", "completion"):
            problem = _text_problem(row.get(name), name)
            if problem:
                return None, name, *problem
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}], \
            "", "", ""
    if fmt == "alpaca":
        for name in ("instruction", "output"):
            problem = _text_problem(row.get(name), name)
            if problem:
                return None, name, *problem
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            return None, "input", "wrong_type", f"'input' is a {type(extra).__name__}, expected a string"
        prompt = row["instruction"] + (f"\n\n{extra}" if extra and extra.strip() else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}], "", "", ""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "messages", "wrong_type", "'messages' must be a non-empty list of {role, content} objects"
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return None, where, "wrong_type", f"{where} is a {type(message).__name__}, expected an object"
        role = message.get("role")
        if role not in ROLES:
            return None, f"{where}.role", "unknown_role", f"{where}.role is {role!r}, expected one of {ROLES}"
        problem = _text_problem(message.get("content"), "content")
        if problem:
            return None, f"{where}.content", problem[0], f"{where}.{problem[1]}"
        out.append({"role": role, "content": message["content"]})
    if not any(m["role"] == "assistant" for m in out):
        return None, "messages", "no_assistant_turn", "the conversation has no assistant message to learn from"
    return out, "", "", ""


FIXES = {
    "invalid_json": "make the line one complete JSON object (check quotes, commas and brackets)",
    "not_an_object": "each line must be a JSON object such as {\"prompt\": ..., \"completion\": ...}",
    "unknown_format": "use 'messages' (chat), 'prompt'+'completion', or 'instruction'+'output' (alpaca) keys",
    "format_mismatch": "use the same format on every row of a file, or set data.format",
    "missing_field": "add the field, or remove the row",
    "wrong_type": "make the field a JSON string",
    "empty_field": "fill in the text, or remove the row",
    "unknown_role": "use the roles system, user and assistant",
    "no_assistant_turn": "add an assistant message with the answer the model should learn",
    "encoding": "save the file as UTF-8",
}


def read_file(path: Path, fmt: str = "auto") -> tuple[list[Example], list[Finding], str | None, int]:
    """Read one JSONL file. Returns (examples, findings, detected format, number of rows)."""
    findings: list[Finding] = []
    examples: list[Example] = []
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return [], [Finding(name, line, "", "encoding", "error", f"byte {exc.start} is not valid UTF-8",
                            FIXES["encoding"])], None, 0
    rows = 0
    detected = None if fmt == "auto" else fmt
    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.strip():
            continue
        rows += 1

        def add(field_name: str, code: str, message: str) -> None:
            findings.append(Finding(name, number, field_name, code, "error", message, FIXES[code]))

        try:
            row = json.loads(raw_line)
        except json.JSONDecodeError as exc:
            add("", "invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict):
            add("", "not_an_object", f"the line is a JSON {type(row).__name__}, not an object")
            continue
        row_format = detect_format(row)
        if detected is None:
            if row_format is None:
                add("", "unknown_format", f"no known format in keys {sorted(row)}")
                continue
            detected = row_format
        if row_format is None and fmt == "auto":
            add("", "unknown_format", f"no known format in keys {sorted(row)}")
            continue
        if fmt == "auto" and row_format != detected:
            add("", "format_mismatch", f"this row is {row_format} but the file is {detected}")
            continue
        messages, field_name, code, message = _row_to_messages(row, detected)
        if messages is None:
            add(field_name, code, message)
            continue
        known = set(FORMAT_KEYS[detected]) | {"input"}
        meta = {k: v for k, v in row.items() if k not in known}
        examples.append(Example(messages, name, number, meta))
    if rows == 0:
        findings.append(Finding(name, 1, "", "empty_file", "error", "the file holds no rows",
                                "add at least one JSON object per line"))
    return examples, findings, detected, rows


def read_examples(spec: str | list[str], fmt: str = "auto") -> tuple[list[Example], list[Finding], str | None, int]:
    """Read every file of a data spec; the format reported is the first file's."""
    examples: list[Example] = []
    findings: list[Finding] = []
    detected: str | None = None
    rows = 0
    for path in expand_paths(spec):
        file_examples, file_findings, file_format, file_rows = read_file(path, fmt)
        examples += file_examples
        findings += file_findings
        detected = detected or file_format
        rows += file_rows
    return examples, findings, detected, rows
