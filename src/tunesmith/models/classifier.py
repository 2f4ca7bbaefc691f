"""Sequence classification and regression models: loading one for training, and the prediction API that
evaluation and serving call.

    from tunesmith.models.classifier import load_classifier
    clf = load_classifier("runs/intents")
    clf.predict(["where is my parcel?"])  # [{"label": "track_order", "probabilities": {...}}]

Classification returns "label" + "probabilities" (softmax), multilabel "labels" (each label whose sigmoid
probability reaches its tuned threshold) + "probabilities", regression "value" (a float, or a list when there
are several targets) in the units of the training data, plus "targets" (name → value) when the targets are
named or several: [{"value": [4.1, 2.3], "targets": {"quality": 4.1, "speed": 2.3}}].
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.data.encode import load_space
from tunesmith.errors import ModelError, RunDirError

PROBLEM_TYPES = {"classification": "single_label_classification", "multilabel": "multi_label_classification",
                 "regression": "regression"}


def head_kwargs(space: dict) -> dict:
    """num_labels, id2label/label2id (so the saved config names the classes) and the problem type."""
    if space["task"] == "regression":
        names = space["names"]
        # named targets: the exported config says which output is which (the single-target config is unchanged)
        named = {} if names == ["target"] else {"id2label": dict(enumerate(names)),
                                                "label2id": {name: i for i, name in enumerate(names)}}
        return {"num_labels": len(names), "problem_type": PROBLEM_TYPES["regression"], **named}
    labels = space["labels"]
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "problem_type": PROBLEM_TYPES[space["task"]]}


def head_modules(model) -> list[str]:
    """The modules the task adds on top of the pretrained body (BERT `classifier`, Llama/GPT-2 `score`,
    RoBERTa `classifier` with its own dense layer), plus BERT's pooler: the head reads the [CLS] vector through
    it, and sentence-embedding models such as MiniLM never trained it for that."""
    body = getattr(model, "base_model_prefix", "")
    names = [name for name, child in model.named_children()
             if name != body and any(True for _ in child.parameters())]
    if getattr(getattr(model, body, None), "pooler", None) is not None:
        names.append("pooler")
    return names


def load_sequence_model(path: str, space: dict, pad_token_id: int | None, dtype=torch.float32,
                        quantization=None):
    """The pretrained body with a new head sized for `space`; returns (model, names of the head modules)."""
    from transformers import AutoModelForSequenceClassification

    # 4-bit weights are placed on the GPU as they load (a quantized model cannot be moved with .to() later)
    extra = {"quantization_config": quantization, "device_map": {"": 0}} if quantization is not None else {}
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, use_safetensors=True, output_loading_info=True, **head_kwargs(space), **extra)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a sequence classification model from '{path}': {str(exc).splitlines()[0]}",
                         "use an encoder (BERT, RoBERTa, MiniLM) or a decoder (Llama, GPT-2, Qwen) folder with "
                         "config.json and *.safetensors weights") from None
    # Decoders classify from the last non-padding token, which they find through pad_token_id.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    heads = head_modules(model)
    # Anything else the checkpoint lacked was initialized at random: it must train in full (and be saved),
    # or a reloaded model would draw different random weights.
    for key in info.get("missing_keys", []):
        parts = key.split(".")
        owner = ".".join(parts[:-1])
        if owner and not any(h in parts for h in heads):
            heads.append(owner)
    return model, heads


def collate_ids(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of the batch (dynamic padding); padding gets attention 0."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def regression_output(values: list[float], names: list[str]) -> dict:
    """{"value": 4.2} for the single-target form (the shape clients have always read); with named or several
    targets also {"targets": {"quality": 4.1, "speed": 2.3}}, beside "value" as the list in that order."""
    if names == ["target"]:
        return {"value": values[0]}
    return {"value": values[0] if len(values) == 1 else list(values), "targets": dict(zip(names, values))}


def outputs_from_logits(logits: torch.Tensor, space: dict) -> list[dict]:
    """Logits of a batch → the prediction dicts of the API (probabilities rounded to 6 places)."""
    logits = logits.float()
    if space["task"] == "regression":
        values = logits.cpu().tolist()
        if space.get("normalize", True):
            values = [[v * s + m for v, s, m in zip(row, space["std"], space["mean"])] for row in values]
        return [regression_output(row, space["names"]) for row in values]
    labels = space["labels"]
    if space["task"] == "classification":
        probs = torch.softmax(logits, dim=-1).cpu().tolist()
        return [{"label": labels[max(range(len(row)), key=row.__getitem__)],
                 "probabilities": {label: round(p, 6) for label, p in zip(labels, row)}} for row in probs]
    thresholds = space.get("thresholds") or [0.5] * len(labels)
    probs = torch.sigmoid(logits).cpu().tolist()
    return [{"labels": [label for label, p, t in zip(labels, row, thresholds) if p >= t],
             "probabilities": {label: round(p, 6) for label, p in zip(labels, row)}} for row in probs]


class Classifier:
    """A trained run ready to predict: model, tokenizer and the label set / target statistics."""

    def __init__(self, model, tokenizer, space: dict, max_seq_len: int, device: str):
        self.model, self.tokenizer, self.space = model.eval(), tokenizer, space
        self.max_seq_len, self.device = max_seq_len, device

    @property
    def task(self) -> str:
        return self.space["task"]

    @property
    def labels(self) -> list[str] | None:
        return self.space.get("labels")

    @torch.no_grad()
    def logits(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Raw head outputs in input order; batches of similar length so little compute goes to padding."""
        from tunesmith.data.encode import encode_texts

        ids, _ = encode_texts(self.tokenizer, list(texts), self.max_seq_len)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[torch.Tensor | None] = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(self.device) for k, v in collate_ids([ids[i] for i in chunk],
                                                                  self.tokenizer.pad_token_id).items()}
            logits = self.model(**batch).logits.float().cpu()
            for row, i in enumerate(chunk):
                out[i] = logits[row]
        return torch.stack(out) if out else torch.zeros((0, self.model.config.num_labels))

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict]:
        return outputs_from_logits(self.logits(texts, batch_size), self.space)


