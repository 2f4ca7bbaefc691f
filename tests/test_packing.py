"""Packing: several examples per row, each attending only to itself; the loss equals the unpacked loss."""

import torch

from conftest import rows_for
from tunesmith.data.batching import collate, collate_packed, pack_best_fit, packed_micro_batches
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.train.loop import label_loss_sum


def test_best_fit_decreasing_fills_rows_without_overflow():
    lengths = {0: 70, 1: 50, 2: 40, 3: 30, 4: 20, 5: 60}
    rows = pack_best_fit(lengths, list(lengths), 100)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 3  # 270 tokens need at least 3 rows of 100


def test_packed_loss_equals_one_by_one_loss(tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_causal_lm(str(tiny_llama), torch.float32, "eager").eval()
    rows = rows_for(tokenizer, 12, seed=9)
    micro = packed_micro_batches(rows, list(range(12)), max_seq_len=128, micro_batch_size=4)
    assert sum(len(row) for batch in micro for row in batch) == 12 and len(micro[0][0]) > 1
    with torch.no_grad():
        packed_sum, packed_n = 0.0, 0
        for batch in micro:
            total, n = label_loss_sum(model, collate_packed([[rows[i] for i in row] for row in batch],
                                                            tokenizer.pad_token_id))
            packed_sum, packed_n = packed_sum + float(total), packed_n + n
        single_sum, single_n = 0.0, 0
        for row in rows:
            total, n = label_loss_sum(model, collate([row], tokenizer.pad_token_id))
            single_sum, single_n = single_sum + float(total), single_n + n
    assert packed_n == single_n
    assert abs(packed_sum / packed_n - single_sum / single_n) < 1e-4


def test_only_completion_tokens_get_gradient_signal(tiny_llama):
    """Changing a prompt token's label target cannot change the loss; changing an answer token's does."""
    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_causal_lm(str(tiny_llama), torch.float32, "eager").eval()
    row = rows_for(tokenizer, 1, seed=4)[0]
    batch = collate([row], tokenizer.pad_token_id)
    with torch.no_grad():
        base, _ = label_loss_sum(model, batch)
        prompt_pos = row.labels.index(-100)
        answer_pos = next(i for i, label in enumerate(row.labels) if label != -100)
        changed_prompt = {k: v.clone() for k, v in batch.items()}
        changed_prompt["labels"][0, prompt_pos] = -100  # already ignored: no change possible
        changed_answer = {k: v.clone() for k, v in batch.items()}
        changed_answer["labels"][0, answer_pos] = (row.labels[answer_pos] + 1) % len(tokenizer)
        assert float(label_loss_sum(model, changed_prompt)[0]) == float(base)
        assert float(label_loss_sum(model, changed_answer)[0]) != float(base)


def test_training_with_packing_runs_and_learns(tiny_project):
    import json
    from pathlib import Path

    from helpers import cli
    from tunesmith.config import load_config

    result = cli("train", tiny_project, "--set", "train.packing=true")
    assert result.returncode == 0, result.stderr
    run = Path(load_config(tiny_project).output)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r]
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert sum(r["tokens"] for r in steps if "tokens" in r) == 2 * stats["train"]["tokens"]  # 2 epochs, no padding


def test_right_padded_batch_without_mask_equals_one_by_one_loss(tiny_llama):
    """label_loss_sum passes no attention mask for collate()'s right-padded rows (SDPA's fast causal path): a
    real token never attends to the padding after it, so the batch loss equals each row's loss alone, with
    both attention kernels the CPU trainer picks from."""
    tokenizer = load_tokenizer(str(tiny_llama))
    from tunesmith.data.tokenize import Tokenized

    # rows of different lengths (answers cut short), so the batch really pads
    rows = [Tokenized(r.input_ids[:len(r.input_ids) - 3 * i], r.labels[:len(r.labels) - 3 * i], False)
            for i, r in enumerate(rows_for(tokenizer, 6, seed=12))]
    assert len({len(r.input_ids) for r in rows}) == 6
    for attention in ("eager", "sdpa"):
        model = load_causal_lm(str(tiny_llama), torch.float32, attention).eval()
        with torch.no_grad():
            total, n = label_loss_sum(model, collate(rows, tokenizer.pad_token_id))
            single = [label_loss_sum(model, collate([row], tokenizer.pad_token_id)) for row in rows]
        assert n == sum(s[1] for s in single)
        assert abs(float(total) - sum(float(s[0]) for s in single)) < 1e-4 * float(total), attention


def test_a_padding_row_for_one_row_batches_changes_no_loss_or_gradient(tiny_llama):
    """train.compile pads one-row micro-batches to two rows (at_least_two_rows): same loss sum, labels, gradient."""
    from tunesmith.data.batching import at_least_two_rows

    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_causal_lm(str(tiny_llama), torch.float32, "eager")
    rows = rows_for(tokenizer, 3, seed=7)
    for batch in (collate([rows[0]], tokenizer.pad_token_id),
                  collate_packed([rows], tokenizer.pad_token_id)):
        padded = at_least_two_rows(batch, tokenizer.pad_token_id)
        assert padded["input_ids"].shape[0] == 2 and set(padded) == set(batch)
        results = []
        for b in (batch, padded):
            model.zero_grad()
            total, n = label_loss_sum(model, b)
            total.backward()
            results.append((float(total), n, model.model.layers[0].mlp.up_proj.weight.grad.clone()))
        assert results[0][1] == results[1][1]
        assert abs(results[0][0] - results[1][0]) < 1e-4
        assert torch.allclose(results[0][2], results[1][2], atol=1e-6)
    two = collate(rows[:2], tokenizer.pad_token_id)
    assert at_least_two_rows(two, tokenizer.pad_token_id) is two


def test_label_index_points_at_every_labelled_next_token(tiny_llama):
    """with_label_index (computed on the CPU so a GPU step needs no nonzero()) picks exactly the positions whose next
    token carries a label, in row-major order, for padded and packed batches alike."""
    from tunesmith.train.loop import with_label_index

    tokenizer = load_tokenizer(str(tiny_llama))
    rows = rows_for(tokenizer, 5, seed=3)
    for batch in (collate(rows, tokenizer.pad_token_id), collate_packed([rows[:3], rows[3:]], tokenizer.pad_token_id)):
        indexed = with_label_index(batch)
        labels, index = batch["labels"], indexed["label_index"]
        expected = [b * labels.shape[1] + t for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1)
                    if labels[b, t + 1] != -100]
        assert index.tolist() == expected and len(expected) > 0
        assert indexed["label_targets"].tolist() == labels.flatten()[index + 1].tolist()
        assert -100 not in indexed["label_targets"].tolist()
