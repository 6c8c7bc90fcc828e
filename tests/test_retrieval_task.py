"""Each retrieval trick against hand-computed cases, then the task that chains them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from towerrec.tasks import (
    Retrieval,
    candidate_sampling_probability,
    hard_negative_mining,
    in_batch_logits,
    logq_correction,
    remove_accidental_hits,
    sample_negatives,
    sampling_log_q,
    unique_candidates,
    unique_in_batch_softmax_loss,
)

MIN32 = torch.finfo(torch.float32).min


def _batch(seed: int = 0, batch: int = 6, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


# -- in_batch_logits ----------------------------------------------------------
def test_in_batch_logits_are_dot_products_over_temperature() -> None:
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    candidates = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]])
    expected = torch.tensor([[1.0, 2.0, 0.0], [2.0, 0.0, 2.0]])
    torch.testing.assert_close(in_batch_logits(query, candidates), expected)
    torch.testing.assert_close(in_batch_logits(query, candidates, temperature=0.5), 2 * expected)


def test_in_batch_logits_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        in_batch_logits(torch.ones(1, 2), torch.ones(1, 2), temperature=0.0)


def test_logits_follow_input_dtype() -> None:
    query, candidates = _batch()
    assert in_batch_logits(query.double(), candidates.double()).dtype == torch.float64


# -- logQ -----------------------------------------------------------------------
def test_logq_subtracts_log_probability() -> None:
    logits = torch.zeros(2, 3)
    p = torch.tensor([0.5, 0.25, 0.125])
    expected = torch.tensor([math.log(2), math.log(4), math.log(8)]).expand(2, 3)
    torch.testing.assert_close(logq_correction(logits, p), expected)


def test_logq_boosts_rare_items_over_popular_ones() -> None:
    corrected = logq_correction(torch.zeros(1, 2), torch.tensor([0.9, 0.01]))
    assert corrected[0, 1] > corrected[0, 0]  # the rare item is penalised less as a negative


def test_logq_clamps_probability_to_1e6_and_1() -> None:
    corrected = logq_correction(torch.zeros(1, 3), torch.tensor([0.0, 1e-9, 2.0]))
    torch.testing.assert_close(corrected, torch.tensor([[-math.log(1e-6), -math.log(1e-6), 0.0]]))
    assert torch.isfinite(corrected).all()


def test_sampling_log_q_matches_correction_and_carries_no_gradient() -> None:
    p = torch.tensor([0.2, 0.8], requires_grad=True)
    log_q = sampling_log_q(p)
    assert not log_q.requires_grad
    torch.testing.assert_close(log_q, torch.log(torch.tensor([0.2, 0.8])))


# -- accidental hits --------------------------------------------------------------
def test_accidental_hits_mask_duplicates_but_never_the_positive() -> None:
    logits = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    ids = torch.tensor([7, 8, 7])
    masked = remove_accidental_hits(logits, torch.arange(3), ids, ids)
    expected = logits.clone()
    expected[0, 2] = MIN32  # row 0's positive (7) reappears in column 2
    expected[2, 0] = MIN32  # and row 2's in column 0
    torch.testing.assert_close(masked, expected)
    assert torch.equal(masked.diagonal(), logits.diagonal())


def test_accidental_hits_keep_positive_column_off_the_diagonal() -> None:
    # Row 0's positive sits in column 2; column 0 holds the same item and is the hit.
    logits = torch.ones(1, 3)
    masked = remove_accidental_hits(logits, torch.tensor([2]), torch.tensor([5]), torch.tensor([5, 6, 5]))
    torch.testing.assert_close(masked, torch.tensor([[MIN32, 1.0, 1.0]]))


def test_accidental_hit_masking_keeps_the_loss_finite() -> None:
    ids = torch.tensor([1, 1, 1])
    masked = remove_accidental_hits(torch.randn(3, 3), torch.arange(3), ids, ids)
    loss = F.cross_entropy(masked, torch.arange(3))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


# -- hard negatives -------------------------------------------------------------
def test_hard_negative_mining_keeps_positive_first_then_top_k() -> None:
    logits = torch.tensor([[5.0, 1.0, 4.0, 3.0], [0.0, 9.0, 2.0, 8.0]])
    mined, labels = hard_negative_mining(logits, torch.tensor([0, 1]), 2)
    torch.testing.assert_close(mined, torch.tensor([[5.0, 4.0, 3.0], [9.0, 8.0, 2.0]]))
    assert labels.tolist() == [0, 0]


def test_hard_negative_mining_keeps_a_low_scoring_positive() -> None:
    mined, _ = hard_negative_mining(torch.tensor([[0.0, 3.0, 2.0, 1.0]]), torch.tensor([0]), 1)
    torch.testing.assert_close(mined, torch.tensor([[0.0, 3.0]]))


def test_hard_negative_mining_caps_k_at_available_negatives() -> None:
    logits = torch.randn(3, 3)
    mined, labels = hard_negative_mining(logits, torch.arange(3), 10)
    assert mined.shape == (3, 3)
    # keeping every negative leaves the softmax loss unchanged
    torch.testing.assert_close(F.cross_entropy(mined, labels), F.cross_entropy(logits, torch.arange(3)))


def test_hard_negative_mining_rejects_zero() -> None:
    with pytest.raises(ValueError, match="num_hard_negatives"):
        hard_negative_mining(torch.zeros(2, 2), torch.arange(2), 0)


# -- sampling ---------------------------------------------------------------------
def test_uniform_negatives_are_in_range_and_reproducible() -> None:
    first = sample_negatives(1000, 7, generator=torch.Generator().manual_seed(3))
    again = sample_negatives(1000, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.dtype == torch.int64
    assert first.min() >= 0 and first.max() < 7 and len(first.unique()) == 7


def test_negatives_follow_the_given_distribution() -> None:
    drawn = sample_negatives(50, 4, probabilities=torch.tensor([0.0, 0.0, 3.0, 0.0]))
    assert drawn.tolist() == [2] * 50
    with pytest.raises(ValueError, match="shape"):
        sample_negatives(5, 4, probabilities=torch.ones(3))


def test_candidate_sampling_probability_in_batch_is_count_share() -> None:
    q = candidate_sampling_probability(torch.tensor([1, 3]), batch_size=4)
    torch.testing.assert_close(q, torch.tensor([0.25, 0.75]))


def test_candidate_sampling_probability_mixes_extra_negatives_by_column_share() -> None:
    counts = torch.tensor([1.0, 3.0])
    uniform = candidate_sampling_probability(counts, batch_size=2, num_extra=2)
    torch.testing.assert_close(uniform, torch.tensor([0.375, 0.625]))  # (2·[.25,.75] + 2·[.5,.5]) / 4
    skewed = candidate_sampling_probability(counts, 2, extra_probabilities=torch.tensor([3.0, 1.0]), num_extra=6)
    torch.testing.assert_close(skewed, torch.tensor([(0.5 + 6 * 0.75) / 8, (1.5 + 6 * 0.25) / 8]))
    assert skewed.sum().item() == pytest.approx(1.0)


def test_candidate_sampling_probability_rejects_empty_counts() -> None:
    with pytest.raises(ValueError, match="positive total"):
        candidate_sampling_probability(torch.zeros(3), 4)


# -- the task ----------------------------------------------------------------------
def _manual_loss(query, candidates, log_q=None, temperature=1.0) -> torch.Tensor:
    logits = query @ candidates.T / temperature
    if log_q is not None:
        logits = logits - log_q
    rows = torch.arange(query.shape[0])
    return (torch.logsumexp(logits, dim=1) - logits[rows, rows]).mean()


def test_task_loss_is_mean_in_batch_cross_entropy() -> None:
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # row 0 logits [2, 0]: -log(e²/(e²+1)); row 1 logits [0, 1]: -log(e/(1+e))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert Retrieval()(query, candidates).item() == pytest.approx(expected, rel=1e-6)


def test_sum_reduction_is_batch_size_times_mean() -> None:
    query, candidates = _batch(batch=5)
    mean = Retrieval()(query, candidates)
    total = Retrieval(reduction="sum")(query, candidates)
    torch.testing.assert_close(total, mean * 5)


def test_task_applies_logq_after_temperature() -> None:
    query, candidates = _batch()
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.05, 0.3, 0.25, 0.1]))
    loss = Retrieval(temperature=0.5)(query, candidates, candidate_log_q=log_q)
    torch.testing.assert_close(loss, _manual_loss(query, candidates, log_q, temperature=0.5))


def test_task_ignores_log_q_when_correction_is_off() -> None:
    query, candidates = _batch()
    log_q = -torch.rand(6)
    off = Retrieval(logq_correction=False)(query, candidates, candidate_log_q=log_q)
    torch.testing.assert_close(off, _manual_loss(query, candidates))


def test_task_removes_accidental_hits_only_when_ids_repeat() -> None:
    query, candidates = _batch(batch=3)
    task = Retrieval()
    distinct = task(query, candidates, candidate_ids=torch.tensor([1, 2, 3]))
    torch.testing.assert_close(distinct, _manual_loss(query, candidates))
    # items 0 and 2 are the same: each row drops the other copy from its negatives
    candidates = candidates.clone()
    candidates[2] = candidates[0]
    repeated = task(query, candidates, candidate_ids=torch.tensor([1, 2, 1]))
    logits = query @ candidates.T
    keep = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    rows = torch.arange(3)
    expected = (torch.logsumexp(logits.masked_fill(~keep, -math.inf), 1) - logits[rows, rows]).mean()
    torch.testing.assert_close(repeated, expected)


def test_task_hard_negatives_with_all_negatives_equals_plain_loss() -> None:
    query, candidates = _batch(batch=4)
    plain = Retrieval()(query, candidates)
    torch.testing.assert_close(Retrieval(num_hard_negatives=3)(query, candidates), plain)
    assert Retrieval(num_hard_negatives=1)(query, candidates) <= plain


def test_extra_negatives_enlarge_the_softmax() -> None:
    query, candidates = _batch(batch=4)
    extra = torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
    task = Retrieval()
    plain = task(query, candidates)
    enlarged = task(query, candidates, extra_candidate_embeddings=extra)
    logits = query @ torch.cat([candidates, extra]).T
    rows = torch.arange(4)
    torch.testing.assert_close(enlarged, (torch.logsumexp(logits, 1) - logits[rows, rows]).mean())
    assert enlarged > plain


def test_extra_negatives_get_their_own_log_q_and_hit_removal() -> None:
    query, candidates = _batch(batch=3)
    extra = candidates[:1].clone()  # the extra negative is row 0's own positive
    ids, extra_ids = torch.tensor([4, 5, 6]), torch.tensor([4])
    log_q, extra_log_q = torch.log(torch.tensor([0.2, 0.3, 0.1])), torch.log(torch.tensor([0.4]))
    loss = Retrieval()(
        query,
        candidates,
        candidate_ids=ids,
        candidate_log_q=log_q,
        extra_candidate_embeddings=extra,
        extra_candidate_ids=extra_ids,
        extra_candidate_log_q=extra_log_q,
    )
    logits = query @ torch.cat([candidates, extra]).T - torch.cat([log_q, extra_log_q])
    logits[0, 3] = -math.inf  # accidental hit of row 0
    rows = torch.arange(3)
    torch.testing.assert_close(loss, (torch.logsumexp(logits, 1) - logits[rows, rows]).mean())


def test_extra_negatives_need_ids_and_log_q_when_the_batch_has_them() -> None:
    query, candidates = _batch(batch=2)
    extra = torch.randn(2, 4)
    with pytest.raises(ValueError, match="extra_candidate_ids"):
        Retrieval()(query, candidates, candidate_ids=torch.arange(2), extra_candidate_embeddings=extra)
    with pytest.raises(ValueError, match="extra_candidate_log_q"):
        Retrieval()(query, candidates, candidate_log_q=torch.zeros(2), extra_candidate_embeddings=extra)


def test_sample_weight_scales_rows_keras_style() -> None:
    query, candidates = _batch(batch=2)
    weighted = Retrieval()(query, candidates, sample_weight=torch.tensor([1.0, 0.0]))
    logits = query @ candidates.T
    row0 = torch.logsumexp(logits[0], 0) - logits[0, 0]
    torch.testing.assert_close(weighted, row0 / 2)


def test_loss_gradient_flows_to_both_towers() -> None:
    query, candidates = _batch()
    query.requires_grad_(True)
    candidates.requires_grad_(True)
    Retrieval(num_hard_negatives=2, temperature=0.2)(
        query, candidates, candidate_ids=torch.tensor([0, 1, 0, 2, 3, 4]), candidate_log_q=torch.full((6,), -2.0)
    ).backward()
    for grad in (query.grad, candidates.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_task_agrees_with_the_unique_candidate_softmax() -> None:
    g = torch.Generator().manual_seed(1)
    targets = torch.tensor([3, 1, 3, 0, 2, 3, 1])
    table = torch.randn(4, 5, generator=g)
    query = torch.randn(7, 5, generator=g)
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    for removal in (True, False):
        task = Retrieval(temperature=0.7, remove_accidental_hits=removal)
        ours = task(query, table[targets], candidate_ids=targets, candidate_log_q=log_q[targets])
        unique, labels, counts = unique_candidates(targets)
        theirs = unique_in_batch_softmax_loss(
            query, table[unique], labels, counts, log_q=log_q[unique], remove_accidental_hits=removal, temperature=0.7
        )
        torch.testing.assert_close(ours, theirs)


def test_task_rejects_bad_configuration_and_shapes() -> None:
    with pytest.raises(ValueError, match="temperature"):
        Retrieval(temperature=-1.0)
    with pytest.raises(ValueError, match="num_hard_negatives"):
        Retrieval(num_hard_negatives=0)
    with pytest.raises(ValueError, match="reduction"):
        Retrieval(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same batch size"):
        Retrieval()(torch.zeros(2, 3), torch.zeros(3, 3))


# -- the fast path: same loss and parameter gradients as B x B --------------------------
class _Towers(torch.nn.Module):
    """Tiny query/candidate towers: embeddings, the candidate one with a dense layer."""

    def __init__(self, num_users: int = 5, num_items: int = 6, dim: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.users = torch.nn.Parameter(torch.randn(num_users, dim, generator=g))
        self.items = torch.nn.Parameter(torch.randn(num_items, dim, generator=g))
        self.dense = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            self.dense.weight.copy_(torch.randn(dim, dim, generator=g))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.users[users], self.dense(self.items[items])


USERS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
ITEMS = torch.tensor([2, 5, 2, 0, 2, 5, 1, 3, 0])  # item 2 three times, items 5 and 0 twice
PROBABILITY = torch.tensor([0.3, 0.05, 0.4, 0.1, 0.0, 0.15])  # per item; item 4 never sampled


def _bxb_reference(query, candidates, *, log_q, removal, temperature, reduction, weight) -> torch.Tensor:
    """The plain B x B in-batch softmax, written out."""
    logits = query @ candidates.T / temperature
    if log_q is not None:
        logits = logits - log_q
    if removal:
        hit = ITEMS[:, None] == ITEMS[None, :]
        hit.fill_diagonal_(False)
        logits = logits.masked_fill(hit, -math.inf)
    per_row = F.cross_entropy(logits, torch.arange(len(ITEMS)), reduction="none")
    if weight is not None:
        per_row = per_row * weight
    return per_row.sum() if reduction == "sum" else per_row.sum() / len(ITEMS)


def _loss_and_grads(towers: _Towers, compute) -> tuple[torch.Tensor, list[torch.Tensor]]:
    towers.zero_grad()
    loss = compute(*towers(USERS, ITEMS))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in towers.parameters()]


@pytest.mark.parametrize("removal", [True, False])
@pytest.mark.parametrize("q_form", [None, "probability", "log_q"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fast_path_equals_bxb_loss_and_parameter_gradients(removal, q_form, reduction, weighted) -> None:
    towers = _Towers()
    weight = torch.linspace(0.5, 2.0, len(ITEMS)) if weighted else None
    q = PROBABILITY[ITEMS]
    kwargs = {"probability": {"candidate_sampling_probability": q},
              "log_q": {"candidate_log_q": sampling_log_q(q)}, None: {}}[q_form]
    task = Retrieval(temperature=0.5, remove_accidental_hits=removal, reduction=reduction)
    fast, fast_grads = _loss_and_grads(
        towers, lambda qe, ce: task(qe, ce, candidate_ids=ITEMS, sample_weight=weight, **kwargs)
    )
    log_q = None if q_form is None else torch.log(q.clamp(1e-6, 1.0))
    expected, expected_grads = _loss_and_grads(
        towers,
        lambda qe, ce: _bxb_reference(qe, ce, log_q=log_q, removal=removal, temperature=0.5,
                                      reduction=reduction, weight=weight),
    )
    torch.testing.assert_close(fast, expected)
    for got, want in zip(fast_grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_fast_path_is_taken_only_with_ids_and_no_hard_negatives_or_extras(monkeypatch) -> None:
    from towerrec.tasks import retrieval

    calls = []
    real = retrieval.unique_in_batch_softmax_loss
    monkeypatch.setattr(retrieval, "unique_in_batch_softmax_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    query, candidates = _batch()
    ids = torch.tensor([0, 1, 0, 2, 3, 4])
    Retrieval()(query, candidates, candidate_ids=ids)
    assert calls == [1]
    Retrieval()(query, candidates)
    Retrieval(num_hard_negatives=2)(query, candidates, candidate_ids=ids)
    Retrieval()(query, candidates, candidate_ids=ids, extra_candidate_embeddings=torch.randn(2, 4),
                extra_candidate_ids=torch.tensor([7, 8]))
    assert calls == [1]


def test_fast_path_uses_the_first_row_of_each_duplicate_id() -> None:
    query, candidates = _batch(batch=4)
    ids = torch.tensor([3, 1, 3, 1])
    same_as_first = candidates.clone()
    same_as_first[2], same_as_first[3] = candidates[0], candidates[1]
    task = Retrieval()
    torch.testing.assert_close(task(query, candidates, candidate_ids=ids), task(query, same_as_first, candidate_ids=ids))


# -- sampling probabilities versus log q ---------------------------------------------------
@pytest.mark.parametrize("ids", [None, ITEMS])
def test_probability_and_log_q_forms_give_the_same_loss(ids) -> None:
    g = torch.Generator().manual_seed(3)
    query, candidates = torch.randn(9, 4, generator=g), torch.randn(6, 4, generator=g)[ITEMS]
    q = PROBABILITY[ITEMS]  # holds a 0: clamped to 1e-6 in both forms
    task = Retrieval(temperature=0.3)
    by_probability = task(query, candidates, candidate_ids=ids, candidate_sampling_probability=q)
    by_log_q = task(query, candidates, candidate_ids=ids, candidate_log_q=torch.log(q))  # log 0 = -inf
    torch.testing.assert_close(by_probability, by_log_q)
    assert torch.isfinite(by_probability)
    assert not torch.allclose(by_probability, task(query, candidates, candidate_ids=ids))


def test_extra_candidates_take_probabilities_too() -> None:
    query, candidates = _batch(batch=3)
    extra = torch.randn(2, 4, generator=torch.Generator().manual_seed(5))
    q, extra_q = torch.tensor([0.2, 0.3, 0.1]), torch.tensor([0.4, 0.05])
    task = Retrieval()
    by_probability = task(query, candidates, candidate_sampling_probability=q, extra_candidate_embeddings=extra,
                          extra_candidate_sampling_probability=extra_q)
    by_log_q = task(query, candidates, candidate_log_q=q.log(), extra_candidate_embeddings=extra,
                    extra_candidate_log_q=extra_q.log())
    torch.testing.assert_close(by_probability, by_log_q)


@pytest.mark.parametrize("prefix", ["", "extra_"])
def test_probability_and_log_q_are_validated(prefix) -> None:
    query, candidates = _batch(batch=3)
    extra = {"extra_candidate_embeddings": torch.randn(3, 4)} if prefix else {}
    task = Retrieval()
    probability, log_q = f"{prefix}candidate_sampling_probability", f"{prefix}candidate_log_q"
    ok = {"candidate_log_q": torch.full((3,), -1.0)} if prefix else {}
    with pytest.raises(ValueError, match=f"give {probability} or {log_q}, not both"):
        task(query, candidates, **extra, **ok, **{probability: torch.full((3,), 0.2), log_q: torch.full((3,), -1.0)})
    for bad in ([0.2, 1.5, 0.1], [0.2, -0.1, 0.1], [0.2, math.nan, 0.1], [0.2, math.inf, 0.1]):
        with pytest.raises(ValueError, match=f"{probability} must hold finite probabilities in \\[0, 1\\]"):
            task(query, candidates, **extra, **ok, **{probability: torch.tensor(bad)})
    with pytest.raises(ValueError, match=f"log q must be <= 0; these look like probabilities: pass {probability}="):
        task(query, candidates, **extra, **ok, **{log_q: torch.tensor([0.2, 0.5, 0.3])})
    with pytest.raises(ValueError, match=f"{log_q} has NaN"):
        task(query, candidates, **extra, **ok, **{log_q: torch.tensor([-0.2, math.nan, -0.3])})
    with pytest.raises(ValueError, match=f"{probability} must have shape \\[3\\]"):
        task(query, candidates, **extra, **ok, **{probability: torch.full((4,), 0.2)})


def test_extra_arguments_need_extra_embeddings_and_shapes_are_checked() -> None:
    query, candidates = _batch(batch=3)
    with pytest.raises(ValueError, match="extra_candidate_ids was given without extra_candidate_embeddings"):
        Retrieval()(query, candidates, extra_candidate_ids=torch.arange(2))
    with pytest.raises(ValueError, match="candidate_ids must have shape \\[3\\]"):
        Retrieval()(query, candidates, candidate_ids=torch.arange(4))
    with pytest.raises(ValueError, match="sample_weight must have shape \\[3\\]"):
        Retrieval()(query, candidates, sample_weight=torch.ones(3, 1))
    with pytest.raises(ValueError, match="candidate_embeddings must be a \\[rows, 4\\] matrix"):
        Retrieval()(query, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="extra_candidate_embeddings must be a \\[rows, 4\\] matrix"):
        Retrieval()(query, candidates, extra_candidate_embeddings=torch.zeros(2, 3))


# -- unique_candidates_loss ------------------------------------------------------------------
@pytest.mark.parametrize("hard_negatives", [None, 2])
@pytest.mark.parametrize("removal", [True, False])
def test_unique_candidates_loss_equals_forward_on_the_expanded_batch(hard_negatives, removal) -> None:
    towers = _Towers()
    unique, labels, counts = unique_candidates(ITEMS)
    q = PROBABILITY[unique]
    weight = torch.linspace(0.5, 2.0, len(ITEMS))
    task = Retrieval(temperature=0.7, num_hard_negatives=hard_negatives, remove_accidental_hits=removal)

    def deduplicated(query, _):
        candidates = towers.dense(towers.items[unique])  # the candidate tower runs on U rows
        return task.unique_candidates_loss(query, candidates, labels, counts, candidate_sampling_probability=q,
                                           sample_weight=weight)

    got, got_grads = _loss_and_grads(towers, deduplicated)
    want, want_grads = _loss_and_grads(
        towers, lambda qe, ce: task(qe, ce, candidate_ids=ITEMS, candidate_log_q=sampling_log_q(PROBABILITY[ITEMS]),
                                    sample_weight=weight)
    )
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


def test_unique_candidates_loss_rejects_inconsistent_inputs() -> None:
    query, unique = torch.randn(4, 3), torch.randn(2, 3)
    labels, counts = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 2])
    task = Retrieval()
    assert torch.isfinite(task.unique_candidates_loss(query, unique, labels, counts))
    with pytest.raises(ValueError, match="counts must be how often"):
        task.unique_candidates_loss(query, unique, labels, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="labels must index the 2 unique candidates"):
        task.unique_candidates_loss(query, unique, torch.tensor([0, 1, 2, 0]), counts)
    with pytest.raises(ValueError, match="labels must have shape \\[4\\]"):
        task.unique_candidates_loss(query, unique, labels[:3], counts)
    with pytest.raises(ValueError, match="candidate_log_q must have shape \\[2\\]"):
        task.unique_candidates_loss(query, unique, labels, counts, candidate_log_q=torch.zeros(4))
    with pytest.raises(ValueError, match="these look like probabilities"):
        task.unique_candidates_loss(query, unique, labels, counts, candidate_log_q=torch.tensor([0.5, 0.5]))


def test_unique_candidates_loss_names_negative_labels() -> None:
    with pytest.raises(ValueError, match="labels must index the 2 unique candidates"):
        Retrieval().unique_candidates_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([-1, 0]),
                                           torch.tensor([1, 1]))


@pytest.mark.parametrize("hard", [None, 2, 5])
def test_general_path_equals_the_chained_tricks_in_float64(hard) -> None:
    # extras + ids + log q + weights (+ hard negatives): the blocked general path against the standalone
    # functions chained in TFRS's order over the materialised [B, B + M] logits, values and gradients.
    gen = torch.Generator().manual_seed(11)
    query = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    extra = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ids, extra_ids = torch.randint(0, 5, (9,), generator=gen), torch.randint(0, 5, (4,), generator=gen)
    log_q = torch.rand(13, generator=gen, dtype=torch.float64).clamp(min=0.01).log()
    weight = torch.rand(9, generator=gen, dtype=torch.float64)
    task = Retrieval(temperature=0.6, num_hard_negatives=hard)
    got = task(query, candidates, candidate_ids=ids, candidate_log_q=log_q[:9], extra_candidate_embeddings=extra,
               extra_candidate_ids=extra_ids, extra_candidate_log_q=log_q[9:], sample_weight=weight)
    got_grads = torch.autograd.grad(got, (query, candidates, extra))
    labels = torch.arange(9)
    logits = logq_correction(in_batch_logits(query, torch.cat([candidates, extra]), 0.6), log_q.exp())
    logits = remove_accidental_hits(logits, labels, ids, torch.cat([ids, extra_ids]))
    if hard is not None:
        logits, labels = hard_negative_mining(logits, labels, hard)
    expected = (F.cross_entropy(logits, labels, reduction="none") * weight).mean()
    expected_grads = torch.autograd.grad(expected, (query, candidates, extra))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
