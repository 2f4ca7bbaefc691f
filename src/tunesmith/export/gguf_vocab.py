"""The tokenizer as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), for byte-level BPE
vocabularies (GPT-2, SmolLM, Llama 3, Qwen 2 style): tokens in their byte-level spelling, token types, merges,
special token ids and the add-BOS/EOS flags, laid out as llama.cpp's converter writes them.

SentencePiece vocabularies (Llama 2, Mistral v0.1, Gemma) are not handled yet: llama.cpp describes them with
scores instead of merges, and they are refused with a message rather than written half right.
"""

from __future__ import annotations

import json

from tunesmith.errors import ModelError

# gguf.TokenType values, repeated here so this module imports without the gguf package.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# tokenizer.ggml.pre names by the regex that splits text before BPE. llama.cpp picks its own splitting rules
# by this name; these three are the ones whose rules transformers' GGUF loader also knows by the same name.
PRE_BY_SPLIT_NAME = ("llama-bpe", "qwen2", "gpt-4o")


def _refuse(detail: str) -> ModelError:
    return ModelError(f"GGUF export supports byte-level BPE tokenizers only; this one {detail}",
                      "export with --format merged and convert it with llama.cpp's convert_hf_to_gguf.py")


def _pre_name(pre_tokenizer: dict | None) -> str:
    """The llama.cpp pre-tokenizer name for this tokenizer.json `pre_tokenizer`."""
    if pre_tokenizer is None:
        raise _refuse("has no pre-tokenizer")
    if pre_tokenizer.get("type") == "ByteLevel":
        if pre_tokenizer.get("use_regex", True) and not pre_tokenizer.get("add_prefix_space", False):
            return "gpt2"  # GPT-2's own splitting regex, inside ByteLevel
        raise _refuse("uses ByteLevel with a prefix space or without its regex")
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True} \
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex", True):
        # SmolLM's (and StarCoder's) tokenizer.json: every digit alone, then GPT-2's regex; llama.cpp's name for
        # that is "smollm". transformers' GGUF reader splits such files with GPT-2's regex alone, so the parity
        # check's token ids tell whether the vocabulary has multi-digit tokens that would make the two differ.
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel" \
            and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        try:  # transformers' own table (5.x): the GGUF reader splits text by these names
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            GGUF_PRE_TOKENIZER_SPLITS = {}
        for name in PRE_BY_SPLIT_NAME:
            if GGUF_PRE_TOKENIZER_SPLITS.get(name) == pattern:
                return name
    raise _refuse(f"splits text with a pre-tokenizer tunesmith cannot name for llama.cpp: "
                  f"{json.dumps(pre_tokenizer)[:200]}")


def _merges(model: dict) -> list[str]:
    # tokenizers >= 0.20 stores merges as [left, right] pairs, older files as "left right" strings.
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Does plain encoding (add_special_tokens=True) put this token first (BOS) or last (EOS)?"""
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def vocab_metadata(tokenizer, vocab_size: int, chat_template: str, end_of_turn: str | None) -> dict:
    """Every tokenizer key of the GGUF file, by gguf's key name, with the value to write."""
    if not getattr(tokenizer, "is_fast", False):
        raise _refuse("is not a fast (tokenizers) tokenizer")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise _refuse(f"is a {model.get('type')} model with a {(spec.get('decoder') or {}).get('type')} decoder")
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise ModelError(f"the tokenizer has {len(vocab)} tokens but the model only {vocab_size} embedding rows",
                         "train with the tokenizer that belongs to the base model")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # rows no token uses, as llama.cpp names them
    types = [UNUSED] * vocab_size
    for token, index in vocab.items():
        tokens[index], types[index] = token, NORMAL
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = CONTROL if added.special else USER_DEFINED
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_name(spec.get("pre_tokenizer")),
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": _merges(model), "tokenizer.chat_template": chat_template}
    for key, token_id in (("bos_token_id", tokenizer.bos_token_id), ("eos_token_id", tokenizer.eos_token_id),
                          ("unknown_token_id", tokenizer.unk_token_id), ("padding_token_id", tokenizer.pad_token_id)):
        if token_id is not None:
            meta[f"tokenizer.ggml.{key}"] = int(token_id)
    if end_of_turn is not None and vocab[end_of_turn] != tokenizer.eos_token_id:
        # llama.cpp stops at EOS and at EOT; a chat model whose turn ends elsewhere than EOS needs both.
        meta["tokenizer.ggml.eot_token_id"] = int(vocab[end_of_turn])
    meta["tokenizer.ggml.add_bos_token"] = _adds(tokenizer, tokenizer.bos_token_id, first=True)
    meta["tokenizer.ggml.add_eos_token"] = _adds(tokenizer, tokenizer.eos_token_id, first=False)
    meta["tokenizer.ggml.add_space_prefix"] = False
    return meta
