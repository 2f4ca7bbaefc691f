"""Seeded train/eval split, so the same seed always gives the same split."""

from __future__ import annotations

import random

from tunesmith.data.formats import Example
from tunesmith.errors import ConfigError


def split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction is {eval_fraction}, it must be between 0 and 1",
                          "set data.eval_fraction to e.g. 0.1, or give a separate data.eval file")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    # At least one eval row, and at least one train row: 10% of 5 rows is still one eval row.
    n_eval = min(max(1, round(len(examples) * eval_fraction)), len(examples) - 1)
    if n_eval < 1:
        raise ConfigError(f"only {len(examples)} usable row(s): too few to split off an eval set",
                          "add more rows, or give a separate data.eval file")
    eval_ids = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in eval_ids]
    held = [e for i, e in enumerate(examples) if i in eval_ids]
    return train, held
