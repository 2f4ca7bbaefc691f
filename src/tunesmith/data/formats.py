"""Map raw rows of any supported format onto one canonical record type.

Formats: chat (OpenAI `messages`), ShareGPT (`conversations` of from/value), alpaca, prompt/completion, text +
label, text + labels (multi-label), text + numeric target(s) (regression; parsed in data/targets.py), raw text.
Column names are recognised by their usual aliases; `data.columns` maps anything else. Every row that cannot be
used becomes a `Finding` with the file, the 1-based line, the field and the fix; nothing is dropped without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

from tunesmith.data.readers import SUFFIXES, read_rows
from tunesmith.data.rowproblem import RowProblem
from tunesmith.data.targets import check_targets, parse_targets
from tunesmith.errors import DataError

GENERATION_FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
# Recognised without configuration, in order of preference.
ALIASES = {
    "input": ("prompt", "question", "instruction", "text", "sentence", "utterance"),
    "output": ("completion", "response", "answer", "output"),
    "label": ("label", "category", "intent", "class"),
    "labels": ("labels",),
    "target": ("target", "score"),
    "targets": ("targets",),  # regression with several named targets: {"quality": 4, "speed": 2}
}
LABEL_SEPARATORS = ("|", ";", ",")  # multi-label cells in CSV files: "billing|refund"


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
        return f"{self.file}:{self.line}  {self.field or '-'}  {self.message}  → {self.fix}"


@dataclass
class Example:
    """The canonical record. Generation rows carry `messages`; classification and regression rows `text` with
    `label`, `labels` or `target`; regression rows with several targets carry `targets` (name → value, in the
    order of the file's first row) and no `target`."""

    messages: list[dict] | None
    file: str
    line: int
    meta: dict = field(default_factory=dict)
    text: str | None = None
    label: str | None = None
    labels: list[str] | None = None
    target: float | None = None
    targets: dict[str, float] | None = None

    @property
    def target_names(self) -> list[str] | None:
        """The regression targets this row gives: ["target"] for one bare number (the single-target form)."""
        if self.targets is not None:
            return list(self.targets)
        return ["target"] if self.target is not None else None

    @property
    def prompt_messages(self) -> list[dict]:
        """Everything before the last assistant turn: what the model sees at evaluation time."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def reference(self) -> str:
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]

    @property
    def input_text(self) -> str:
        """The text the model reads: the prompt side of a conversation, or the text field."""
        if self.messages is None:
            return self.text or ""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "assistant")

    @property
    def output_text(self) -> str:
        if self.messages is not None:
            return "\n".join(m["content"] for m in self.messages if m["role"] == "assistant")
        if self.labels is not None:
            return "|".join(sorted(self.labels))
        if self.targets is not None:
            return ", ".join(f"{name}={value!r}" for name, value in self.targets.items())
        return self.label if self.label is not None else "" if self.target is None else repr(self.target)

    def texts(self) -> list[tuple[str, str]]:
        """(field name, text) pairs, for content scans."""
        if self.messages is not None:
            return [(f"messages[{i}].content", m["content"]) for i, m in enumerate(self.messages)]
        return [("text", self.text or "")]

    def to_json(self) -> dict:
        body: dict = {"messages": self.messages} if self.messages is not None else {"text": self.text}
        for name in ("label", "labels", "target", "targets"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return {**body, **self.meta, "_source": f"{self.file}:{self.line}"}


@dataclass(frozen=True)
class Mapping:
    """Which format a file holds and which column plays which role."""

    format: str
    columns: dict[str, str]  # role → column; several target columns as "target:NAME" → NAME

    def describe(self) -> str:
        roles = ", ".join(f"{role} ← '{column}'" for role, column in self.columns.items())
        return f"{self.format} ({roles})" if roles else self.format


FIXES = {
    "invalid_json": "make the line one complete JSON object (check quotes, commas and brackets)",
    "invalid_csv": "check the quoting: a field with commas, quotes or newlines must be in double quotes",
    "csv_field_count": "give the row as many fields as the header (quote fields that contain the delimiter)",
    "not_an_object": "each row must be an object such as {\"prompt\": ..., \"completion\": ...}",
    "unknown_format": "use messages, conversations, instruction+output, prompt+completion or text+label columns, "
                      "or map yours with data.columns",
    "format_mismatch": "use the same format on every row of a file, or set data.format",
    "missing_field": "add the field, or remove the row",
    "wrong_type": "give the field the expected type",
    "empty_field": "fill in the text, or remove the row",
    "empty_turn": "write the turn's text, or remove the turn",
    "unknown_role": "use the roles system, user and assistant (ShareGPT: system, human, gpt)",
    "wrong_role_order": "start with an optional system message, then alternate user and assistant",
    "no_assistant_turn": "add an assistant message with the answer the model should learn",
    "trailing_user_turn": "add the assistant's answer, or drop the last user message (it is not trained on)",
    "invalid_weight": "set weight to 0 (not trained on) or 1 (trained on)",
    "invalid_target": "give a finite number",
    "missing_target": "give every row a number for each target, or remove the row",
    "extra_target": "give every row the same targets (the file's first row sets them), or remove the row",
    "encoding": "save the file as UTF-8",
    "bom": "save the file as UTF-8 without BOM (harmless here, but other tools read the mark as text)",
    "mixed_newlines": "use one kind of line ending throughout",
    "empty_file": "add at least one row",
    "header_only": "add rows under the header",
    "bad_header": "give every column a unique, non-empty name",
}


def expand_paths(spec: str | list[str] | None) -> list[Path]:
    """A file, a list of files, or a folder (its data files, sorted) → existing file paths."""
    if spec is None:
        return []
    paths: list[Path] = []
    for item in spec if isinstance(spec, list) else [spec]:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"folder '{path}' holds no data files ({', '.join(SUFFIXES)})",
                                "put the data files there, or point at the files themselves")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"data file '{path}' does not exist",
                            "check the path (paths in a project file are relative to that file's folder)")
    return paths


def _first(row: dict, role: str, columns: dict[str, str | list[str]]) -> str | list[str] | None:
    if role in columns:
        wanted = columns[role]
        if isinstance(wanted, list):  # several target columns: a row with any of them is read as regression,
            return wanted if any(c in row for c in wanted) else None  # and the absent ones are row problems
        return wanted if wanted in row else None
    return next((name for name in ALIASES[role] if name in row), None)


def candidates(row: dict, columns: dict[str, str | list[str]] | None = None, task: str = "generation") -> list[Mapping]:
    """Every format the row's keys can be read as, the most likely first; `columns` (data.columns) names
    roles explicitly. For a non-generation task, text + label readings come before prompt + completion."""
    columns = dict(columns or {})
    found = {role: _first(row, role, columns) for role in ALIASES}
    text, output = found["input"], found["output"]
    generation: list[Mapping] = []
    if "messages" in row:
        generation.append(Mapping("chat", {"messages": "messages"}))
    if "conversations" in row:
        generation.append(Mapping("sharegpt", {"conversations": "conversations"}))
    if "instruction" in row and "output" in row and "input" not in columns:
        generation.append(Mapping("alpaca", {"instruction": "instruction", "output": "output"}))
    if text and output:
        generation.append(Mapping("prompt_completion", {"prompt": text, "completion": output}))
    labelled: list[Mapping] = []
    if text and found["labels"]:
        labelled.append(Mapping("text_labels", {"text": text, "labels": found["labels"]}))
    if text and found["target"]:
        target = found["target"]
        roles = {f"target:{c}": c for c in target} if isinstance(target, list) else {"target": target}
        labelled.append(Mapping("text_target", {"text": text, **roles}))
    if text and found["label"]:
        kind = {"regression": "text_target", "multilabel": "text_labels"}.get(task, "text_label")
        labelled.append(Mapping(kind, {"text": text, kind.split("_")[1]: found["label"]}))
    # After the label reading: a classification file that happens to carry a `targets` column stays text_label.
    if text and found["targets"]:
        labelled.append(Mapping("text_target", {"text": text, "targets": found["targets"]}))
    # Raw text only from a column really named text (or mapped): a prompt without its completion is an error.
    plain = [Mapping("text", {"text": text})] if text and (text == "text" or "input" in columns) else []
    return (generation + labelled if task == "generation" else labelled + generation) + plain


def detect(row: dict, columns: dict[str, str | list[str]] | None = None, task: str = "generation",
           fmt: str = "auto") -> Mapping | None:
    """The row's format: the most likely reading, or the reading in the forced format `fmt`."""
    options = candidates(row, columns, task)
    if fmt != "auto":
        options = [m for m in options if m.format == fmt]
    return options[0] if options else None


def _text(row: dict, column: str, name: str | None = None) -> str:
    name = name or column
    value = row.get(column)
    if value is None:
        raise RowProblem(name, "missing_field", f"'{name}' is missing")
    if not isinstance(value, str):
        raise RowProblem(name, "wrong_type", f"'{name}' is a {type(value).__name__}, expected text")
    if not value.strip():
        raise RowProblem(name, "empty_field", f"'{name}' is empty")
    return value


def _conversation(turns: list, sharegpt: bool, warnings: list[tuple[str, str, str]]) -> list[dict]:
    key = "conversations" if sharegpt else "messages"
    if not isinstance(turns, list) or not turns:
        raise RowProblem(key, "wrong_type", f"'{key}' must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RowProblem(where, "wrong_type", f"{where} is a {type(turn).__name__}, expected an object")
        role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
        raw_role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if sharegpt else raw_role
        if role not in ROLES:
            raise RowProblem(f"{where}.{role_key}", "unknown_role", f"{where}.{role_key} is {raw_role!r}")
        content = turn.get(text_key)
        if not isinstance(content, str):
            code = "missing_field" if content is None else "wrong_type"
            raise RowProblem(f"{where}.{text_key}", code, f"{where}.{text_key} is "
                             f"{'missing' if content is None else 'a ' + type(content).__name__ + ', expected text'}")
        if not content.strip():
            code = "empty_turn" if role == "assistant" else "empty_field"
            raise RowProblem(f"{where}.{text_key}", code, f"{where} ({role}) is empty")
        message = {"role": role, "content": content}
        if "weight" in turn:
            if turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
                raise RowProblem(f"{where}.weight", "invalid_weight", f"{where}.weight is {turn['weight']!r}")
            message["weight"] = int(turn["weight"])
        out.append(message)
    body = out[1:] if out[0]["role"] == "system" else out
    expected = ["user", "assistant"] * len(body)
    if [m["role"] for m in body] != expected[:len(body)]:
        roles = " → ".join(m["role"] for m in out)
        raise RowProblem(key, "wrong_role_order", f"the turns go {roles}")
    if not any(m["role"] == "assistant" for m in out):
        raise RowProblem(key, "no_assistant_turn", "the conversation has no assistant turn to learn from")
    if out[-1]["role"] == "user":
        warnings.append((key, "trailing_user_turn", "the last user message has no answer"))
    return out


def _labels(value) -> list[str]:
    if isinstance(value, str):
        separator = next((s for s in LABEL_SEPARATORS if s in value), None)
        parts = value.split(separator) if separator else [value]
        return [p.strip() for p in parts if p.strip()]
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return [str(v).strip() for v in value]
    raise RowProblem("labels", "wrong_type", f"'labels' is a {type(value).__name__}, expected a list of labels")


def to_example(row: dict, mapping: Mapping, file: str, line: int,
               warnings: list[tuple[str, str, str]]) -> Example:
    """One raw row → Example; raises RowProblem when the row cannot be used."""
    used = set(mapping.columns.values())
    fmt, cols = mapping.format, mapping.columns
    messages = text = label = labels = target = targets = None
    if fmt in ("chat", "sharegpt"):
        messages = _conversation(row.get(cols.get("messages", cols.get("conversations"))), fmt == "sharegpt",
                                 warnings)
    elif fmt == "alpaca":
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RowProblem("input", "wrong_type", f"'input' is a {type(extra).__name__}, expected text")
        used.add("input")
        prompt = _text(row, "instruction") + (f"\n\n{extra}" if extra and extra.strip() else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row, "output")}]
    elif fmt == "prompt_completion":
        messages = [{"role": "user", "content": _text(row, cols["prompt"])},
                    {"role": "assistant", "content": _text(row, cols["completion"])}]
    else:
        text = _text(row, cols["text"])
        if fmt == "text_label":
            value = row.get(cols["label"])
            if isinstance(value, (int, str)) and not isinstance(value, bool) and str(value).strip():
                label = str(value).strip()
            else:
                code = "missing_field" if value is None or value == "" else "wrong_type"
                raise RowProblem(cols["label"], code, f"'{cols['label']}' is {value!r}, expected one label")
        elif fmt == "text_labels":
            labels = _labels(row.get(cols["labels"]))
        elif fmt == "text_target":
            target, targets = parse_targets(row, cols)
    meta = {k: v for k, v in row.items() if k not in used}
    return Example(messages, file, line, meta, text, label, labels, target, targets)


