"""Read JSONL, JSON arrays, CSV/TSV and Parquet into raw rows that remember their physical line.

Readers stream where the format allows (JSONL, CSV, Parquet), so memory does not grow with the file. Every
row comes out either as a dict or as an error that says why it could not be parsed; file-level problems (BOM,
mixed newlines, empty file, header-only CSV) come out as notes. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet"}
# A CSV field may legitimately be long (a contract, a transcript); the stdlib default of 128 KiB is not enough.
csv.field_size_limit(64 * 2**20)


@dataclass
class RawRow:
    line: int  # 1-based physical line where the row starts (CSV: the header is line 1); Parquet: row number
    data: dict | None  # None when the row could not be parsed
    error: tuple[str, str] | None = None  # (code, message) when data is None


@dataclass
class FileNote:
    line: int
    code: str
    severity: str
    message: str


@dataclass
class FileRead:
    path: Path
    kind: str
    notes: list[FileNote] = field(default_factory=list)


def file_kind(path: Path) -> str:
    return SUFFIXES.get(path.suffix.lower(), "jsonl")


def _decode_lines(path: Path, read: FileRead) -> Iterator[tuple[int, str | None, str]]:
    """Yield (line number, decoded line or None when it is not UTF-8, raw ending) for each physical line."""
    endings = {"\r\n": 0, "\n": 0}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
                read.notes.append(FileNote(1, "bom", "warning", "the file starts with a UTF-8 byte-order mark"))
            ending = "\r\n" if raw.endswith(b"\r\n") else "\n" if raw.endswith(b"\n") else ""
            if ending:
                endings[ending] += 1
            try:
                yield number, raw.decode("utf-8"), ending
            except UnicodeDecodeError as exc:
                yield number, None, f"byte {exc.start} of the line (0x{raw[exc.start]:02x}) is not valid UTF-8"
    crlf, lf = endings["\r\n"], endings["\n"]
    if crlf and lf:
        read.notes.append(FileNote(1, "mixed_newlines", "warning", f"the file mixes Windows (CRLF, {crlf} lines) "
                                   f"and Unix (LF, {lf} lines) line endings"))


def _jsonl_rows(path: Path, read: FileRead) -> Iterator[RawRow]:
    for number, text, detail in _decode_lines(path, read):
        if text is None:
            yield RawRow(number, None, ("encoding", detail))
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawRow(number, None, ("invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            yield RawRow(number, None, ("not_an_object", f"the line is a JSON {type(value).__name__}, not an object"))
            continue
        yield RawRow(number, value)


def _json_array_rows(path: Path, read: FileRead) -> Iterator[RawRow]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        read.notes.append(FileNote(1, "bom", "warning", "the file starts with a UTF-8 byte-order mark"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield RawRow(raw[:exc.start].count(b"\n") + 1, None, ("encoding", f"byte {exc.start} is not valid UTF-8"))
        return
    if not text.strip():
        return
    if text.lstrip()[0] != "[":  # a .json file that holds JSON lines after all
        yield from _jsonl_rows(path, FileRead(path, "jsonl"))
        return
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            yield RawRow(line, None, ("invalid_json", f"not valid JSON ({exc.msg}); the rest of the array cannot "
                                                      "be read"))
            return
        if isinstance(value, dict):
            yield RawRow(line, value)
        else:
            yield RawRow(line, None, ("not_an_object", f"the element is a JSON {type(value).__name__}, "
                                                       "not an object"))


def _csv_rows(path: Path, read: FileRead, delimiter: str) -> Iterator[RawRow]:
    bad_lines: dict[int, str] = {}

    def lines() -> Iterator[str]:
        for number, text, detail in _decode_lines(path, read):
            if text is None:
                bad_lines[number] = detail
                yield ""  # keep the physical line count right; the row it belongs to is reported below
                continue
            yield text

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        yield RawRow(1, None, ("invalid_csv", f"the header cannot be parsed ({exc})"))
        return
    if header is None:
        return
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or not all(header):
        read.notes.append(FileNote(1, "bad_header", "error", f"the header {header} has empty or repeated names"))
    start = reader.line_num + 1
    rows = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield RawRow(start, None, ("invalid_csv", f"the row cannot be parsed as CSV ({exc}); check its quotes"))
            start = reader.line_num + 1
            continue
        end = reader.line_num
        line, start = start, end + 1
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        rows += 1
        encoding_errors = [n for n in range(line, end + 1) if n in bad_lines]
        if encoding_errors:
            yield RawRow(line, None, ("encoding", bad_lines[encoding_errors[0]]))
        elif len(values) != len(header):
            yield RawRow(line, None, ("csv_field_count", f"the row has {len(values)} fields, the header has "
                                                         f"{len(header)}"))
        else:
            yield RawRow(line, dict(zip(header, values)))
    if rows == 0:
        read.notes.append(FileNote(1, "header_only", "error", "the CSV file has a header but no rows"))


def _parquet_rows(path: Path, read: FileRead) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        from tunesmith.errors import DataError

        raise DataError(f"'{path}' is a Parquet file and pyarrow is not installed",
                        "pip install 'tunesmith[parquet]' (or pyarrow)") from None
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield RawRow(number, row)


def read_rows(path: Path, kind: str | None = None) -> tuple[FileRead, Iterator[RawRow]]:
    """The file's notes object (filled while the rows are consumed) and an iterator over its rows."""
    kind = kind or file_kind(path)
    read = FileRead(path, kind)
    if kind == "jsonl":
        return read, _jsonl_rows(path, read)
    if kind == "json":
        return read, _json_array_rows(path, read)
    if kind in ("csv", "tsv"):
        return read, _csv_rows(path, read, "\t" if kind == "tsv" else ",")
    return read, _parquet_rows(path, read)
