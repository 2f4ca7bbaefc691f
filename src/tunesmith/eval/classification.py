"""Metrics and evaluation for classification, multilabel and regression runs.

Metrics are computed here from a confusion matrix in numpy (scikit-learn's definitions; the tests compare
against scikit-learn), with zero where a ratio has no denominator (sklearn's zero_division=0).

`base` in eval/metrics.json is the prior baseline, what a model that ignores the text scores: the most frequent
training class (classification), each label predicted when more than half the training rows carry it
(multilabel), the training mean of each target (regression; per-target metrics as "mse/NAME" beside their mean
over targets when there are several). A freshly initialized head would score the same or worse, and
varies with the random seed, so it is no useful reference; the prior is the chance level to beat.
Generative classification (model.classifier: generative) has a real baseline instead: the base decoder itself,
zero-shot, reading the same prompt (the label list) and scored with the same constrained decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunesmith.errors import ConfigError

CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro",
                          "recall_micro", "f1_micro", "precision_weighted", "recall_weighted", "f1_weighted")
MULTILABEL_METRICS = ("f1_micro", "f1_macro", "f1_weighted", "precision_micro", "recall_micro",
                      "precision_macro", "recall_macro", "subset_accuracy", "hamming_loss")
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
METRICS = {"classification": CLASSIFICATION_METRICS, "multilabel": MULTILABEL_METRICS,
           "regression": REGRESSION_METRICS}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def confusion_matrix(y_true: list[int], y_pred: list[int], n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """Macro, micro and support-weighted precision/recall/F1 from per-class counts."""
    support = tp + fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    weights = _ratio(support, np.full_like(support, support.sum()))
    micro_p, micro_r = _ratio(tp.sum(), tp.sum() + fp.sum()), _ratio(tp.sum(), tp.sum() + fn.sum())
    micro_f1 = _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())
    return {"precision_macro": precision.mean(), "recall_macro": recall.mean(), "f1_macro": f1.mean(),
            "precision_micro": float(micro_p), "recall_micro": float(micro_r), "f1_micro": float(micro_f1),
            "precision_weighted": float((precision * weights).sum()), "recall_weighted": float((recall * weights).sum()),
            "f1_weighted": float((f1 * weights).sum())}


def classification_metrics(y_true: list[int], y_pred: list[int], n_classes: int) -> dict[str, float]:
    """Averages over every class of the label set (sklearn with labels=range(n_classes))."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(matrix)
    fp, fn = matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp
    out = _prf(tp, fp, fn)
    out["accuracy"] = float(_ratio(tp.sum(), matrix.sum()))
    return {k: float(v) for k, v in out.items()}


def per_class_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, dict]:
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(matrix)
    fp, fn = matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp
    precision, recall, f1 = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
    return {label: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                    "f1": round(float(f1[i]), 6), "support": int(tp[i] + fn[i])} for i, label in enumerate(labels)}


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """y_true, y_pred: [rows x labels] 0/1 arrays."""
    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    out = _prf(tp, fp, fn)
    out["subset_accuracy"] = float((y_true == y_pred).all(axis=1).mean()) if len(y_true) else 0.0
    out["hamming_loss"] = float((y_true != y_pred).mean()) if y_true.size else 0.0
    return {k: float(v) for k, v in out.items()}


def regression_metrics(y_true, y_pred, names: list[str] | None = None) -> dict[str, float]:
    """Averaged over targets when there are several (sklearn's multioutput='uniform_average'); with `names` of
    two or more targets, each target's own as well under "mse/NAME", "r2/NAME", ... (a mean can hide one
    target the model never learned)."""
    y_true = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=float).reshape(len(y_pred), -1)
    err = y_pred - y_true
    mse = (err ** 2).mean(axis=0)
    mae = np.abs(err).mean(axis=0)
    total = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    # sklearn: r2 is 1 for a perfect fit of a constant target, 0 for an imperfect one
    r2 = np.where(total > 0, 1 - (err ** 2).sum(axis=0) / np.where(total > 0, total, 1), np.where(mse == 0, 1.0, 0.0))
    per_target = {"mse": mse, "rmse": np.sqrt(mse), "mae": mae, "r2": r2}
    out = {metric: float(values.mean()) for metric, values in per_target.items()}
    if names is not None and len(names) > 1:
        assert len(names) == y_true.shape[1], (names, y_true.shape)
        out.update({f"{metric}/{name}": float(values[j]) for metric, values in per_target.items()
                    for j, name in enumerate(names)})
    return out