@dataclass
class FileScan:
    """What `iter_file` learned about a file, filled in as it streams: the mapping understood, the rows read."""

    path: str
    mapping: Mapping | None = None
    rows: int = 0
    target_names: list[str] | None = None  # regression: the targets of the first row, which every row must give


def iter_file(path: Path, fmt: str = "auto", columns: dict[str, str | list[str]] | None = None,
              task: str = "generation", scan: FileScan | None = None
              ) -> Iterator[Example | tuple[Finding, dict | None]]:
    """Stream one file: each usable row as an Example, each problem as (Finding, the raw row or None), in file
    order (file-level notes such as a BOM come last). Nothing is held but the current row."""
    name = str(path)
    scan = scan if scan is not None else FileScan(name)
    read, rows = read_rows(path)

    def finding(line: int, field_name: str, code: str, message: str, severity: str = "error",
                fix: str | None = None) -> Finding:
        return Finding(name, line, field_name, code, severity, message, fix or FIXES[code])

    for raw in rows:
        scan.rows += 1
        if raw.data is None:
            yield finding(raw.line, "", *raw.error), None
            continue
        mapping = scan.mapping
        row_mapping = mapping if mapping and mapping in candidates(raw.data, columns, task) else \
            detect(raw.data, columns, task, fmt)
        missing = [c for c in mapping.columns.values() if c not in raw.data] if mapping else []
        if mapping and missing and len(missing) < len(mapping.columns):
            role = next(r for r, c in mapping.columns.items() if c == missing[0])
            yield finding(raw.line, missing[0], "missing_target" if role.startswith("target:") else "missing_field",
                          f"'{missing[0]}' is missing (the file is {mapping.format})"), raw.data
            continue
        if row_mapping is None:
            wanted = "a known format" if fmt == "auto" else f"the {fmt} format"
            yield finding(raw.line, "", "unknown_format", f"the keys {sorted(raw.data)} do not hold {wanted}"), \
                raw.data
            continue
        if mapping is None:
            scan.mapping = mapping = row_mapping
        elif row_mapping.format != mapping.format:
            yield finding(raw.line, "", "format_mismatch",
                          f"this row is {row_mapping.format} but the file is {mapping.format}"), raw.data
            continue
        warnings: list[tuple[str, str, str]] = []
        try:
            example = to_example(raw.data, mapping, name, raw.line, warnings)
            check_targets(example, mapping, scan)
        except RowProblem as problem:
            yield finding(raw.line, problem.field_name, problem.code, problem.message, fix=problem.fix), raw.data
            continue
        for field_name, code, message in warnings:
            yield finding(raw.line, field_name, code, message, "warning"), None
        yield example
    for note in read.notes:
        yield finding(note.line, "", note.code, note.message, note.severity), None
    if scan.rows == 0 and not any(n.code == "header_only" for n in read.notes):
        yield finding(1, "", "empty_file", "the file holds no rows"), None


def read_file(path: Path, fmt: str = "auto", columns: dict[str, str | list[str]] | None = None, task: str = "generation"
              ) -> tuple[list[Example], list[Finding], Mapping | None, int]:
    """Read one file. Returns (examples, findings, the mapping understood, number of rows)."""
    scan = FileScan(str(path))
    examples: list[Example] = []
    findings: list[Finding] = []
    for item in iter_file(path, fmt, columns, task, scan):
        if isinstance(item, Example):
            examples.append(item)
        else:
            findings.append(item[0])
    return examples, findings, scan.mapping, scan.rows


def read_examples(spec: str | list[str], fmt: str = "auto", columns: dict[str, str | list[str]] | None = None,
                  task: str = "generation") -> tuple[list[Example], list[Finding], Mapping | None, int]:
    """Read every file of a data spec; the mapping reported is the first file's."""
    examples: list[Example] = []
    findings: list[Finding] = []
    mapping: Mapping | None = None
    rows = 0
    for path in expand_paths(spec):
        file_examples, file_findings, file_mapping, file_rows = read_file(path, fmt, columns, task)
        examples += file_examples
        findings += file_findings
        mapping = mapping or file_mapping
        rows += file_rows
    return examples, findings, mapping, rows
