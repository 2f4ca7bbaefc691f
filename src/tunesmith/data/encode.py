"""Text + label(s) / target rows → token ids and numeric targets, for classification, multilabel and regression.

The label set is read from the training rows (sorted, so the same data always gives the same ids) and saved
with the run as labels.json; regression targets (one or several per row) keep their raw values here, and their
names, means and standard deviations go to targets.json (the loop normalizes with them, prediction undoes it).
Eval and test rows whose label (or set of targets) the training data never shows cannot be scored, so they stop
the run with the rows listed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunesmith.data.formats import Example
from tunesmith.errors import DataError
from tunesmith.io import write_json_atomic, write_jsonl_atomic

LABELS_FILE = "labels.json"  # {"task": ..., "labels": [...]} for classification and multilabel
TARGETS_FILE = "targets.json"  # {"names": [...], "mean": [...], "std": [...], "normalize": bool} for regression
THRESHOLDS_FILE = "thresholds.json"  # multilabel: {"labels": [...], "thresholds": [...]} tuned on the eval split


def _example_labels(example: Example) -> list[str]:
    if example.labels is not None:
        return list(example.labels)
    return [example.label] if example.label is not None else []


def task_space(task: str, train: list[Example], normalize: bool = True) -> dict:
    """What the head predicts: the sorted label set, or the regression targets' names and statistics (one
    mean and std per target)."""
    if any(e.text is None for e in train):
        from tunesmith.errors import ConfigError

        raise ConfigError(f"task is {task}, but the training data holds conversations or prompt/completion "
                          "pairs, not text with a label or target",
                          "give text + label (or labels, or target) columns, map them with data.columns "
                          "(e.g. {input: instruction, label: intent}), or set task: generation")
    if task == "regression":
        rows = [e for e in train if e.target_names is not None]
        if not rows:
            raise DataError("task is regression but no training row has a numeric target",
                            "give rows with text and a number (columns text + target), or map them with "
                            "data.columns: {target: YOUR_COLUMN}")
        # The first row's targets, in its order (the formats check makes every row of a file agree; this
        # catches training files that disagree with each other).
        names = rows[0].target_names
        _check_target_names(train, names, "training")
        means, stds = [], []
        for name in names:
            values = [_values(e)[name] for e in rows]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            # A constant target has std 0: dividing by it would blow up; 1.0 leaves the values as they are.
            means.append(mean)
            stds.append(std if std > 0 else 1.0)
        return {"task": task, "names": names, "mean": means, "std": stds, "normalize": normalize}
    labels = sorted({label for e in train for label in _example_labels(e)})
    if task == "classification" and len(labels) < 2:
        raise DataError(f"task is classification but the training data has {len(labels)} distinct label(s)",
                        "give rows of at least two classes (or check data.columns.label points at the right column)")
    if not labels:
        raise DataError(f"task is {task} but no training row carries a label",
                        "give rows with text and labels, or map the columns with data.columns")
    return {"task": task, "labels": labels}


def _values(example: Example) -> dict[str, float]:
    """A regression row's targets by name; the single-target form is named "target"."""
    return dict(example.targets) if example.targets is not None else {"target": example.target}


def _check_target_names(examples: list[Example], names: list[str], role: str) -> None:
    """Stop on rows whose targets are not the run's: the head has one output per target, in a fixed order."""
    wrong = [e for e in examples if e.target_names is None or sorted(e.target_names) != sorted(names)]
    if wrong:
        where = ", ".join(f"{e.file}:{e.line} ({', '.join(e.target_names or ['none'])})" for e in wrong[:5])
        raise DataError(f"{len(wrong)} {role} row(s) do not give the run's targets {', '.join(names)}: {where}"
                        + (" ..." if len(wrong) > 5 else ""),
                        f"give every row a number for each of {', '.join(names)} (the first training row sets them), "
                        "or remove the rows")


def save_space(run_dir: Path, space: dict) -> None:
    write_json_atomic(run_dir / (TARGETS_FILE if space["task"] == "regression" else LABELS_FILE), space)


def load_space(folder: Path) -> dict:
    """labels.json or targets.json from a run directory (or a weights folder they were copied to)."""
    for name in (LABELS_FILE, TARGETS_FILE):
        if (Path(folder) / name).is_file():
            space = json.loads((Path(folder) / name).read_text())
            thresholds = Path(folder) / THRESHOLDS_FILE
            if thresholds.is_file():
                space["thresholds"] = json.loads(thresholds.read_text())["thresholds"]
            return space
    from tunesmith.errors import RunDirError

    raise RunDirError(f"'{folder}' has neither {LABELS_FILE} nor {TARGETS_FILE}",
                      "train the run first (`tunesmith train PROJECT.yaml` writes them)")


def check_known_labels(examples: list[Example], space: dict, role: str) -> None:
    """Stop on eval/test rows whose labels the training data never shows: the head has no output for them."""
    if space["task"] == "regression":
        _check_target_names(examples, space["names"], role)
        return
    known = set(space["labels"])
    unseen = [(e, label) for e in examples for label in _example_labels(e) if label not in known]
    if unseen:
        names = sorted({label for _, label in unseen})
        where = ", ".join(f"{e.file}:{e.line}" for e, _ in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
        raise DataError(f"{len(unseen)} {role} row(s) carry label(s) the training data never shows: "
                        f"{', '.join(map(repr, names[:10]))} (rows {where})",
                        "add training rows with those labels, or remove the rows from the " + role + " data "
                        "(a model cannot predict a class it never saw)")


def target_of(example: Example, space: dict):
    """The row's training target: a class id, a multi-hot list, or a list of raw numbers."""
    if space["task"] == "classification":
        return space["labels"].index(example.label)
    if space["task"] == "multilabel":
        present = set(_example_labels(example))
        return [1.0 if label in present else 0.0 for label in space["labels"]]
    values = _values(example)
    return [float(values[name]) for name in space["names"]]


def encode_texts(tokenizer, texts: list[str], max_seq_len: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids with the model's special tokens ([CLS] ... [SEP] for BERT), cut to max_seq_len."""
    full = tokenizer(texts, add_special_tokens=True)["input_ids"]
    clipped = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_seq_len)["input_ids"]
    return clipped, [len(ids) > max_seq_len for ids in full]


def encode_splits(task: str, tokenizer, train: list[Example], held: list[Example], test: list[Example],
                  max_seq_len: int, run_dir: Path, normalize: bool = True) -> dict:
    """Write data/{train,eval}.tokens.jsonl and labels.json / targets.json; return the split stats."""
    space = task_space(task, train, normalize)
    check_known_labels(held, space, "eval")
    check_known_labels(test, space, "test")
    save_space(run_dir, space)
    stats: dict = {}
    for role, examples in (("train", train), ("eval", held)):
        ids, truncated = encode_texts(tokenizer, [e.text or "" for e in examples], max_seq_len)
        rows = [{"input_ids": row, "target": target_of(e, space), "truncated": cut}
                for row, e, cut in zip(ids, examples, truncated)]
        write_jsonl_atomic(run_dir / "data" / f"{role}.tokens.jsonl", rows)
        lengths = [len(r) for r in ids]
        stats[role] = {"rows": len(examples), "kept": len(rows), "truncated": sum(truncated),
                       "tokens": sum(lengths), "max_tokens": max(lengths, default=0)}
    if task != "regression":
        counts = {label: 0 for label in space["labels"]}
        for e in train:
            for label in _example_labels(e):
                counts[label] += 1
        stats["label_counts"] = counts
    return stats
