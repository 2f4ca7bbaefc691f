"""Generative classification at prediction time: a decoder scores every label as the answer; no free text.

For each input the prompt (system prompt with the label list + the text, as in training) runs once; every label's
answer tokens, end-of-turn token included (so "billing" and "billing_issue" differ: after "billing" the first
must end the turn, the second must not), are then scored teacher-forced on a copy of the prompt's KV cache:

    score(label) = sum over the answer's tokens t of log p(t | prompt, earlier answer tokens)

A softmax over the labels' scores gives the probabilities and the argmax the prediction, through the same
`outputs_from_logits` as a head classifier, so callers (eval, predict, /v1/classify, export) see the same API:

    clf = load_generative_classifier("runs/intents")
    clf.predict(["where is my parcel?"])  # [{"label": "track_order", "probabilities": {...}}]

Memory stays bounded: prompts go in batches of `batch_size` (left-padded, positions from the mask) and keep
only their last position's logits; the labels go in chunks of LABEL_ROWS // batch_size, so the largest logits
tensor is LABEL_ROWS rows x the longest answer x the vocabulary (64 x 8 x 49,152 fp32 = 100 MB for SmolLM2),
whatever the number of labels, and the largest KV cache is that of LABEL_ROWS prompt copies.
"""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from pathlib import Path

import torch

from tunesmith.errors import ConfigError, ModelError, RunDirError

LABEL_ROWS = 64  # prompt x label sequences scored per forward pass


def require_decoder(path: str, name: str | None, trust_remote_code: bool = False) -> None:
    """Refuse an encoder base (BERT, RoBERTa, MiniLM): it has no next-token head to write a label with."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ConfigError(f"model.classifier: generative needs a decoder that writes the label, but model.base "
                          f"'{name}' is an encoder ({model_type})",
                          "set model.classifier: head to train a classification head on it, or use a decoder "
                          "such as model.base: smollm2-135m-instruct")


def answer_ids(tokenizer, system: str, label: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one labelled conversation, tokenized as training tokenized it (the answer is
    the tokens tokenize_example trains on: the label and the end-of-turn token)."""
    from tunesmith.data.genclass import chat
    from tunesmith.data.tokenize import IGNORE_INDEX, tokenize_example

    tokens = tokenize_example(tokenizer, chat(system, "x", label), 1 << 30)
    if tokens is None:
        raise ModelError(f"the label '{label}' renders to no answer token", "check the tokenizer's chat template")
    first = next(i for i, t in enumerate(tokens.labels) if t != IGNORE_INDEX)
    return tokens.input_ids[:first], [t for t in tokens.labels if t != IGNORE_INDEX]


