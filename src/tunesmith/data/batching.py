"""Length-grouped micro-batches: rows of similar length share a batch, so little compute goes to padding."""

from __future__ import annotations

import random

import torch

from tunesmith.data.tokenize import IGNORE_INDEX, Tokenized

# Rows are sorted by length within windows of this many micro-batches: enough to group lengths well,
# few enough that each epoch still sees a shuffled order.
SORT_WINDOW_BATCHES = 32


def length_grouped_batches(lengths: list[int], micro_batch_size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = micro_batch_size * SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + micro_batch_size] for i in range(0, len(chunk), micro_batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding carries attention 0 and label -100."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
