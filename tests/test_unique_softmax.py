"""The unique-candidate softmax must equal the plain B x B in-batch softmax exactly."""

import pytest
import torch
import torch.nn.functional as F

from towerrec.tasks.unique_softmax import (
    unique_candidates,
    unique_in_batch_softmax_loss,
)


def _reference(q, c_all, items, log_q_all, remove_hits, temperature, reduction, weight=None):
    logits = q @ c_all.T / temperature
    if log_q_all is not None:
        logits = logits - log_q_all
    if remove_hits:
        hit = items[:, None] == items[None, :]
        hit.fill_diagonal_(False)
        logits = logits.masked_fill(hit, -1e9)
    per_row = F.cross_entropy(logits, torch.arange(len(items)), reduction="none")
    if weight is not None:
        per_row = per_row * weight
    return per_row.sum() if reduction == "sum" else per_row.sum() / len(items)


@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("use_log_q", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("row_block", [None, 5])  # None: the materialised kernel at this size; 5: the blocked one
def test_equals_full_in_batch_softmax(remove_hits, use_log_q, reduction, weighted, row_block):
    gen = torch.Generator().manual_seed(0)
    batch, num_items, dim, temperature = 64, 10, 4, 0.7
    items = torch.randint(0, num_items, (batch,), generator=gen)  # many duplicates
    user_table = torch.randn(batch, dim, generator=gen, requires_grad=True)
    item_table = torch.randn(num_items, dim, generator=gen, requires_grad=True)
    log_q = torch.rand(num_items, generator=gen).log() if use_log_q else None
    weight = torch.rand(batch, generator=gen) * 2 if weighted else None  # Keras: mean = sum(w * loss) / B

    expected = _reference(user_table, item_table[items], items, None if log_q is None else log_q[items],
                          remove_hits, temperature, reduction, weight)
    expected.backward()
    grads = (user_table.grad.clone(), item_table.grad.clone())
    user_table.grad = None
    item_table.grad = None

    unique, labels, counts = unique_candidates(items)
    got = unique_in_batch_softmax_loss(
        user_table, item_table[unique], labels, counts,
        log_q=None if log_q is None else log_q[unique],
        remove_accidental_hits=remove_hits, temperature=temperature, reduction=reduction, sample_weight=weight,
        row_block=row_block,
    )
    got.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(user_table.grad, grads[0])
    torch.testing.assert_close(item_table.grad, grads[1])


def test_all_distinct_candidates_is_plain_cross_entropy():
    q = torch.randn(5, 3)
    c = torch.randn(5, 3)
    loss = unique_in_batch_softmax_loss(q, c, torch.arange(5), torch.ones(5))
    torch.testing.assert_close(loss, F.cross_entropy(q @ c.T, torch.arange(5)))


def test_loss_stays_exact_when_the_positive_probability_underflows():
    # Logit gaps of ~1000 make p[label] underflow to 0 in float32; the loss must
    # still be logsumexp - positive, finite, and equal to cross-entropy.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    labels = torch.tensor([1, 0, 2])
    loss = unique_in_batch_softmax_loss(q, c, labels, torch.ones(3), temperature=0.001, reduction="sum")
    expected = F.cross_entropy(q @ c.T / 0.001, labels, reduction="sum")
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)


def test_large_batches_take_the_blocked_kernel_and_agree_with_the_materialised_one(monkeypatch):
    from towerrec.tasks import unique_softmax

    gen = torch.Generator().manual_seed(1)
    items = torch.randint(0, 3000, (2000,), generator=gen)
    query, table = torch.randn(2000, 8, generator=gen), torch.randn(3000, 8, generator=gen)
    unique, labels, counts = unique_candidates(items)
    assert 2000 * unique.shape[0] > unique_softmax.MATERIALISED_MAX_LOGITS
    calls = []
    real = unique_softmax.blocked_softmax_loss
    monkeypatch.setattr(unique_softmax, "blocked_softmax_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    blocked = unique_in_batch_softmax_loss(query, table[unique], labels, counts, remove_accidental_hits=False)
    assert calls == [1]
    monkeypatch.setattr(unique_softmax, "MATERIALISED_MAX_LOGITS", 10**9)
    materialised = unique_in_batch_softmax_loss(query, table[unique], labels, counts, remove_accidental_hits=False)
    assert calls == [1]
    torch.testing.assert_close(blocked, materialised)


@pytest.mark.parametrize("row_block", [None, 7])  # None: small, materialised in float32; 7: blocked, bf16 matmuls
def test_bfloat16_and_autocast_stay_close_to_float32(row_block):
    gen = torch.Generator().manual_seed(2)
    items = torch.randint(0, 40, (64,), generator=gen)
    query, table = torch.randn(64, 16, generator=gen) * 0.3, torch.randn(40, 16, generator=gen) * 0.3
    unique, labels, counts = unique_candidates(items)
    exact = unique_in_batch_softmax_loss(query, table[unique], labels, counts, row_block=row_block)
    low = unique_in_batch_softmax_loss(query.bfloat16(), table[unique].bfloat16(), labels, counts, row_block=row_block)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = unique_in_batch_softmax_loss(query, table[unique], labels, counts, row_block=row_block)
    for got in (low, auto):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, exact, rtol=1e-2, atol=1e-2)
