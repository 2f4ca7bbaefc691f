"""`tunesmith data stats`: counts, token-length percentiles in the model's tokenizer, rows over max_seq_len,
label distribution, and a length histogram (terminal; PNG with --plot)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tunesmith.data.check import token_lengths
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import rendered_texts

PERCENTILES = (50, 90, 99)
HISTOGRAM_BINS = 12


def _summary(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    values = np.asarray(lengths)
    out = {f"p{p}": int(np.percentile(values, p)) for p in PERCENTILES}
    return {**out, "max": int(values.max()), "mean": round(float(values.mean()), 1)}


def compute_stats(examples: list[Example], tokenizer, max_seq_len: int) -> dict:
    prompts = [e.input_text for e in examples]
    completions = [e.output_text if e.messages is not None else "" for e in examples]
    total = token_lengths(tokenizer, rendered_texts(tokenizer, examples))
    stats = {"rows": len(examples), "max_seq_len": max_seq_len,
             "tokens": {"total": _summary(total), "prompt": _summary(token_lengths(tokenizer, prompts))},
             "over_max_seq_len": sum(n > max_seq_len for n in total)}
    if any(completions):
        stats["tokens"]["completion"] = _summary(token_lengths(tokenizer, completions))
    labels: Counter[str] = Counter()
    for example in examples:
        labels.update(example.labels if example.labels is not None else
                      [example.label] if example.label is not None else [])
    if labels:
        stats["labels"] = dict(labels.most_common())
    targets = [e.target for e in examples if e.target is not None]
    if targets:
        stats["target"] = {"min": min(targets), "max": max(targets), "mean": round(float(np.mean(targets)), 4)}
    named = [e.targets for e in examples if e.targets is not None]
    if named:  # several regression targets: the same summary per target
        stats["targets"] = {}
        for name in named[0]:
            values = [t[name] for t in named if name in t]
            stats["targets"][name] = {"min": min(values), "max": max(values), "mean": round(float(np.mean(values)), 4)}
    counts, edges = np.histogram(np.asarray(total), bins=HISTOGRAM_BINS)
    stats["histogram"] = {"edges": [int(e) for e in edges], "counts": [int(c) for c in counts]}
    stats["_lengths"] = total
    return stats


def histogram_lines(stats: dict, width: int = 40) -> list[str]:
    counts, edges = stats["histogram"]["counts"], stats["histogram"]["edges"]
    peak = max(counts) or 1
    return [f"{edges[i]:>6}-{edges[i + 1]:<6} {'█' * round(width * c / peak):<{width}} {c}"
            for i, c in enumerate(counts)]


def plot(stats: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from tunesmith.errors import TunesmithError

        raise TunesmithError("--plot needs matplotlib", "pip install 'tunesmith[plot]' (or matplotlib)") from None
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.hist(stats["_lengths"], bins=40, color="#1f77b4")
    axis.axvline(stats["max_seq_len"], color="#d62728", linestyle="--", label=f"max_seq_len {stats['max_seq_len']}")
    axis.set_xlabel("tokens per row (chat template applied)")
    axis.set_ylabel("rows")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
