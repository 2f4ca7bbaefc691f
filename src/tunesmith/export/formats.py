"""The export formats by name: how each writes its artifact, loads it back for the parity check, and rounds
the reference weights the way it stores them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.export import hf
from tunesmith.export.chat import TurnLayout, analyze, end_of_turn_token
from tunesmith.export.source import Reference, RunSource


@dataclass
class Job:
    """One export: the run, its tokenizer, the fp32 reference model, and the resolved options."""

    source: RunSource
    tokenizer: object
    reference: Reference
    dtype: str | None = None  # merged: fp32 | bf16 | fp16
    gguf_type: str | None = None  # gguf, ollama: f32 | f16 | bf16 | q8_0
    _layout: TurnLayout | None = field(default=None, repr=False)

    @property
    def layout(self) -> TurnLayout:
        if self._layout is None:
            self._layout = analyze(self.tokenizer)
        return self._layout

    @property
    def end_of_turn(self) -> str | None:
        return end_of_turn_token(self.tokenizer, self.layout)

    def options(self) -> dict:
        return {k: v for k, v in (("dtype", self.dtype), ("gguf_type", self.gguf_type)) if v is not None}


@dataclass(frozen=True)
class Format:
    description: str
    write: Callable[[Job, Path], None]
    load: Callable[[Job, Path], tuple]  # -> (fp32 model on the job's device, tokenizer)
    rounding: Callable[[Job], Callable | None]  # -> in-place rounding of the merged model, or None
    lossy: Callable[[Job], bool] = lambda job: False
    option: str | None = None  # "dtype" or "gguf_type": the flag this format takes
    check: Callable[[Job], None] = lambda job: None  # fails fast, before any model is loaded


def _write_merged(job: Job, folder: Path) -> None:
    generation = hf.generation_config(job.source, job.tokenizer, job.end_of_turn)
    hf.write_merged(job.reference.merged(), job.tokenizer, folder, job.dtype, generation)


@torch.no_grad()
def _cast_round_trip(job: Job):
    if job.dtype == "fp32":
        return None

    def apply(model) -> None:
        for param in model.parameters():
            param.copy_(param.to(hf.DTYPES[job.dtype]).to(torch.float32))
    return apply


def _write_gguf(job: Job, folder: Path) -> None:
    from tunesmith.export.gguf_llama import write_gguf
    from tunesmith.export.gguf_vocab import vocab_metadata
    from tunesmith.export.ollama import MODEL_FILE

    model = job.reference.merged()
    vocab = vocab_metadata(job.tokenizer, model.config.vocab_size, job.tokenizer.chat_template, job.end_of_turn)
    write_gguf(model.cpu(), folder / MODEL_FILE, job.gguf_type, job.source.config.name, vocab)
    model.to(job.source.device)


def _load_gguf(job: Job, folder: Path):
    from tunesmith.export.gguf_llama import load_gguf
    from tunesmith.export.ollama import MODEL_FILE

    model, tokenizer = load_gguf(folder, MODEL_FILE)
    return model.to(job.source.device).eval(), tokenizer


def _round_gguf(job: Job):
    from tunesmith.export.gguf_llama import round_like_gguf

    return None if job.gguf_type == "f32" else (lambda model: round_like_gguf(model, job.gguf_type))


def _check_gguf(job: Job) -> None:
    from transformers import AutoConfig

    from tunesmith.export.gguf_llama import check_supported
    from tunesmith.export.gguf_vocab import vocab_metadata

    config = AutoConfig.from_pretrained(job.source.weights_dir if not job.source.is_adapter else
                                        job.source.base_path)
    check_supported(config)
    vocab_metadata(job.tokenizer, config.vocab_size, job.tokenizer.chat_template, job.end_of_turn)


def _check_ollama(job: Job) -> None:
    from tunesmith.export.ollama import go_template

    _check_gguf(job)
    go_template(job.layout)


def _ollama_sampling(job: Job) -> dict[str, float]:
    """The base's sampling settings when it samples by default; else greedy, the decoding `tunesmith eval`
    measured the fine-tuned model with."""
    generation = hf.generation_config(job.source, job.tokenizer, job.end_of_turn)
    if not generation.do_sample:
        return {"temperature": 0}
    keys = (("temperature", generation.temperature), ("top_p", generation.top_p), ("top_k", generation.top_k))
    return {name: value for name, value in keys if value is not None}


def _write_ollama(job: Job, folder: Path) -> None:
    from tunesmith.export.ollama import modelfile

    _write_gguf(job, folder)
    stops = list(dict.fromkeys(t for t in (job.end_of_turn, job.tokenizer.eos_token) if t))
    text = modelfile(job.layout, stops, job.reference.model.config.max_position_embeddings, _ollama_sampling(job),
                     f"tunesmith export of run '{job.source.config.name}' ({job.source.run_dir})")
    (folder / "Modelfile").write_text(text, encoding="utf-8")


def _lossy_gguf(job: Job) -> bool:
    from tunesmith.export.gguf_llama import LOSSY_GGUF_TYPES

    return job.gguf_type in LOSSY_GGUF_TYPES


FORMATS: dict[str, Format] = {
    "merged": Format("adapter merged into the base: a standard Hugging Face folder (safetensors)", _write_merged,
                     lambda job, folder: hf.load_merged(folder, job.source.device), _cast_round_trip,
                     option="dtype"),
    "adapter": Format("the PEFT adapter alone, pointing at its base", lambda job, folder: hf.write_adapter(
        job.source, job.tokenizer, folder), lambda job, folder: hf.load_adapter(folder, job.source.device),
        lambda job: None, check=lambda job: hf.require_adapter(job.source)),
    "gguf": Format("one GGUF file for llama.cpp and friends (Llama architecture)", _write_gguf, _load_gguf,
                   _round_gguf, _lossy_gguf, option="gguf_type", check=_check_gguf),
    "ollama": Format("the GGUF file plus an Ollama Modelfile", _write_ollama, _load_gguf, _round_gguf, _lossy_gguf,
                     option="gguf_type", check=_check_ollama),
}
