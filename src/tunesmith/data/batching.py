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


def token_budget_split(ids: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """One step's rows as micro-batches of at most `budget` padded tokens (rows x the longest), longest first.
    A row longer than the budget goes alone: rows are never cut here (max_seq_len already did that)."""
    micro: list[list[int]] = []
    for i in sorted(ids, key=lambda i: lengths[i], reverse=True):
        if micro and (len(micro[-1]) + 1) * lengths[micro[-1][0]] <= budget:
            micro[-1].append(i)
        else:
            micro.append([i])
    return micro


def step_groups(lengths: list[int], micro_batch_size: int, global_batch_size: int, seed: int,
                micro_batch_tokens: int | None = None) -> list[list[list[int]]]:
    """One epoch's optimizer steps, each a list of micro-batches (lists of row indices). A pure function of the
    seed, so a resumed run can skip exactly the steps it has done."""
    if micro_batch_tokens:
        steps = length_grouped_batches(lengths, global_batch_size, seed)
        return [token_budget_split(ids, lengths, micro_batch_tokens) for ids in steps]
    batches = length_grouped_batches(lengths, micro_batch_size, seed)
    accum = max(1, global_batch_size // micro_batch_size)
    return [batches[i:i + accum] for i in range(0, len(batches), accum)]


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


def pack_best_fit(lengths: dict[int, int], indices: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: longest example first, each into the fullest row that still has room for it."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: lengths[i], reverse=True):
        fits = [k for k in range(len(rows)) if room[k] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda k: room[k])
            rows[best].append(i)
            room[best] -= lengths[i]
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def packed_micro_batches(rows: list[Tokenized], indices: list[int], max_seq_len: int,
                         micro_batch_size: int, token_budget: int | None = None) -> list[list[list[int]]]:
    """One optimizer step's examples packed into rows of at most max_seq_len tokens, grouped into micro-batches
    that hold no more tokens than the padded micro-batches would (micro_batch_size x the longest example), or
    than token_budget when one is set."""
    lengths = {i: len(rows[i].input_ids) for i in indices}
    capacity = max(max(lengths.values()), max_seq_len)
    packed = pack_best_fit(lengths, indices, capacity)
    budget = max(token_budget or micro_batch_size * max(lengths.values()), capacity)
    batches: list[list[list[int]]] = [[]]
    for row in packed:
        width = max(sum(lengths[i] for i in r) for r in batches[-1] + [row])
        if batches[-1] and width * (len(batches[-1]) + 1) > budget:
            batches.append([])
        batches[-1].append(row)
    return batches


def collate_packed(packed: list[list[Tokenized]], pad_id: int) -> dict[str, torch.Tensor]:
    """Examples laid end to end in each row, each with its own position ids starting at 0.

    No attention mask is passed: transformers derives a block-diagonal causal mask from position ids that
    restart (masking_utils.find_packed_sequence_indices), so an example attends only to itself. The padding tail
    is one more "sequence" that attends to itself and carries no label.
    """
    width = max(sum(len(r.input_ids) for r in row) for row in packed)
    ids = torch.full((len(packed), width), pad_id, dtype=torch.long)
    labels = torch.full((len(packed), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(packed), width), dtype=torch.long)
    for b, row in enumerate(packed):
        start = 0
        for example in row:
            n = len(example.input_ids)
            ids[b, start:start + n] = torch.tensor(example.input_ids)
            labels[b, start:start + n] = torch.tensor(example.labels)
            labels[b, start] = IGNORE_INDEX  # never predict an example's first token from the one before it
            positions[b, start:start + n] = torch.arange(n)
            start += n
        positions[b, start:] = torch.arange(width - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def at_least_two_rows(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """A one-row batch with a second row of padding (no labels, its own positions), else the batch unchanged.

    For train.compile: torch.compile specializes a dimension of size 1, so the first one-row micro-batch (a step
    whose examples fit one packed row, or a last step of one example) recompiled every layer: measured on a CPU,
    a tiny Llama's packed step took 24 s at its first one-row batch against 0.2 s for the others. The extra row
    adds no loss and no gradient."""
    if batch["input_ids"].shape[0] != 1:
        return batch
    width = batch["input_ids"].shape[1]
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out = {}
    for key, value in batch.items():
        if key == "position_ids":
            extra = torch.arange(width, dtype=value.dtype, device=value.device)[None]
        else:
            extra = torch.full_like(value, fill[key])
        out[key] = torch.cat([value, extra])
    return out
