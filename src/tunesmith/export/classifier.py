"""Exports of classification, multilabel and regression runs: `merged` (a plain Hugging Face folder that
`AutoModelForSequenceClassification` loads, with id2label in its config and the label/threshold/target files
beside it) and `adapter` (the PEFT adapter with the head). GGUF and Ollama are generation formats.

Parity: the export is loaded back the way its users load it and must give the fine-tuned run's logits on the
run's test texts within PARITY_MAX_ABS (fp32 throughout) and the same predicted classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunesmith.errors import ConfigError
from tunesmith.export.parity import ParityError

PARITY_MAX_ABS = 1e-4  # fp32 weights on both sides: only the order of float additions may differ
PARITY_TEXTS = 16
SIDE_FILES = ("labels.json", "thresholds.json", "targets.json")


def _texts(run_dir: Path) -> list[str]:
    from tunesmith.io import read_jsonl

    for name in ("test", "eval", "train"):
        path = run_dir / "data" / f"{name}.jsonl"
        if path.is_file():
            texts = [row["text"] for row in read_jsonl(path) if isinstance(row.get("text"), str)]
            if texts:
                return texts[:PARITY_TEXTS]
    return ["a short text to compare the two models on", "another one, a little longer than the first"]


def write(run_dir: Path, fmt: str, folder: Path) -> None:
    from tunesmith.models.classifier import load_classifier, weights_dir

    if fmt not in ("merged", "adapter"):
        raise ConfigError(f"--format {fmt} is for generation models; this run is a classifier",
                          "use --format merged (AutoModelForSequenceClassification) or --format adapter")
    source = weights_dir(run_dir)
    if fmt == "adapter":
        if source.name != "adapter":
            raise ConfigError("this run fine-tuned every weight: it has no adapter", "use --format merged")
        shutil.copytree(source, folder, dirs_exist_ok=True)
    else:
        classifier = load_classifier(run_dir, "cpu")
        model = classifier.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(folder, safe_serialization=True)
        classifier.tokenizer.save_pretrained(folder)
    for name in SIDE_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, folder / name)


def check(run_dir: Path, fmt: str, folder: Path) -> dict:
    from tunesmith.models.classifier import load_classifier

    texts = _texts(run_dir)
    classifier = load_classifier(run_dir, "cpu")
    expected = classifier.logits(texts)
    if fmt == "merged":
        from transformers import AutoModelForSequenceClassification

        exported = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    else:
        from peft import PeftModel

        base = load_classifier(run_dir, "cpu").model.get_base_model()  # a fresh body + head, adapter removed
        exported = PeftModel.from_pretrained(base.__class__.from_pretrained(base.name_or_path, config=base.config),
                                             folder).eval()
    classifier.model = exported
    got = classifier.logits(texts)
    max_abs = float((expected - got).abs().max()) if len(texts) else 0.0
    # Regression has no class to agree on (argmax over several targets' values means nothing): its outputs
    # are the values themselves, held to PARITY_MAX_ABS above.
    same_top1 = classifier.task == "regression" or bool(torch.equal(expected.argmax(-1), got.argmax(-1)))
    failures = []
    if max_abs > PARITY_MAX_ABS:
        failures.append(f"max |Δlogit| {max_abs:.2e} > {PARITY_MAX_ABS}")
    if not same_top1:
        failures.append("the predicted classes differ")
    return {"format": fmt, "task": classifier.task, "texts": len(texts), "max_abs_logit_diff": max_abs,
            "same_predictions": same_top1, "threshold_max_abs": PARITY_MAX_ABS, "failures": failures,
            "passed": not failures}


def failure(fmt: str, result: dict, out: Path) -> ParityError:
    return ParityError(f"the {fmt} export does not reproduce the fine-tuned classifier: "
                       f"{'; '.join(result['failures'])}; nothing was written to '{out}'",
                       "export with the other format and report the numbers above")
