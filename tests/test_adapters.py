"""Methods on tiny random models of each architecture (2 layers, hidden 64): LoRA attaches to the auto targets,
forward and backward work, the head trains in full, the full-model variants freeze what they say."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import MethodConfig
from tunesmith.errors import ConfigError
from tunesmith.models.adapters import AUTO_TARGETS, apply_method, apply_task_method, count_parameters
from tunesmith.models.classifier import head_modules

VOCAB = 120


def tiny_config(kind: str, num_labels: int = 3):
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig

    common = {"vocab_size": VOCAB, "num_labels": num_labels, "pad_token_id": 0}
    if kind == "bert":
        return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          max_position_embeddings=64, **common)
    if kind == "roberta":
        return RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             max_position_embeddings=66, **common)
    if kind == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **common)
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, **common)


def tiny_classifier(kind: str, num_labels: int = 3):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(kind, num_labels))


def separable_batch(n: int = 24, seed: int = 0):
    """Class c rows hold token 10 + c at a random position among filler tokens: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, VOCAB, (n, 8), generator=g)
    labels = torch.arange(n) % 3
    ids[torch.arange(n), torch.randint(1, 8, (n,), generator=g)] = 10 + labels
    ids[:, 0] = 5  # a fixed first token, like [CLS]
    return ids, labels


ARCHITECTURES = ["bert", "roberta", "gpt2", "llama"]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_lora_auto_targets_attach_and_the_head_trains(kind):
    model = tiny_classifier(kind)
    heads = head_modules(model)
    peft_model = apply_task_method(model, MethodConfig(kind="lora", r=4, lora_alpha=8), "cpu", heads)
    lora_names = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    wanted = AUTO_TARGETS[kind]
    assert lora_names and all(any(f".{t}.lora_A" in n for t in wanted) for n in lora_names)
    # every projection kind of the architecture is adapted in both layers
    for target in wanted:
        assert sum(f".{target}.lora_A" in n for n in lora_names) >= 2, target
    # the head trains in full (modules_to_save) and is never adapter-wrapped (RoBERTa's head has a `dense`)
    head_names = [n for n, p in peft_model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    assert head_names
    assert not any("lora" in n and any(f".{h}." in n for h in heads) for n in lora_names)

    ids, labels = separable_batch()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(peft_model(input_ids=ids).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_lm_lora_auto_targets_forward_backward(kind):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind))
    peft_model = apply_method(model, MethodConfig(kind="lora", r=4), "cpu")
    ids = torch.randint(1, VOCAB, (2, 8))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_dora_and_rslora_reach_peft():
    model = apply_task_method(tiny_classifier("bert"), MethodConfig(kind="dora", use_rslora=True, r=4), "cpu",
                              ["classifier", "pooler"])
    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and config.task_type == "SEQ_CLS"
    ids, labels = separable_batch(6)
    torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()


def test_full_variants_freeze_what_they_say():
    heads = ["classifier", "pooler"]
    full = apply_task_method(tiny_classifier("bert"), MethodConfig(kind="full"), "cpu", heads)
    assert all(p.requires_grad for p in full.parameters())

    head_only = apply_task_method(tiny_classifier("bert"), MethodConfig(kind="full", freeze="head_only"), "cpu",
                                  heads)
    trainable = {n for n, p in head_only.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("classifier.", "bert.pooler.")) for n in trainable)

    top = apply_task_method(tiny_classifier("bert"), MethodConfig(kind="full", freeze="top_k",
                                                                  unfreeze_top_k_layers=1), "cpu", heads)
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert any(n.startswith("bert.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith(("bert.encoder.layer.0.", "bert.embeddings.")) for n in trainable)
    assert count_parameters(head_only)[0] < count_parameters(top)[0] < count_parameters(full)[0]


def test_freeze_needs_full_and_qlora_on_cpu_names_lora():
    with pytest.raises(ConfigError, match="method.kind: full"):
        apply_task_method(tiny_classifier("bert"), MethodConfig(kind="lora", freeze="head_only"), "cpu", [])
    with pytest.raises(ConfigError) as info:
        apply_task_method(tiny_classifier("bert"), MethodConfig(kind="qlora"), "cpu", ["classifier"])
    assert "method.kind: lora" in info.value.fix
    with pytest.raises(ConfigError) as info:
        apply_method(tiny_classifier("llama"), MethodConfig(kind="qlora"), "cpu")
    assert "method.kind: lora" in info.value.fix


def test_unknown_target_modules_is_a_config_error():
    with pytest.raises(ConfigError, match="target_modules"):
        apply_task_method(tiny_classifier("bert"), MethodConfig(kind="lora", target_modules=["nope"]), "cpu",
                          ["classifier"])