class GenerativeClassifier:
    """A causal LM, its tokenizer and the label set (labels.json with the system prompt); the Classifier API."""

    def __init__(self, model, tokenizer, space: dict, max_seq_len: int, device: str):
        from tunesmith.data.genclass import text_room

        self.model, self.tokenizer, self.space = model.eval(), tokenizer, space
        self.max_seq_len, self.device = max_seq_len, device
        self.system = space["system_prompt"]
        self.answers = [answer_ids(tokenizer, self.system, label)[1] for label in space["labels"]]
        self.room = text_room(tokenizer, self.system, space["labels"], max_seq_len)  # as in training

    task = property(lambda self: "classification")
    labels = property(lambda self: self.space["labels"])

    def prompt_ids(self, texts: list[str]) -> list[list[int]]:
        from tunesmith.data.genclass import chat, clip_text
        from tunesmith.data.tokenize import prompt_text

        rendered = [prompt_text(self.tokenizer, chat(self.system, clip_text(self.tokenizer, t, self.room)))
                    for t in texts]
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def logits(self, texts: list[str], batch_size: int = 8) -> torch.Tensor:
        """[texts x labels] summed answer log-probs (the softmax of a row gives its probabilities)."""
        ids = self.prompt_ids(list(texts))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: little padding
        out = torch.zeros((len(ids), len(self.answers)))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            out[chunk] = self._score_batch([ids[i] for i in chunk])
        return out

    def _score_batch(self, prompts: list[list[int]]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # logits_to_keep=1: only the last position's logits (16 prompts x 200 positions x 49,152 fp32 would be
        # 630 MB for SmolLM2, all but 16 rows of it unused)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each answer's first token
        cache, lengths = out.cache, mask.sum(-1)
        del out
        scores = torch.zeros((len(prompts), len(self.answers)))
        for j, answer in enumerate(self.answers):
            scores[:, j] = first[:, answer[0]].cpu()
        per_chunk = max(1, LABEL_ROWS // len(prompts))
        for start in range(0, len(self.answers), per_chunk):
            labels = list(range(start, min(start + per_chunk, len(self.answers))))
            scores[:, labels] += self._continue(cache, mask, lengths, labels)
        return scores

    def _continue(self, cache, mask: torch.Tensor, lengths: torch.Tensor, labels: list[int]) -> torch.Tensor:
        """Log-probs of answer tokens 2..n of `labels` after each prompt: [prompts x len(labels)]."""
        steps = max(len(self.answers[j]) - 1 for j in labels)
        if steps == 0:
            return torch.zeros((mask.shape[0], len(labels)))
        n, k = mask.shape[0], len(labels)
        # Row b * k + m: prompt b continued by label labels[m] (repeat_interleave order of the cache).
        inputs = torch.zeros((k, steps), dtype=torch.long)
        targets = torch.zeros((k, steps), dtype=torch.long)
        valid = torch.zeros((k, steps), dtype=torch.bool)
        for m, j in enumerate(labels):
            answer = self.answers[j]
            inputs[m, :len(answer) - 1] = torch.tensor(answer[:-1])
            targets[m, :len(answer) - 1] = torch.tensor(answer[1:])
            valid[m, :len(answer) - 1] = True
        inputs, targets, valid = (t.repeat(n, 1).to(self.device) for t in (inputs, targets, valid))
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(k)
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), valid.long()], dim=1)
        positions = lengths.repeat_interleave(k)[:, None] + torch.arange(steps, device=self.device)[None]
        logits = self.model(input_ids=inputs, attention_mask=full_mask, position_ids=positions,
                            cache=past, use_cache=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        return (logp * valid).sum(-1).view(n, k).cpu()

    def predict(self, texts: list[str], batch_size: int = 8) -> list[dict]:
        from tunesmith.models.classifier import outputs_from_logits

        return outputs_from_logits(self.logits(texts, batch_size), self.space)

    def base(self):
        """A context in which the model is the base decoder (the adapter switched off): the zero-shot baseline."""
        return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()


def _dtype(device: str, config=None):
    """A run scores in the precision it trained in (bf16 on CUDA and on CPUs with native bf16, as `tunesmith eval`
    generates): on the shared AVX512-BF16/AMX CPU, fp32 scored Bitext prompts (~200 tokens, 27 labels) at over 4 s
    a row while bf16 training ran at ~540 tokens/s. An export follows `tunesmith serve`: fp32 on CPU, bf16 on CUDA."""
    if config is None:
        return torch.bfloat16 if device == "cuda" else torch.float32
    from tunesmith.train.precision import resolve_compute

    compute = resolve_compute(config.train.precision, config.model.dtype, config.method.kind, device)
    return torch.bfloat16 if compute.autocast else compute.weights


def load_generative_classifier(run_dir: str | Path, device: str | None = None) -> GenerativeClassifier:
    """A finished generative classification run (base + adapter, unmerged so that eval can switch the adapter
    off), or a folder `tunesmith export --format merged` wrote from one (model + tokenizer + labels.json)."""
    from tunesmith.data.encode import load_space
    from tunesmith.data.tokenize import ensure_chat_template
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve

    folder = Path(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    space = load_space(folder)
    if space.get("classifier") != "generative":
        raise RunDirError(f"'{folder}' is not a generative classifier (its labels.json has no system prompt)",
                          "use tunesmith.models.classifier.load_classifier for a head classifier")
    if (folder / "config.yaml").is_file():
        from tunesmith.runs import load_run_config

        config = load_run_config(folder)
        weights = folder / "adapter"
        if not weights.is_dir():
            raise RunDirError(f"'{weights}' is missing: the run has not finished training",
                              "run `tunesmith train PROJECT.yaml` (or `--resume` an interrupted run) first")
        tokenizer = load_tokenizer(str(weights))
        if (weights / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(load_causal_lm(resolve(config.model.base).path,
                                                             _dtype(device, config)), weights)
        else:  # method.kind: full saves the whole decoder in adapter/
            model = load_causal_lm(str(weights), _dtype(device, config))
        stats = folder / "data" / "stats.json"
        max_len = json.loads(stats.read_text())["max_seq_len"] if stats.is_file() else config.data.max_seq_len
    else:
        tokenizer = load_tokenizer(str(folder))
        model = load_causal_lm(str(folder), _dtype(device))
        max_len = space.get("max_seq_len") or int(getattr(model.config, "max_position_embeddings", 2048))
    ensure_chat_template(tokenizer)
    return GenerativeClassifier(model.to(device), tokenizer, space, max_len, device)
