"""Shared fixtures: a tiny random Llama with its own tiny tokenizer (built in seconds, no download), small
JSONL data, and a cache folder inside pytest's temp dir so no test touches the user's home."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
COLORS = ["red", "blue", "green", "black", "white", "orange"]


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion pairs with a learnable pattern, varied enough that loss can fall but not hit zero."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, color = rng.choice(NAMES), rng.choice(COLORS)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": f"{name} has {a} {color} cups and buys {b} more. How many {color} cups now?",
                     "completion": f"{name} now has {a + b} {color} cups."})
    return rows


def cpu_kernels_or_skip():
    """The fused CPU kernels (train/cpu_kernels.py), or a skip naming why they cannot be built here."""
    from tunesmith.train import cpu_kernels

    kernels = cpu_kernels.load()
    if kernels is None:
        pytest.skip(f"the fused CPU kernels cannot be built here: {cpu_kernels.build_problem()}")
    return kernels


def rows_for(tokenizer, n: int, seed: int):
    """make_pairs(n, seed) tokenized as chat rows with completion-only labels (up to 256 tokens)."""
    from tunesmith.data.tokenize import tokenize_example

    return [tokenize_example(tokenizer, [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["completion"]}], 256)
            for r in make_pairs(n, seed=seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_flush_denormal_leaks():
    """Training in-process sets torch.set_flush_denormal(True), a processor-wide flag; reset it after each test
    so later tests (hypothesis draws subnormal floats) see IEEE floats again."""
    yield
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep caches out of the user's home; the embedded-model cache is shared by the session."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(_session_cache(tmp_path_factory)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(_session_cache(tmp_path_factory) / "hf"))


_CACHE: dict[str, Path] = {}


def _session_cache(factory) -> Path:
    if "dir" not in _CACHE:
        _CACHE["dir"] = factory.mktemp("tunesmith-cache")
    return _CACHE["dir"]


def build_tiny_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tunesmith.data.tokenize import CHATML_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [r["prompt"] + " " + r["completion"] for r in make_pairs(300, seed=1)]
    corpus += ["system user assistant You are a helpful assistant.", "0123456789 .,?!"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 Llama with random weights, saved as a local HF folder (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_project(tmp_path, tiny_llama) -> Path:
    """A project file for the tiny Llama: 64 train rows (eval split off), 12 test rows."""
    write_jsonl(tmp_path / "data" / "train.jsonl", make_pairs(64, seed=2))
    write_jsonl(tmp_path / "data" / "test.jsonl", make_pairs(12, seed=3))
    project = tmp_path / "project.yaml"
    project.write_text(f"""name: tiny
task: generation
data:
  train: data/train.jsonl
  test: data/test.jsonl
model:
  base: {tiny_llama}
train:
  epochs: 2
  lr: 3.0e-3
  micro_batch_size: 8
  global_batch_size: 8
eval:
  max_new_tokens: 16
output: {tmp_path / 'runs' / 'tiny'}
""")
    return project


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real third-party data not found at {SHARED_DATA}")
    return SHARED_DATA