def tune_thresholds(probs: np.ndarray, y_true: np.ndarray, default: float = 0.5) -> list[float]:
    """Per label, the decision threshold that maximizes that label's F1 on held-out rows.

    Candidates are 0.05, 0.10, ..., 0.95: finer steps overfit a few hundred eval rows. Ties go to the threshold
    nearest 0.5; a label with no positive eval row keeps `default` (its F1 is 0 whatever the threshold)."""
    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true, dtype=bool)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    out = []
    for j in range(probs.shape[1]):
        if not y_true[:, j].any():
            out.append(default)
            continue
        best, best_f1 = default, -1.0
        for t in sorted(grid, key=lambda t: abs(t - 0.5)):
            pred = probs[:, j] >= t
            tp = float((pred & y_true[:, j]).sum())
            f1 = 2 * tp / (pred.sum() + y_true[:, j].sum())
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        out.append(best)
    return out


def task_metrics(task: str, space: dict, targets: list, outputs: list[dict]) -> dict[str, float]:
    """Every metric of the task from training targets (class ids / multi-hot / values) and API outputs."""
    if task == "classification":
        index = {label: i for i, label in enumerate(space["labels"])}
        return classification_metrics(targets, [index[o["label"]] for o in outputs], len(space["labels"]))
    if task == "multilabel":
        pred = [[label in o["labels"] for label in space["labels"]] for o in outputs]
        return multilabel_metrics(np.asarray(targets), np.asarray(pred).reshape(len(outputs), -1))
    values = [o["value"] for o in outputs]
    return regression_metrics(targets, values, space["names"])


def _prior_outputs(task: str, space: dict, train_targets: list, n: int) -> list[dict]:
    """The prior baseline's predictions (see the module docstring)."""
    if task == "classification":
        counts = np.bincount(np.asarray(train_targets, dtype=int), minlength=len(space["labels"]))
        return [{"label": space["labels"][int(counts.argmax())]}] * n
    if task == "multilabel":
        share = np.asarray(train_targets, dtype=float).mean(axis=0)
        return [{"labels": [label for label, s in zip(space["labels"], share) if s > 0.5]}] * n
    from tunesmith.models.classifier import regression_output

    mean = np.asarray(train_targets, dtype=float).reshape(len(train_targets), -1).mean(axis=0).tolist()
    return [regression_output(mean, space["names"])] * n  # each target's own training mean


def select(names: list[str], task: str, values: dict[str, float]) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS[task]]
    if unknown:
        raise ConfigError(f"eval.metrics names unknown {task} metric(s) {unknown}",
                          f"choose from {', '.join(METRICS[task])} or set eval.metrics: auto")
    # Per-target regression metrics ("mse/quality") follow their metric: listing mse brings every mse/NAME.
    out = {n: round(values[n], 6) for n in names}
    out.update({k: round(v, 6) for k, v in values.items() if "/" in k and k.split("/", 1)[0] in names})
    return out


