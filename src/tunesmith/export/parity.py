"""The parity check every export passes before it is reported as done: the exported artifact, loaded the way
its users load it, against the model as tunesmith runs it, on fixed chat prompts.

Measured on each prompt: the next-token logits at every prompt position (largest absolute difference, and how
often the top-1 token agrees) and a 32-token greedy continuation (identical or not). The tokenizer travels too:
the exported tokenizer must render the same chat text and encode it to the same ids.

Two references, both the in-framework model in fp32:
- *exact*: its weights rounded exactly as the export stores them (bf16/fp16 casts, GGUF f16/q8_0 blocks), so
  any difference left comes from the export itself: a wrong tensor name, a missed q/k permutation, a missing
  merge, wrong hyperparameters or tokenizer. This one must match for every format.
- *vs_fp32*: the unrounded weights, measuring what the rounding costs. For lossy types (GGUF q8_0) its top-1
  agreement must reach MIN_TOP1_AGREEMENT_LOSSY; for the others it is reported only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.errors import TunesmithError

# Thresholds. Two fp32 computations from the same weights differ only by summation order (the merged W + sBA
# against W x + sB(A x), other attention kernels): about 1e-5 on logits of magnitude 1-30. 1e-2 leaves three
# orders of magnitude for that, and stays far below what a wrong export does: a q/k permutation left out moved
# the tiny test model's logits by more than 0.1, swapped tensor names by more than 1.
MAX_ABS_LOGIT_DIFF = 1e-2
GREEDY_NEW_TOKENS = 32
# q8_0 stores each weight to about 1/254 of its block's largest value; where the top two logits are within
# that noise the argmax may flip. 90% of positions keeping their top-1 token is the floor below which the
# quantized model no longer behaves like the fine-tuned one.
MIN_TOP1_AGREEMENT_LOSSY = 0.90
RUN_PROMPTS = 2  # prompts taken from the run's own test set, beside the fixed ones

FIXED_PROMPTS: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise support agent."},
     {"role": "user", "content": "My order #4521 arrived late and the box was damaged. What can I do?"}],
    [{"role": "user", "content": "Ana has 3 red cups and buys 4 more. How many red cups now?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me one fun fact about octopuses."}],
]


class ParityError(TunesmithError):
    """An exported artifact does not reproduce the fine-tuned model."""


@dataclass
class Outputs:
    logits: list[torch.Tensor]  # per prompt: [prompt_len, vocab] fp32 on CPU
    generations: list[list[int]]  # per prompt: GREEDY_NEW_TOKENS greedy token ids


def conversations(source, examples) -> list[list[dict]]:
    """The fixed prompts, then the first RUN_PROMPTS prompts of the run's test set, with the run's system
    prompt applied as in training."""
    from tunesmith.data.tokenize import with_system_prompt

    chats = FIXED_PROMPTS + [e.prompt_messages for e in examples[:RUN_PROMPTS]]
    return [with_system_prompt(chat, source.config.data.system_prompt) for chat in chats]


def render(tokenizer, chats: list[list[dict]]) -> list[str]:
    return [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]


def encode(tokenizer, texts: list[str], special: bool = False) -> list[list[int]]:
    # tunesmith trains and generates on rendered chat text with add_special_tokens=False (data/tokenize.py).
    return [tokenizer(text, add_special_tokens=special)["input_ids"] for text in texts]


def _batch(ids: list[list[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in ids)
    rows, masks = [], []
    for row in ids:
        pad = [pad_id] * (width - len(row))
        rows.append(pad + row if left else row + pad)
        ones, zeros = [1] * len(row), [0] * len(pad)
        masks.append(zeros + ones if left else ones + zeros)
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device)


@torch.no_grad()
def outputs(model, ids: list[list[int]], tokenizer, generate: bool = True) -> Outputs:
    """All prompts in one batch: right-padded for the logits (the real positions see no padding), left-padded
    for generation. Reference and export get the same batches, so padding cannot explain a difference.
    generate=False: logits only (generation is most of the cost: 32 sequential steps)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch, mask = _batch(ids, pad_id, left=False, device=device)
    full = model(input_ids=batch, attention_mask=mask).logits.float().cpu()
    logits = [full[i, : len(row)] for i, row in enumerate(ids)]
    if not generate:
        return Outputs(logits, [])
    # min_new_tokens = max_new_tokens: EOS is suppressed, so every prompt yields 32 comparable tokens.
    config = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_NEW_TOKENS, min_new_tokens=GREEDY_NEW_TOKENS,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id)
    batch, mask = _batch(ids, pad_id, left=True, device=device)
    out = model.generate(input_ids=batch, attention_mask=mask, generation_config=config)
    return Outputs(logits, out[:, batch.shape[1]:].tolist())


