"""Teacher-forced scores of a causal LM on given text: perplexity and next-token accuracy.

On references (eval metrics `perplexity`, `token_accuracy`) only the answer tokens count, exactly the tokens
training puts a label on (data/tokenize.py); on the forgetting probe every token after the first counts.
As in training, the LM head runs only on the counted positions, so the [batch x seq x vocab] logits tensor is
never built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.batching import collate
from tunesmith.data.tokenize import IGNORE_INDEX, Tokenized
from tunesmith.models.adapters import unwrap


@dataclass
class Likelihood:
    nll_sum: float  # summed negative log-likelihood (nats) over the counted tokens
    tokens: int
    correct: int  # counted tokens the model ranks first (greedy argmax)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens) if self.tokens else math.nan

    @property
    def token_accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan


def text_rows(tokenizer, texts: list[str], max_seq_len: int) -> list[Tokenized]:
    """Plain text, every token labelled (the first one cannot be predicted and is skipped by the shift)."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_seq_len]
        if len(ids) > 1:
            rows.append(Tokenized(ids, list(ids), False))
    return rows


POSITIONS_PER_CHUNK = 512  # 512 x 49,152 x 4 bytes = 100 MB of logits at a time


@torch.no_grad()
def score(model, rows: list[Tokenized], batch_size: int, pad_id: int) -> Likelihood:
    model.eval()
    device = next(model.parameters()).device
    base = unwrap(model)
    backbone, head = base.get_decoder(), base.get_output_embeddings()
    total = Likelihood(0.0, 0, 0)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))  # similar lengths pad little
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in order[start:start + batch_size]],
                                                     pad_id).items()}
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          use_cache=False).last_hidden_state
        selected, targets = hidden[:, :-1][keep], labels[keep]
        # A few hundred positions at a time: 16 probe rows of 512 tokens would otherwise make 8,192 x 49,152
        # fp32 logits (1.6 GB) in one piece, and the allocator keeps such peaks.
        for lo in range(0, len(targets), POSITIONS_PER_CHUNK):
            logits = head(selected[lo:lo + POSITIONS_PER_CHUNK]).float()
            chunk = targets[lo:lo + POSITIONS_PER_CHUNK]
            total.nll_sum += float(F.cross_entropy(logits, chunk, reduction="sum"))
            total.correct += int((logits.argmax(-1) == chunk).sum())
        total.tokens += int(keep.sum())
    return total
