"""`tunesmith predict` for classification, multilabel and regression runs: a file of texts in, one JSONL row per
input out, with the predicted label(s) or value and the probabilities (tunesmith.models.classifier)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.formats import ALIASES
from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError

MAX_SHOWN_PROBLEMS = 10


def read_texts(path: Path, column: str | None = None) -> list[tuple[dict, str]]:
    """Every row with the text to classify (the `text` column, or the usual input names); every unusable row is
    reported at once, before the model loads."""
    if not Path(path).is_file():
        raise DataError(f"'{path}' does not exist", "pass a JSONL (or JSON, CSV, Parquet) file with a text column")
    names = (column,) if column else ALIASES["input"]
    rows, problems = [], []
    _read, raw_rows = read_rows(Path(path))
    for raw in raw_rows:
        if raw.data is None:
            problems.append(f"{path}:{raw.line}  {raw.error[1]}")
            continue
        found = next((name for name in names if name in raw.data), None)
        if found is None or not isinstance(raw.data[found], str) or not raw.data[found].strip():
            problems.append(f"{path}:{raw.line}  no non-empty text in {'/'.join(names)}")
            continue
        rows.append((raw.data, raw.data[found]))
    if problems:
        shown = "\n".join(problems[:MAX_SHOWN_PROBLEMS])
        more = f"\n... and {len(problems) - MAX_SHOWN_PROBLEMS} more" if len(problems) > MAX_SHOWN_PROBLEMS else ""
        raise DataError(f"{len(problems)} rows of '{path}' cannot be used:\n{shown}{more}",
                        "give each row a text column (text, sentence, utterance, …)")
    if not rows:
        raise DataError(f"'{path}' holds no rows", "add one text per line")
    return rows


def classify_rows(run_dir: Path, rows: list[tuple[dict, str]], batch_size: int = 32, on_batch=None) -> list[dict]:
    from tunesmith.models.classifier import load_classifier
    from tunesmith.models.genclass import load_generative_classifier

    # A run directory, or the export of a generative classifier (a decoder folder with labels.json)
    classifier = load_classifier(run_dir) if (Path(run_dir) / "config.yaml").is_file() \
        else load_generative_classifier(run_dir)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        for (row, _text), prediction in zip(chunk, classifier.predict([text for _, text in chunk], batch_size)):
            out.append({**row, **prediction})
        if on_batch is not None:
            on_batch(len(chunk))
    return out