def compare(reference: Outputs, got: Outputs) -> dict:
    diffs = [(a - b).abs().max().item() for a, b in zip(reference.logits, got.logits)]
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference.logits, got.logits))
    positions = sum(a.shape[0] for a in reference.logits)
    result = {"max_abs_logit_diff": max(diffs), "top1_agreement": round(agree / positions, 6),
              "prompts": len(reference.logits), "positions": positions}
    if reference.generations:  # the unrounded reference of a rounded export runs no generation
        matches = [a == b for a, b in zip(reference.generations, got.generations)]
        result.update(generations_match=all(matches), generations_matching=sum(matches))
    return result


def tokenizer_check(reference_tokenizer, exported_tokenizer, chats: list[list[dict]]) -> dict:
    texts = render(reference_tokenizer, chats)
    try:
        exported_texts = render(exported_tokenizer, chats)
    except Exception:  # noqa: BLE001  (a missing or broken template raises its own errors)
        exported_texts = []
    same_ids = all(encode(reference_tokenizer, texts, special) == encode(exported_tokenizer, texts, special)
                   for special in (False, True))
    return {"chat_template_match": exported_texts == texts, "tokenizer_match": same_ids}


def judge(exact: dict, tokens: dict, vs_fp32: dict | None, lossy: bool) -> list[str]:
    """The failed checks, each with its numbers; empty when the export passes."""
    failures = []
    if exact["max_abs_logit_diff"] > MAX_ABS_LOGIT_DIFF:
        failures.append(f"max |Δ logit| {exact['max_abs_logit_diff']:.4g} > {MAX_ABS_LOGIT_DIFF:g}")
    if not exact["generations_match"]:
        failures.append(f"greedy generations identical on {exact['generations_matching']} of {exact['prompts']} "
                        f"prompts over {GREEDY_NEW_TOKENS} tokens, all required")
    if not tokens["chat_template_match"]:
        failures.append("the exported chat template renders different text")
    if not tokens["tokenizer_match"]:
        failures.append("the exported tokenizer encodes the prompts to different ids")
    if lossy and vs_fp32 is not None and vs_fp32["top1_agreement"] < MIN_TOP1_AGREEMENT_LOSSY:
        failures.append(f"top-1 agreement with the fp32 model {vs_fp32['top1_agreement']:.1%} < "
                        f"{MIN_TOP1_AGREEMENT_LOSSY:.0%}")
    return failures


def report(fmt: str, options: dict, exact: dict, tokens: dict, vs_fp32: dict | None,
           lossy: bool, failures: list[str]) -> dict:
    """parity.json: the numbers, the thresholds they were held to, and the verdict."""
    thresholds = {"max_abs_logit_diff": MAX_ABS_LOGIT_DIFF, "generations_match": True,
                  "greedy_new_tokens": GREEDY_NEW_TOKENS, "chat_template_match": True, "tokenizer_match": True}
    if lossy:
        thresholds["min_top1_agreement_vs_fp32"] = MIN_TOP1_AGREEMENT_LOSSY
    return {"format": fmt, **options, "prompts": exact["prompts"], "positions": exact["positions"],
            "reference": "base + adapter in fp32" + (", weights rounded as the export stores them"
                                                     if vs_fp32 is not None else ""),
            "max_abs_logit_diff": exact["max_abs_logit_diff"], "top1_agreement": exact["top1_agreement"],
            "generations_match": exact["generations_match"], **tokens, "vs_fp32": vs_fp32,
            "thresholds": thresholds, "passed": not failures, "failures": failures}


def print_table(result: dict) -> None:
    from rich.table import Table

    from tunesmith.console import console

    ok = {True: "[green]ok[/green]", False: "[red]FAIL[/red]"}
    table = Table(title=f"parity: {result['format']} export vs the fine-tuned model "
                        f"({result['prompts']} prompts, {result['positions']} positions)")
    for column in ("check", "value", "threshold", ""):
        table.add_column(column, justify="left" if column == "check" else "right")
    limit = result["thresholds"]
    table.add_row("max |Δ logit|", f"{result['max_abs_logit_diff']:.2e}", f"≤ {limit['max_abs_logit_diff']:g}",
                  ok[result["max_abs_logit_diff"] <= limit["max_abs_logit_diff"]])
    table.add_row("top-1 agreement", f"{result['top1_agreement']:.1%}", "", "")
    table.add_row(f"{GREEDY_NEW_TOKENS}-token greedy outputs", "identical" if result["generations_match"] else
                  "differ", "identical", ok[result["generations_match"]])
    table.add_row("chat template / token ids", f"{result['chat_template_match']} / {result['tokenizer_match']}",
                  "True / True", ok[result["chat_template_match"] and result["tokenizer_match"]])
    if result["vs_fp32"] is not None:
        vs = result["vs_fp32"]
        floor = limit.get("min_top1_agreement_vs_fp32")
        table.add_row("vs unrounded fp32: top-1 agreement", f"{vs['top1_agreement']:.1%}",
                      f"≥ {floor:.0%}" if floor else "(reported)",
                      ok[vs["top1_agreement"] >= floor] if floor else "")
        table.add_row("vs unrounded fp32: max |Δ logit|", f"{vs['max_abs_logit_diff']:.2e}", "(reported)", "")
    console.print(table)
