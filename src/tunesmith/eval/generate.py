"""Batched greedy generation with the KV cache; prompts are sorted by length so batches pad little.

Only token ids come back from generate(): output_scores/output_logits stay off, so no [steps x batch x vocab]
score tensors pile up (49,152 columns per step for SmolLM2)."""

from __future__ import annotations

import torch

from tunesmith.console import progress_bar


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, label: str) -> list[str]:
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    outputs: list[str] = [""] * len(prompts)
    with progress_bar("info") as progress:
        task = progress.add_task(f"generating ({label})", total=len(prompts), info="")
        for start in range(0, len(order), batch_size):
            ids = order[start:start + batch_size]
            batch = tokenizer([prompts[i] for i in ids], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       output_scores=False, output_logits=False, return_dict_in_generate=False,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            for i, row in zip(ids, new_tokens):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            progress.update(task, advance=len(ids))
    tokenizer.padding_side = "right"
    return outputs