def weights_dir(run_dir: Path) -> Path:
    """adapter/ (PEFT: adapters + the head via modules_to_save) or model/ (full fine-tuning)."""
    for name in ("adapter", "model"):
        if (Path(run_dir) / name).is_dir():
            return Path(run_dir) / name
    raise RunDirError(f"'{run_dir}' has neither adapter/ nor model/: the run has not finished training",
                      "run `tunesmith train PROJECT.yaml` (or `--resume` an interrupted run) first")


def load_classifier(run_dir: str | Path, device: str | None = None) -> Classifier:
    """Load a finished classification, multilabel or regression run for prediction."""
    from tunesmith.models.load import load_tokenizer, resolve
    from tunesmith.runs import load_run_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if config.task == "generation":
        raise RunDirError(f"'{run_dir}' is a generation run", "use the generation API (or `tunesmith chat`)")
    if config.model.classifier == "generative":  # a decoder that writes the label: scored per label
        from tunesmith.models.genclass import load_generative_classifier

        return load_generative_classifier(run_dir, device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = weights_dir(run_dir)
    space = load_space(run_dir)
    tokenizer = load_tokenizer(str(folder))
    if folder.name == "model":
        model, _ = load_sequence_model(str(folder), space, tokenizer.pad_token_id)
    else:
        from peft import PeftModel

        base, _ = load_sequence_model(resolve(config.model.base).path, space, tokenizer.pad_token_id)
        model = PeftModel.from_pretrained(base, folder)
    max_len = _max_seq_len(run_dir, config)
    return Classifier(model.to(device), tokenizer, space, max_len, device)


def _max_seq_len(run_dir: Path, config) -> int:
    import json

    stats = run_dir / "data" / "stats.json"
    if stats.is_file():
        return json.loads(stats.read_text())["max_seq_len"]
    return config.data.max_seq_len or 512
