"""The cache-blocked softmax must equal F.cross_entropy over the fully materialised logits, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from towerrec.tasks.blocked_softmax import blocked_softmax_loss, block_sizes


def reference(query, candidates, labels=None, *, positives=None, column_bias=None, label_bias=None, row_ids=None,
              column_ids=None, temperature=1.0, num_hard_negatives=None, sample_weight=None, reduction="mean"):
    """The plain computation: [B, U] logits, positive as column 0, masked cells at the dtype's lowest value."""
    batch = query.shape[0]
    logits = query @ candidates.T / temperature
    if column_bias is not None:
        logits = logits + column_bias
    own = candidates[labels] if positives is None else positives
    positive = (query * own).sum(1) / temperature
    if column_bias is not None and labels is not None:
        positive = positive + column_bias[labels]
    if label_bias is not None:
        positive = positive + label_bias
    left_out = torch.zeros(logits.shape, dtype=torch.bool)
    if labels is not None:
        left_out[torch.arange(batch), labels] = True
    if row_ids is not None:
        left_out |= row_ids[:, None] == column_ids[None, :]
    lowest = torch.finfo(logits.dtype).min
    logits = logits.masked_fill(left_out, lowest)
    if num_hard_negatives is not None:
        k = min(num_hard_negatives, candidates.shape[0] - (labels is not None))
        logits = logits.masked_fill(left_out, -math.inf).topk(k, dim=1).values.clamp(min=lowest)
    full = torch.cat([positive[:, None], logits], 1)
    per_row = F.cross_entropy(full, torch.zeros(batch, dtype=torch.int64), reduction="none")
    if sample_weight is not None:
        per_row = per_row * sample_weight
    return per_row.sum() if reduction == "sum" else per_row.sum() / batch


def _inputs(seed, batch, num_candidates, dim, dtype=torch.float64, *, duplicates=True):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, dim, generator=gen, dtype=dtype)
    candidates = torch.randn(num_candidates, dim, generator=gen, dtype=dtype)
    labels = torch.randint(0, num_candidates, (batch,), generator=gen)
    if not duplicates:
        labels = torch.randperm(num_candidates, generator=gen)[:batch]
    return gen, query, candidates, labels


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


def _assert_same(kwargs, query, candidates, labels=None, positives=None, *, blocks=((None, None),), rtol=1e-10,
                 atol=1e-10):
    tensors = (query, candidates) if positives is None else (query, candidates, positives)

    def run(fn, **extra):
        def call(q, c, p=None):
            return fn(q, c, labels, positives=p, **kwargs, **extra)
        return _grads(call, *tensors)

    expected, expected_grads = run(reference)
    for rows, columns in blocks:
        got, got_grads = run(blocked_softmax_loss, row_block=rows, column_block=columns)
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol)


BLOCKS = ((None, None), (3, 5), (7, 64), (64, 2), (1, 1))


@pytest.mark.parametrize("masking", [False, True])
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_the_materialised_softmax_in_float64(masking, biases, weighted, reduction):
    gen, query, candidates, labels = _inputs(0, 29, 13, 4)
    ids = torch.randint(0, 5, (13,), generator=gen)  # repeated ids: several hits per row
    kwargs = {"temperature": 0.37, "reduction": reduction}
    if masking:
        kwargs.update(row_ids=ids[labels], column_ids=ids)
    if biases:
        kwargs.update(column_bias=torch.randn(13, generator=gen, dtype=torch.float64),
                      label_bias=-torch.rand(29, generator=gen, dtype=torch.float64))
    if weighted:
        kwargs["sample_weight"] = torch.rand(29, generator=gen, dtype=torch.float64) * 2
    _assert_same(kwargs, query, candidates, labels, blocks=BLOCKS)


@pytest.mark.parametrize("masking", [False, True])
def test_positives_outside_the_candidates_sampled_softmax(masking):
    gen, query, candidates, _ = _inputs(1, 17, 11, 3)
    positives = torch.randn(17, 3, generator=gen, dtype=torch.float64)
    kwargs = {"column_bias": torch.randn(11, generator=gen, dtype=torch.float64),
              "label_bias": torch.randn(17, generator=gen, dtype=torch.float64), "temperature": 2.0}
    if masking:
        ids = torch.randint(0, 4, (11,), generator=gen)
        kwargs.update(row_ids=torch.randint(0, 4, (17,), generator=gen), column_ids=ids)
    _assert_same(kwargs, query, candidates, positives=positives, blocks=BLOCKS)


