"""Kernels a LoRA training step asks for: the host's work per step on a GPU, counted on any machine.

On a GPU a LoRA step of a small model is bound by the host, which launches one kernel per aten op (fifth session:
10,889 launches in 3 steps of the Llama-3.2-1B shape, the GPU busy about half of each step). This script counts the
aten ops that reach the backend in one training step (forward, backward, gradient clipping, fused AdamW), views,
allocations and reads of a scalar excluded, for PEFT's LoRA layers as users run them and for tunesmith's
(train/lora_fast.py, the layers the CUDA path uses), on a random-init Llama of 16 layers (the Llama-3.2-1B depth)
with hidden size 64, so it runs in seconds on a CPU. Counts on a CPU include the few copies that only the CPU path
makes (outer_grad's z^T copy).

    .venv/bin/python bench/step_ops.py [--layers 16] [--top 12]
"""

from __future__ import annotations

import argparse
import collections


# Ops that allocate or reinterpret memory but launch no kernel.
NOT_KERNELS = {"aten::new_empty_strided", "aten::_unsafe_view", "aten::_local_scalar_dense"}


def count_step(fast: bool, layers: int) -> collections.Counter:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.config import MethodConfig
    from tunesmith.data.batching import collate
    from tunesmith.data.tokenize import Tokenized
    from tunesmith.models.adapters import apply_method
    from tunesmith.train.loop import label_loss_sum, with_label_index
    from tunesmith.train.lora_fast import use_fast_lora

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # bf16 weights, fp32 adapters: the CUDA default
    model.set_attn_implementation("sdpa")
    model = apply_method(model, MethodConfig(), "cpu")
    model.config.use_cache = False
    if fast:
        use_fast_lora(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        ids = torch.randint(1, 1000, (100 + 10 * i,), generator=generator).tolist()
        rows.append(Tokenized(ids, [-100] * 30 + ids[30:], False))
    batch = with_label_index(collate(rows, 0))

    def step():
        loss, n = label_loss_sum(model, batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name
            is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
            if not is_view and name not in NOT_KERNELS and not name.startswith("aten::empty"):
                self.ops[name] += 1
            return func(*args, **(kwargs or {}))

    step()  # the optimizer's state is created at its first step
    with Count() as counter:
        step()
    return counter.ops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    peft, ours = count_step(False, args.layers), count_step(True, args.layers)
    total_peft, total_ours = sum(peft.values()), sum(ours.values())
    print(f"aten ops per training step, {args.layers}-layer hidden-64 Llama, LoRA r=16 on all seven projections, "
          "bf16 weights + fp32 adapters, 8 rows of 100-170 tokens (views, allocations and scalar reads not counted)\n")
    print("| op | PEFT LoRA layers | tunesmith (lora_fast) |")
    print("|---|---:|---:|")
    for name, _ in (peft + ours).most_common(args.top):
        print(f"| {name} | {peft[name]} | {ours[name]} |")
    print(f"| **all ops** | **{total_peft}** | **{total_ours}** |")
    print(f"\ntunesmith / PEFT: {total_ours / total_peft:.2f}x the ops")


if __name__ == "__main__":
    main()
