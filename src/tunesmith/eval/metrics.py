"""Task metrics. Generation: ROUGE-1/2/L (rouge-score, with stemming) and exact match, as fractions in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

from tunesmith.errors import ConfigError


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def _rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for name in totals:
            totals[name] += scores[name].fmeasure
    return {name: value / max(len(predictions), 1) for name, value in totals.items()}


def _exact_match(predictions: list[str], references: list[str]) -> dict[str, float]:
    hits = sum(_normalize(p) == _normalize(r) for p, r in zip(predictions, references))
    return {"exact_match": hits / max(len(predictions), 1)}


# Each metric name maps to the function that computes it (one function may compute several names).
GENERATION_METRICS: dict[str, Callable[[list[str], list[str]], dict[str, float]]] = {
    "rouge1": _rouge, "rouge2": _rouge, "rougeL": _rouge, "exact_match": _exact_match,
}


def per_example_rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def compute(names: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    unknown = [n for n in names if n not in GENERATION_METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics names unknown generation metric(s) {unknown}",
                          f"choose from {', '.join(GENERATION_METRICS)} or set eval.metrics: auto")
    results: dict[str, float] = {}
    for function in dict.fromkeys(GENERATION_METRICS[n] for n in names):
        results.update(function(predictions, references))
    return {n: round(results[n], 6) for n in names}
