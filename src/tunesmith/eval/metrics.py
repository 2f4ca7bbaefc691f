"""Generation metrics from predictions and references, all as fractions in [0, 1] (higher is better).

Each reference may be one string or a list of strings (several acceptable answers): ROUGE takes the best
reference per example, BLEU and chrF use sacrebleu's multi-reference streams, METEOR takes NLTK's maximum over
references, exact match counts a hit on any reference. sacrebleu's 0-100 scores are divided by 100 so every
metric in eval/metrics.json is on the same scale. perplexity and token_accuracy need the model, not the text:
evaluate.py computes them (see eval/likelihood.py); they are named here so eval.metrics is checked in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from tunesmith.errors import ConfigError

Reference = str | Sequence[str]
ROUGE_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
MODEL_METRICS = ("perplexity", "token_accuracy")  # teacher-forced on the references; lower ppl is better
LOWER_IS_BETTER = frozenset({"perplexity", "mse", "mae"})
_TOKEN = re.compile(r"\w+|[^\w\s]")  # METEOR's words: runs of letters/digits, each punctuation mark alone


def as_lists(references: Sequence[Reference]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def _rouge_scores(names: Sequence[str], predictions: list[str], references: list[list[str]]) -> list[dict]:
    from rouge_score import rouge_scorer

    # rougeLsum reads "\n" as the sentence boundary (rouge-score's convention); the others ignore newlines.
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    return [{n: s.fmeasure for n, s in scorer.score_multi(refs, pred).items()}
            for pred, refs in zip(predictions, references)]


def _rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    per_example = _rouge_scores(ROUGE_NAMES, predictions, references)
    return {n: sum(s[n] for s in per_example) / max(len(per_example), 1) for n in ROUGE_NAMES}


def _streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference position; None fills in where an example has fewer."""
    width = max((len(r) for r in references), default=1)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _bleu(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(predictions, _streams(references)).score / 100}


def _chrf(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    import sacrebleu

    return {"chrf": sacrebleu.corpus_chrf(predictions, _streams(references)).score / 100}


def meteor_tokens(text: str) -> list[str]:
    # NLTK's word_tokenize needs the punkt model, which cannot be downloaded here; this regex splits the same
    # way on plain prose (words, numbers, each punctuation mark). meteor_score lowercases the tokens itself.
    return _TOKEN.findall(text)


def meteor_per_example(predictions: list[str], references: list[list[str]]) -> list[float]:
    from nltk.translate.meteor_score import meteor_score

    from tunesmith.eval.wordnet import wordnet_reader

    wordnet = wordnet_reader()
    return [meteor_score([meteor_tokens(r) for r in refs], meteor_tokens(pred), wordnet=wordnet)
            for pred, refs in zip(predictions, references)]


def _meteor(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    scores = meteor_per_example(predictions, references)
    return {"meteor": sum(scores) / max(len(scores), 1)}


def _exact_match(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    hits = sum(any(_normalize(p) == _normalize(r) for r in refs) for p, refs in zip(predictions, references))
    return {"exact_match": hits / max(len(predictions), 1)}


# Each metric name maps to the function that computes it (one function may compute several names).
GENERATION_METRICS: dict[str, Callable[[list[str], list[list[str]]], dict[str, float]]] = {
    **dict.fromkeys(ROUGE_NAMES, _rouge), "bleu": _bleu, "chrf": _chrf, "meteor": _meteor,
    "exact_match": _exact_match,
}
VALID_NAMES = (*GENERATION_METRICS, *MODEL_METRICS)


def check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in VALID_NAMES]
    if unknown:
        raise ConfigError(f"eval.metrics names unknown generation metric(s) {unknown}",
                          f"choose from {', '.join(VALID_NAMES)} or set eval.metrics: auto", where="eval.metrics")


def compute(names: Sequence[str], predictions: list[str], references: Sequence[Reference]) -> dict[str, float]:
    """The text metrics among `names` (model metrics are skipped here), rounded to 6 decimals."""
    check_names(names)
    refs = as_lists(references)
    results: dict[str, float] = {}
    for function in dict.fromkeys(GENERATION_METRICS[n] for n in names if n in GENERATION_METRICS):
        results.update(function(predictions, refs))
    return {n: round(results[n], 6) for n in names if n in GENERATION_METRICS}


def per_example(names: Sequence[str], predictions: list[str], references: Sequence[Reference]) -> dict[str, list]:
    """Per-example ROUGE-L (always) and METEOR (when it is among `names`), to rank examples base vs fine-tuned."""
    refs = as_lists(references)
    out = {"rougeL": [s["rougeL"] for s in _rouge_scores(["rougeL"], predictions, refs)]}
    if "meteor" in names:
        out["meteor"] = meteor_per_example(predictions, refs)
    return out


def per_example_rouge_l(predictions: list[str], references: Sequence[Reference]) -> list[float]:
    return per_example(["rougeL"], predictions, references)["rougeL"]