@pytest.mark.parametrize("k", [1, 3, 12, 50])
@pytest.mark.parametrize("masking", [False, True])
def test_hard_negatives_keep_the_k_highest_candidates(k, masking):
    gen, query, candidates, labels = _inputs(2, 23, 13, 4)
    kwargs = {"num_hard_negatives": k, "column_bias": torch.randn(13, generator=gen, dtype=torch.float64),
              "sample_weight": torch.rand(23, generator=gen, dtype=torch.float64)}
    if masking:
        ids = torch.randint(0, 6, (13,), generator=gen)
        kwargs.update(row_ids=ids[labels], column_ids=ids)
    _assert_same(kwargs, query, candidates, labels, blocks=BLOCKS)


def test_every_cell_masked_leaves_only_the_positive():
    # Every candidate is a hit of every row: the loss is 0 (softmax over the positive alone), with no NaN.
    _, query, candidates, labels = _inputs(3, 6, 4, 2)
    ids = torch.zeros(4, dtype=torch.int64)
    for rows, columns in BLOCKS:
        loss, (grad_query, grad_candidates) = _grads(
            lambda q, c, r=rows, w=columns: blocked_softmax_loss(q, c, labels, row_ids=ids[labels], column_ids=ids,
                                                                 row_block=r, column_block=w), query, candidates)
        assert float(loss) == 0.0
        assert torch.count_nonzero(grad_query) == 0 and torch.count_nonzero(grad_candidates) == 0


def test_float32_matches_float64_reference_to_1e_5():
    gen, query, candidates, labels = _inputs(4, 300, 700, 16)
    bias = torch.randn(700, generator=gen, dtype=torch.float64)
    expected, expected_grads = _grads(lambda q, c: reference(q, c, labels, column_bias=bias, temperature=0.2),
                                      query, candidates)
    for rows, columns in ((None, None), (32, 128)):
        got, got_grads = _grads(
            lambda q, c, r=rows, w=columns: blocked_softmax_loss(q, c, labels, column_bias=bias.float(), temperature=0.2,
                                                                 row_block=r, column_block=w),
            query.float(), candidates.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6)


def test_extreme_logits_stay_finite_and_exact():
    # Logit gaps of ~1000 make the positive's probability underflow in float32.
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    labels = torch.tensor([1, 0, 2])
    loss = blocked_softmax_loss(query, candidates, labels, temperature=0.001, reduction="sum")
    expected = F.cross_entropy(query @ candidates.T / 0.001, labels, reduction="sum")
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("columns", [None, 100])
def test_bfloat16_inputs_and_autocast_stay_close_to_float32(columns):
    gen = torch.Generator().manual_seed(5)
    query, candidates = torch.randn(256, 32, generator=gen) * 0.3, torch.randn(500, 32, generator=gen) * 0.3
    labels = torch.randint(0, 500, (256,), generator=gen)
    exact, exact_grads = _grads(lambda q, c: blocked_softmax_loss(q, c, labels, column_block=columns), query, candidates)
    low, low_grads = _grads(lambda q, c: blocked_softmax_loss(q, c, labels, column_block=columns),
                            query.bfloat16(), candidates.bfloat16())
    assert low.dtype == torch.float32 and low_grads[0].dtype == torch.bfloat16
    torch.testing.assert_close(low, exact, rtol=2e-2, atol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, auto_grads = _grads(lambda q, c: blocked_softmax_loss(q, c, labels, column_block=columns),
                                  query, candidates)
    assert auto_grads[0].dtype == torch.float32  # gradients come back in the inputs' dtype
    torch.testing.assert_close(auto, exact, rtol=2e-2, atol=2e-2)
    for got in (low_grads, auto_grads):
        for g, e in zip(got, exact_grads):
            assert float((g.float() - e).norm() / e.norm()) < 2e-2


def test_no_gradient_needed_computes_only_the_loss():
    _, query, candidates, labels = _inputs(6, 20, 9, 3)
    with torch.no_grad():
        loss = blocked_softmax_loss(query, candidates, labels, column_block=4)
    torch.testing.assert_close(loss, reference(query, candidates, labels))
    assert not loss.requires_grad


def test_gradient_scales_with_the_outer_gradient_and_refuses_a_second_derivative():
    _, query, candidates, labels = _inputs(7, 10, 6, 3)
    _, (plain, _) = _grads(lambda q, c: blocked_softmax_loss(q, c, labels), query, candidates)
    _, (tripled, _) = _grads(lambda q, c: 3.0 * blocked_softmax_loss(q, c, labels), query, candidates)
    torch.testing.assert_close(tripled, 3.0 * plain)
    q = query.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(blocked_softmax_loss(q, candidates, labels), q, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 24), num_candidates=st.integers(1, 20), dim=st.integers(1, 5),
       rows=st.integers(1, 30), columns=st.integers(1, 25), seed=st.integers(0, 10_000),
       temperature=st.floats(0.05, 5.0), masking=st.booleans(), hard=st.one_of(st.none(), st.integers(1, 25)))
