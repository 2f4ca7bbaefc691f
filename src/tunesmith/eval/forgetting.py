"""Forgetting check: does fine-tuning hurt the model on general text it was not trained on?

The probe is 30 short original paragraphs on everyday topics (science, history, cooking, sport, daily life)
shipped with the package (probe.txt). Its perplexity under the base and the fine-tuned model is compared; a
rise above eval.forgetting_threshold_pct percent prints a warning and marks eval/forgetting.json. A rise of a
few percent is normal after narrow fine-tuning; tens of percent mean the model's general language got worse
(lower the lr or the epochs, or use a smaller LoRA r).
"""

from __future__ import annotations

from importlib.resources import files

PROBE = "probe.txt"


def probe_paragraphs() -> list[str]:
    text = files("tunesmith.eval").joinpath(PROBE).read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def forgetting_result(base_perplexity: float, finetuned_perplexity: float, threshold_pct: float,
                      tokens: int, paragraphs: int) -> dict:
    change_pct = (finetuned_perplexity - base_perplexity) / base_perplexity * 100
    warning = change_pct > threshold_pct
    if warning:
        message = (f"perplexity on general text rose {change_pct:.1f}% (threshold {threshold_pct:g}%): the "
                   "fine-tuned model may have forgotten some general language; try a lower lr, fewer epochs or "
                   "a smaller LoRA r")
    else:
        message = f"perplexity on general text changed {change_pct:+.1f}% (threshold {threshold_pct:g}%)"
    return {"probe": f"tunesmith/eval/{PROBE}", "paragraphs": paragraphs, "tokens": tokens,
            "base_perplexity": round(base_perplexity, 4), "finetuned_perplexity": round(finetuned_perplexity, 4),
            "change_pct": round(change_pct, 2), "threshold_pct": threshold_pct, "warning": warning,
            "message": message}