def evaluate_task(config, run_dir: Path, data: str | None = None) -> dict:
    """`tunesmith eval RUN_DIR` for classification, multilabel and regression runs."""
    from tunesmith.config import TASK_DEFAULTS
    from tunesmith.console import console
    from tunesmith.data.check import check, require_usable
    from tunesmith.data.encode import check_known_labels, target_of
    from tunesmith.data.formats import Example
    from tunesmith.errors import RunDirError
    from tunesmith.io import read_jsonl, write_json_atomic, write_jsonl_atomic
    from tunesmith.models.classifier import load_classifier

    run_dir = Path(run_dir)
    if data is not None:
        examples = require_usable(check(data, config.data.format, config.data.columns, config.task), "evaluation")
        source = data
    else:
        path = run_dir / "data" / "test.jsonl"
        if not path.is_file():
            raise RunDirError(f"'{path}' is missing", f"train first: `tunesmith train PROJECT.yaml` writes {path}")
        examples = []
        for row in read_jsonl(path):
            file, line = row["_source"].rsplit(":", 1)
            examples.append(Example(None, file, int(line), text=row["text"], label=row.get("label"),
                                    labels=row.get("labels"), target=row.get("target"),
                                    targets=row.get("targets")))
        source = json.loads((run_dir / "data" / "stats.json").read_text())["test_source"]
    if config.eval.max_examples:
        examples = examples[: config.eval.max_examples]
    classifier = load_classifier(run_dir, "cuda" if config.train.device != "cpu" and _cuda() else "cpu")
    space = classifier.space
    check_known_labels(examples, space, "evaluation")
    targets = [target_of(e, space) for e in examples]
    if config.task == "regression":
        targets = [t[0] if len(t) == 1 else t for t in targets]
    outputs = classifier.predict([e.text for e in examples], config.eval.batch_size)
    names = list(config.eval.metrics) if config.eval.metrics != "auto" else TASK_DEFAULTS[config.task]["eval.metrics"]
    finetuned = select(names, config.task, task_metrics(config.task, space, targets, outputs))
    base: dict[str, float] = {}
    generative = config.task == "classification" and config.model.classifier == "generative"
    base_outputs: list[dict] = []
    if config.eval.compare_base and generative:
        # A real baseline: the base decoder, zero-shot, with the same prompt and the same constrained decoding.
        with classifier.base():
            base_outputs = classifier.predict([e.text for e in examples], config.eval.batch_size)
        base = select(names, config.task, task_metrics(config.task, space, targets, base_outputs))
    elif config.eval.compare_base:
        train_targets = [row["target"] for row in read_jsonl(run_dir / "data" / "train.tokens.jsonl")]
        if config.task == "regression":
            train_targets = [t[0] if len(t) == 1 else t for t in train_targets]
        prior = _prior_outputs(config.task, space, train_targets, len(examples))
        base = select(names, config.task, task_metrics(config.task, space, targets, prior))
    result = {"task": config.task, "n": len(examples), "base": base, "finetuned": finetuned,
              "delta": {k: round(finetuned[k] - base[k], 6) for k in base}}

    eval_dir = run_dir / "eval"
    rows = []
    for example, target, output in zip(examples, targets, outputs):
        # several (or named) regression targets: the prediction and reference by name
        prediction = output.get("label", output.get("labels", output.get("targets", output.get("value"))))
        if "targets" in output:
            target = dict(zip(space["names"], target if isinstance(target, list) else [target]))
        # reference and finetuned_output are display strings (the report's columns, shared with generation runs):
        # a label, labels joined by "|" as in a CSV cell, or a number; "prediction" keeps the typed value.
        row = {"source": f"{example.file}:{example.line}", "text": example.text, "input": example.text,
               "reference": _display(example.label if config.task == "classification" else
                                     sorted(example.labels or []) if config.task == "multilabel" else target),
               "prediction": prediction, "finetuned_output": _display(prediction)}
        if "probabilities" in output:
            row["probabilities"] = output["probabilities"]
        rows.append(row)
    for row, output in zip(rows, base_outputs):  # generative runs: the zero-shot base decoder's answers
        row.update({"base_output": output["label"], "base_prediction": output["label"],
                    "base_probabilities": output["probabilities"]})
    write_jsonl_atomic(eval_dir / "predictions.jsonl", rows)
    if config.task == "classification":
        index = {label: i for i, label in enumerate(space["labels"])}
        predicted = [index[o["label"]] for o in outputs]
        write_json_atomic(eval_dir / "confusion.json", {"labels": space["labels"], "matrix": confusion_matrix(
            targets, predicted, len(space["labels"])).tolist()})
        write_json_atomic(eval_dir / "per_class.json", per_class_report(targets, predicted, space["labels"]))
    elif config.task == "multilabel":
        predicted = [[int(label in o["labels"]) for label in space["labels"]] for o in outputs]
        report = {}
        for j, label in enumerate(space["labels"]):
            column = classification_metrics([t[j] for t in targets], [p[j] for p in predicted], 2)
            report[label] = {"support": int(sum(t[j] for t in targets)), "threshold": space.get(
                "thresholds", [0.5] * len(space["labels"]))[j], "f1": round(per_class_report(
                    [int(t[j]) for t in targets], [p[j] for p in predicted], ["no", "yes"])["yes"]["f1"], 6),
                "accuracy": round(column["accuracy"], 6)}
        write_json_atomic(eval_dir / "per_class.json", report)
    write_json_atomic(eval_dir / "metrics.json", result)
    baseline = "zero-shot: the base decoder with the same prompt, decoding constrained to the labels" \
        if generative else "prior: " + {"classification": "the most frequent training class",
                                        "multilabel": "labels carried by most training rows",
                                        "regression": "the training mean"}[config.task]
    write_json_atomic(eval_dir / "source.json", {"data": source, "baseline": baseline})
    console.print(f"evaluated {len(examples)} examples from {source} → {eval_dir / 'metrics.json'}")
    return result


def _display(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{name}={_display(v)}" for name, v in value.items())
    if isinstance(value, list):
        return "|".join(_display(v) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