def test_random_shapes_and_blocks_match_the_reference(batch, num_candidates, dim, rows, columns, seed, temperature,
                                                     masking, hard):
    gen, query, candidates, labels = _inputs(seed, batch, num_candidates, dim)
    kwargs = {"temperature": temperature, "column_bias": torch.randn(num_candidates, generator=gen, dtype=torch.float64),
              "num_hard_negatives": hard, "sample_weight": torch.rand(batch, generator=gen, dtype=torch.float64)}
    if masking:
        ids = torch.randint(0, 3, (num_candidates,), generator=gen)
        kwargs.update(row_ids=ids[labels], column_ids=ids)
    _assert_same(kwargs, query, candidates, labels, blocks=((rows, columns),))


def test_block_sizes_fit_the_cache_on_cpu_and_are_large_on_gpu(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    rows, columns = block_sizes(8192, 7500, "cpu")
    assert columns == 7500 and 8 <= rows < 128
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert block_sizes(8192, 7500, "cpu")[0] in (2 * rows, 2 * rows + 1)  # each thread's share of a tile stays cache-sized
    rows, columns = block_sizes(8192, 1_000_000, "cpu")
    assert columns < 1_000_000 and rows >= 8
    assert block_sizes(8192, 7500, "cuda") == (8192, 7500)
    assert block_sizes(10, 7500, "cpu", row_block=4, column_block=100) == (4, 100)


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": None}, "exactly one"),
    ({"temperature": 0.0}, "temperature"),
    ({"row_ids": torch.zeros(4, dtype=torch.int64)}, "go together"),
    ({"column_bias": torch.zeros(2)}, "column_bias must have shape"),
    ({"reduction": "none"}, "reduction"),
    ({"row_block": 0}, "row_block"),
    ({"num_hard_negatives": 0}, "num_hard_negatives"),
])
def test_bad_arguments_fail_with_one_line(kwargs, message):
    args = {"labels": torch.zeros(4, dtype=torch.int64), **kwargs}
    labels = args.pop("labels")
    with pytest.raises(ValueError, match=message):
        blocked_softmax_loss(torch.randn(4, 3), torch.randn(5, 3), labels, **args)


@pytest.mark.parametrize("objective", ["full-softmax", "sampled"])
@pytest.mark.parametrize("logq", [False, True])
def test_sequential_objectives_equal_their_materialised_softmax(objective, logq):
    from towerrec.models.sequential import SequentialModel
    from towerrec.tasks import Retrieval

    torch.manual_seed(0)
    model = SequentialModel(40, embedding_dim=6, objective=objective, num_sampled=15,
                            task=Retrieval(temperature=0.5, logq_correction=logq, reduction="sum")).double()
    model.set_candidate_counts(torch.randint(0, 9, (40,)).double())
    query = torch.randn(33, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 40, (33,))
    torch.manual_seed(1)
    got = model.loss(query, target)
    got.backward()
    got_grads = (query.grad.clone(), model.candidate_embedding.weight.grad.clone())
    query.grad = None
    model.zero_grad()

    weight = model.candidate_weight()
    if objective == "full-softmax":
        expected = F.cross_entropy(query @ weight.T / 0.5, target, reduction="sum")
    else:
        torch.manual_seed(1)
        negatives = torch.multinomial(model.sample_probabilities, 15, replacement=True)
        positive = (query * weight[target]).sum(-1, keepdim=True) / 0.5
        negative = query @ weight[negatives].T / 0.5
        if logq:
            positive = positive - model.log_q[target].unsqueeze(1)
            negative = negative - model.log_q[negatives].unsqueeze(0)
        negative = negative.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), -torch.inf)
        logits = torch.cat([positive, negative], dim=1)
        expected = F.cross_entropy(logits, torch.zeros_like(target), reduction="sum")
    expected.backward()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grads[0], query.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grads[1], model.candidate_embedding.weight.grad, rtol=1e-10, atol=1e-10)
