from conftest import build_tiny_tokenizer
from tunesmith.data.tokenize import IGNORE_INDEX, prompt_text, tokenize_example

import pytest


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def labelled_text(tokenizer, tokens):
    return tokenizer.decode([t for t, label in zip(tokens.input_ids, tokens.labels) if label != IGNORE_INDEX])


def test_only_the_answer_and_its_end_token_are_labelled(tokenizer):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Ana has 3 red cups and buys 2 more."},
                {"role": "assistant", "content": "Ana now has 5 red cups."}]
    tokens = tokenize_example(tokenizer, messages, 512)
    prompt_len = len(tokenizer(prompt_text(tokenizer, messages[:2]), add_special_tokens=False)["input_ids"])
    # Every prompt token, the assistant header included, is ignored by the loss ...
    assert tokens.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert tokenizer.decode(tokens.input_ids[:prompt_len]).endswith("<|im_start|>assistant\n")
    # ... and every answer token is labelled, up to and including the end-of-turn token.
    answer = tokens.labels[prompt_len:]
    assert labelled_text(tokenizer, tokens) == "Ana now has 5 red cups.<|im_end|>"
    assert all(label != IGNORE_INDEX for label in answer[:-1])  # the trailing newline after <|im_end|> is not
    assert [t for t, label in zip(tokens.input_ids, tokens.labels) if label != IGNORE_INDEX] == \
        tokens.input_ids[prompt_len:prompt_len + len(answer) - 1]


def test_every_assistant_turn_of_a_multi_turn_chat_is_labelled(tokenizer):
    messages = [{"role": "user", "content": "Ben has 2 cups."}, {"role": "assistant", "content": "Ben has 2 cups."},
                {"role": "user", "content": "And buys 4 more?"}, {"role": "assistant", "content": "Ben now has 6."}]
    text = labelled_text(tokenizer, tokenize_example(tokenizer, messages, 512))
    assert text == "Ben has 2 cups.<|im_end|>Ben now has 6.<|im_end|>"


def test_truncation_keeps_the_labels_aligned_and_drops_rows_with_no_answer_left(tokenizer):
    messages = [{"role": "user", "content": "Ana has 3 red cups and buys 2 more. " * 5},
                {"role": "assistant", "content": "Ana now has 5 red cups."}]
    full = tokenize_example(tokenizer, messages, 1024)
    cut = tokenize_example(tokenizer, messages, len(full.input_ids) - 3)
    assert cut.truncated and not full.truncated
    assert cut.labels == full.labels[:len(cut.input_ids)]
    assert tokenize_example(tokenizer, messages, 20) is None
