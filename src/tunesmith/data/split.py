"""Seeded train/eval/test splits that do not leak: near-duplicate prompts stay in one split, and labelled data
is stratified so every split sees every label in proportion."""

from __future__ import annotations

import random
from collections import defaultdict

from tunesmith.data.formats import Example
from tunesmith.errors import ConfigError


def _units(examples: list[Example]) -> list[list[int]]:
    """Groups of rows that must land in the same split: near-duplicate prompts, else single rows."""
    from tunesmith.data.dedup import near_duplicate_groups

    grouped = near_duplicate_groups([e.input_text for e in examples])
    seen = {i for group in grouped for i in group}
    return grouped + [[i] for i in range(len(examples)) if i not in seen]


def _stratum(example: Example) -> str:
    if example.label is not None:
        return example.label
    if example.labels is not None:
        return "|".join(sorted(example.labels))
    return ""


def split_ratios(examples: list[Example], ratios: list[float], seed: int) -> list[list[Example]]:
    """Split into len(ratios) parts (train first). Deterministic for a seed."""
    if len(ratios) < 2 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
        raise ConfigError(f"split ratios {ratios} must be 2 or 3 non-negative numbers summing to 1, train first",
                          "use e.g. 0.8,0.1,0.1 (train, eval, test) or 0.9,0.1")
    if len(examples) < len([r for r in ratios if r > 0]):
        raise ConfigError(f"only {len(examples)} usable row(s): too few to split {len(ratios)} ways",
                          "add more rows, or give separate eval/test files")
    rng = random.Random(seed)
    strata: dict[str, list[list[int]]] = defaultdict(list)
    for unit in _units(examples):
        strata[_stratum(examples[unit[0]])].append(unit)
    parts: list[list[int]] = [[] for _ in ratios]
    for key in sorted(strata):
        units = strata[key]
        rng.shuffle(units)
        size = sum(len(u) for u in units)
        # Fill the held-out parts first (each at least its share, rounded), train takes the rest.
        targets = [round(size * r) for r in ratios]
        filled = [0] * len(ratios)
        for unit in units:
            choice = next((k for k in range(len(ratios) - 1, 0, -1) if filled[k] < targets[k]), 0)
            parts[choice].extend(unit)
            filled[choice] += len(unit)
    # Tiny data sets: make sure every requested held-out part has at least one row.
    for k in range(1, len(ratios)):
        if ratios[k] > 0 and not parts[k] and len(parts[0]) > 1:
            parts[k].append(parts[0].pop())
    return [[examples[i] for i in sorted(part)] for part in parts]


def split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction is {eval_fraction}, it must be between 0 and 1",
                          "set data.eval_fraction to e.g. 0.1, or give a separate data.eval file")
    train, held = split_ratios(examples, [1 - eval_fraction, eval_fraction], seed)
    return train, held
