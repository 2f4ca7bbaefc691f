"""What an export starts from: a finished run directory, and the model as tunesmith itself runs it (the base
plus the adapter, or the fully fine-tuned weights), in fp32 so the parity check has an exact reference."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.config import ProjectConfig
from tunesmith.errors import ConfigError, RunDirError
from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve
from tunesmith.runs import load_run_config


@dataclass
class RunSource:
    run_dir: Path
    config: ProjectConfig
    base_path: str  # where transformers finds the base: a local folder, or a hub id
    weights_dir: Path  # run_dir/adapter: a PEFT adapter, or the full model for method 'full'
    is_adapter: bool  # True: adapter_config.json + adapter_model.safetensors (LoRA, DoRA)
    device: str


def _causal_lm(source: RunSource):
    if source.is_adapter:
        from peft import PeftModel

        base = load_causal_lm(source.base_path, torch.float32)
        return PeftModel.from_pretrained(base, source.weights_dir)
    return load_causal_lm(str(source.weights_dir), torch.float32)


# How each task's trained model is loaded. Classification and regression runs will add a sequence
# classification loader here (AutoModelForSequenceClassification + the adapter); the formats then declare which
# tasks they can write.
REFERENCE_LOADERS: dict[str, Callable[[RunSource], object]] = {"generation": _causal_lm}


def model_kind(config: ProjectConfig) -> str:
    """The REFERENCE_LOADERS key: a generative classifier is a plain decoder (its labels travel as labels.json)."""
    return "generation" if config.task == "classification" and config.model.classifier == "generative" \
        else config.task


def open_run(run_dir: Path, device: str | None = None) -> RunSource:
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if model_kind(config) not in REFERENCE_LOADERS:
        raise ConfigError(f"'{run_dir}' is a {config.task} run, and export handles generation runs only so far",
                          "export a generation run (task: generation); for this run use its adapter/ folder "
                          "directly with PEFT")
    weights_dir = run_dir / "adapter"
    if not weights_dir.is_dir():
        raise RunDirError(f"'{weights_dir}' is missing: the run has not finished training",
                          "run `tunesmith train PROJECT.yaml` (or `--resume` an interrupted run) first")
    is_adapter = (weights_dir / "adapter_config.json").is_file()
    if not is_adapter and not (weights_dir / "config.json").is_file():
        raise RunDirError(f"'{weights_dir}' holds neither adapter_config.json (LoRA/DoRA) nor config.json (full "
                          "fine-tuning)", "train the run again: `tunesmith train PROJECT.yaml --force`")
    resolved = resolve(config.model.base)
    # A hub model is named by its id, so the export works on machines whose cache lies elsewhere.
    base_path = config.model.base if resolved.source == "hub" else resolved.path
    if device is None:
        from tunesmith.train.loop import pick_device

        device = pick_device(config.train.device)
    return RunSource(run_dir, config, base_path, weights_dir, is_adapter, device)


def run_tokenizer(source: RunSource):
    """The tokenizer the run trained with (saved beside the weights), with the chat template it used."""
    from tunesmith.data.tokenize import ensure_chat_template

    tokenizer = load_tokenizer(str(source.weights_dir))
    ensure_chat_template(tokenizer)
    return tokenizer


@dataclass
class Reference:
    """The in-framework model in fp32; merged into plain weights on demand (in place, to save memory)."""

    source: RunSource
    model: object = field(default=None)

    def load(self) -> Reference:
        self.model = REFERENCE_LOADERS[model_kind(self.source.config)](self.source).to(self.source.device).eval()
        return self

    def merged(self):
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        return self.model

    def release(self) -> None:
        self.model = None
        gc.collect()
