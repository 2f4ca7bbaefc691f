"""The chunked LM-head cross-entropy gives the plain computation's loss and gradients, in fp32 and bf16."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train.loss import linear_cross_entropy_sum


def plain(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.T).float(), labels, reduction="sum")


@pytest.mark.parametrize("train_weight", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_ones_in_fp32(train_weight):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(101, 16, requires_grad=train_weight)
    labels = torch.randint(0, 101, (37,))
    # 505 elements a chunk: 5 tokens of a 101-entry vocabulary, so 8 chunks with a ragged last one.
    ours = linear_cross_entropy_sum(hidden, weight, labels, chunk_elements=505)
    ours.backward(torch.tensor(0.5))
    grads = hidden.grad.clone(), None if weight.grad is None else weight.grad.clone()
    hidden.grad, weight.grad = None, None
    reference = plain(hidden, weight, labels)
    (reference * 0.5).backward()
    assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-4)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5)
    if train_weight:
        assert torch.allclose(grads[1], weight.grad, atol=1e-5)
    else:
        assert grads[1] is None


def test_bf16_inputs_agree_with_fp32_within_bf16_tolerance():
    torch.manual_seed(1)
    hidden = torch.randn(64, 32)
    weight = torch.randn(500, 32) / 4
    labels = torch.randint(0, 500, (64,))
    h16 = hidden.to(torch.bfloat16).requires_grad_()
    loss16 = linear_cross_entropy_sum(h16, weight.to(torch.bfloat16), labels, chunk_elements=4000)
    loss16.backward()
    assert loss16.dtype == torch.float32 and h16.grad.dtype == torch.bfloat16
    h32 = hidden.clone().requires_grad_()
    loss32 = plain(h32, weight, labels)
    loss32.backward()
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 1e-2
    assert torch.allclose(h16.grad.float(), h32.grad, atol=3e-2)


def test_no_labelled_tokens_is_a_zero_loss_that_still_backpropagates():
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(10, 8)
    loss = linear_cross_entropy_sum(hidden, weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.shape == (0, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_label_far_below_the_top_logit_keeps_a_finite_exact_loss(dtype):
    """Training reads the loss off the softmax it uses as gradient; a label whose probability underflows there
    (here ~200 nats below the top logit) is taken from an exact log_softmax instead of giving -log(0)."""
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype, requires_grad=True)
    weight = torch.tensor([[200.0, 0.0], [0.0, 0.0], [0.0, 3.0]], dtype=dtype)
    labels = torch.tensor([1, 2])  # row 0: label 200 below the top; row 1: an ordinary label
    loss = linear_cross_entropy_sum(hidden, weight, labels)
    loss.backward()
    reference = plain(hidden.detach().float(), weight.float(), labels)
    assert torch.isfinite(loss) and abs(loss.item() - reference.item()) < 1e-2 * reference.item()
    assert torch.isfinite(hidden.grad).all()


def test_the_planner_models_the_chunk_size_the_loss_uses():
    """plan_model cannot import torch, so it repeats the chunk size: the two must not drift apart."""
    from tunesmith.plan_model import HEAD_CHUNK_ELEMENTS
    from tunesmith.train.loss import CHUNK_ELEMENTS

    assert HEAD_CHUNK_ELEMENTS == CHUNK_ELEMENTS
