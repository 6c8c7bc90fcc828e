"""Full-catalogue ranks and top-K metrics against hand-computed values and a naive full sort."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from towerrec.errors import TowerrecError
from towerrec.metrics.topk import (
    CSR,
    TargetRanks,
    evaluate_retrieval,
    rank_targets,
    target_ranks,
    topk_metrics,
    user_recall_at_k,
)

# 3 queries x 5 items; with identity candidates the query rows ARE the scores.
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.3, 0.7],  # target 2: beaten by 0.9 and 0.7 -> rank 3
        [0.2, 0.8, 0.6, 0.4, 0.0],  # target 1: best -> rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5],  # target 0: worst -> rank 5
    ]
)
TARGETS = torch.tensor([2, 1, 0])
ITEMS = torch.eye(5)


def _naive_ranks(query, candidates, targets, exclude_lists=None) -> torch.Tensor:
    """Full descending sort per query; the target's position + 1."""
    scores = query @ candidates.T
    ranks = []
    for row, target in enumerate(targets.tolist()):
        s = scores[row].clone()
        for item in (exclude_lists or [[]] * len(targets))[row]:
            if item != target:
                s[item] = -math.inf
        order = torch.argsort(s, descending=True, stable=True)
        ranks.append(int((order == target).nonzero()) + 1)
    return torch.tensor(ranks)


def _untied(ranks: TargetRanks) -> list[int]:
    """1-based ranks of a case without ties."""
    assert not bool(ranks.tied.any())
    return (ranks.higher + 1).tolist()


def _random_case(seed: int, num_queries: int, num_items: int, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    query = torch.randn(num_queries, dim, generator=g)
    candidates = torch.randn(num_items, dim, generator=g)
    targets = torch.randint(num_items, (num_queries,), generator=g)
    lists = [rng.choice(num_items, size=rng.integers(0, num_items), replace=True).tolist() for _ in range(num_queries)]
    return query, candidates, targets, lists


# -- ranks ------------------------------------------------------------------------
def test_ranks_hand_computed() -> None:
    assert _untied(target_ranks(SCORES, ITEMS, TARGETS)) == [3, 1, 5]


def test_exclusion_changes_ranks_but_never_removes_the_target() -> None:
    exclude = [[0], [], [0, 4]]  # query 2 lists its own target 0
    assert _untied(target_ranks(SCORES, ITEMS, TARGETS, exclude_ids=exclude)) == [2, 1, 4]


def test_ties_are_counted_apart_and_never_for_the_target() -> None:
    query = torch.tensor([[0.5, 0.5, 0.1], [1.0, 1.0, 1.0]])
    targets = torch.tensor([0, 2])
    ranks = target_ranks(query, torch.eye(3), targets)
    assert ranks.higher.tolist() == [0, 0] and ranks.tied.tolist() == [1, 2]
    assert ranks.expected().tolist() == [1.5, 2.0]
    assert ranks.with_ties("pessimistic").expected().tolist() == [2.0, 3.0]
    m = topk_metrics(ranks, ks=(1, 2, 3))
    assert m["top_1_accuracy"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["top_2_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["top_3_accuracy"] == 1.0
    assert m["mrr"] == pytest.approx(((1 + 1 / 2) / 2 + (1 + 1 / 2 + 1 / 3) / 3) / 2)
    assert m["ndcg@2"] == pytest.approx(((1 + 1 / math.log2(3)) / 2 + (1 + 1 / math.log2(3)) / 3) / 2)
    p = topk_metrics(ranks, ks=(1, 2, 3), ties="pessimistic")
    assert (p["top_1_accuracy"], p["top_2_accuracy"], p["top_3_accuracy"]) == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="ties"):
        topk_metrics(ranks, ties="optimistic")  # type: ignore[arg-type]


def test_random_tie_metrics_equal_the_average_over_every_tie_order() -> None:
    # 2 strictly higher, 3 tied others: rank uniform on 3..6
    ranks = TargetRanks(torch.tensor([2]), torch.tensor([3]))
    orders = torch.tensor([3, 4, 5, 6])
    for k in (1, 3, 4, 6, 7):
        assert topk_metrics(ranks, ks=(k,)) == pytest.approx(
            {key: sum(topk_metrics(torch.tensor([r]), ks=(k,))[key] for r in orders.tolist()) / 4
             for key in topk_metrics(orders[:1], ks=(k,))})


def test_one_score_for_every_item_is_worth_one_over_n() -> None:
    """field-01: 20 items that all tie (a user with no signal) give 1/20 top-1, not 1.0."""
    num_items = 20
    query = torch.ones(4, 1)
    candidates = torch.full((num_items, 1), 3.0)
    ranks = target_ranks(query, candidates, torch.tensor([0, 7, 13, 19]))
    m = topk_metrics(ranks, ks=(1, 5, 10, 50, 100))
    assert m["top_1_accuracy"] == pytest.approx(0.05)
    assert m["top_5_accuracy"] == pytest.approx(0.25)
    assert m["top_10_accuracy"] == pytest.approx(0.50)
    assert round(m["ndcg@10"], 4) == 0.2272
    assert round(m["mrr"], 4) == 0.1799
    assert m["top_50_accuracy"] == m["top_100_accuracy"] == 1.0  # K beyond the catalogue: every target is inside
    pessimistic = topk_metrics(ranks, ks=(1, 5, 10), ties="pessimistic")
    assert pessimistic["top_1_accuracy"] == pessimistic["top_10_accuracy"] == pessimistic["ndcg@10"] == 0.0


def test_rank_targets_scores_each_chunk_once_for_every_protocol() -> None:
    """Memory bound: no chunk holds more than score_budget scores; exclusions are built per chunk."""
    query, candidates, targets, lists = _random_case(3, 50, 12)
    exclude = CSR.from_lists(lists)
    scored, excluded = [], []

    def scores(start, stop):
        scored.append((start, stop))
        return query[start:stop] @ candidates.T

    def exclusions(start, stop):
        excluded.append((start, stop))
        return exclude.rows(slice(start, stop))

    got = rank_targets(scores, targets, 12, protocols={"all": None, "seen": exclusions}, score_budget=12 * 7)
    assert scored == excluded == [(s, min(s + 7, 50)) for s in range(0, 50, 7)]
    assert torch.equal(got["seen"].higher, target_ranks(query, candidates, targets, exclude_ids=lists).higher)
    assert torch.equal(got["all"].higher, target_ranks(query, candidates, targets).higher)


@pytest.mark.parametrize("seed", range(5))
def test_ranks_agree_with_a_naive_full_sort(seed: int) -> None:
    query, candidates, targets, lists = _random_case(seed, 23, 17)
    expected = _naive_ranks(query, candidates, targets, lists)
    got = target_ranks(query, candidates, targets, exclude_ids=lists, chunk_size=5)
    assert _untied(got) == expected.tolist()
    assert _untied(target_ranks(query, candidates, targets)) == _naive_ranks(query, candidates, targets).tolist()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_queries=st.integers(1, 30),
    num_items=st.integers(1, 20),
    chunk_size=st.integers(1, 35),
)
def test_chunked_equals_unchunked(seed: int, num_queries: int, num_items: int, chunk_size: int) -> None:
    query, candidates, targets, lists = _random_case(seed, num_queries, num_items)
    whole = target_ranks(query, candidates, targets, exclude_ids=lists, chunk_size=num_queries)
    chunked = target_ranks(query, candidates, targets, exclude_ids=lists, chunk_size=chunk_size)
    assert torch.equal(whole.higher, chunked.higher) and torch.equal(whole.tied, chunked.tied)
    assert bool(((whole.higher + whole.tied) < num_items).all())


def test_ranks_follow_the_query_dtype() -> None:
    query, candidates, targets, _ = _random_case(0, 6, 9)
    assert torch.equal(target_ranks(query.double(), candidates.double(), targets).higher,
                       target_ranks(query, candidates, targets).higher)


def test_ranks_accept_tensors_that_track_gradients() -> None:
    query = SCORES.clone().requires_grad_(True)
    assert _untied(target_ranks(query, ITEMS, TARGETS, exclude_ids=[[0], [], []])) == [2, 1, 5]


def test_rank_inputs_are_checked() -> None:
    with pytest.raises(TowerrecError, match=r"targets\[2\] = 5 is not one of the catalogue positions \[0, 5\)"):
        target_ranks(SCORES, ITEMS, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="2 lists but there are 3 queries"):
        target_ranks(SCORES, ITEMS, TARGETS, exclude_ids=[[0], [1]])
    with pytest.raises(TypeError, match="not a CSR of catalogue positions"):
        target_ranks(SCORES, ITEMS, TARGETS, exclude_ids=CSR.from_lists([[0], [], []]))
    with pytest.raises(TowerrecError, match="NaN"):
        target_ranks(SCORES * math.nan, ITEMS, TARGETS)
    with pytest.raises(ValueError, match="shape"):
        target_ranks(SCORES, ITEMS, TARGETS[:2])


# -- metrics ----------------------------------------------------------------------
def test_topk_metrics_hand_computed() -> None:
    m = topk_metrics(torch.tensor([3, 1, 5]), ks=(1, 3, 5))
    assert m["top_1_accuracy"] == pytest.approx(1 / 3)
    assert m["top_3_accuracy"] == pytest.approx(2 / 3)
    assert m["top_5_accuracy"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1) / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(4) + 1 + 1 / math.log2(6)) / 3)
    assert m["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 5) / 3)


def test_topk_metrics_default_keys() -> None:
    keys = set(topk_metrics(torch.tensor([1, 2])))
    assert {f"top_{k}_accuracy" for k in (1, 5, 10, 50, 100)} <= keys
    assert {f"ndcg@{k}" for k in (1, 5, 10, 50, 100)} <= keys and "mrr" in keys


def test_topk_metrics_reject_empty_ranks_and_bad_k() -> None:
    with pytest.raises(TowerrecError, match="no queries"):
        topk_metrics(torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="positive integer"):
        topk_metrics(torch.tensor([1]), ks=(0,))


def test_user_recall_averages_over_users_not_interactions() -> None:
    ranks = torch.tensor([1, 20, 3])
    users = torch.tensor([7, 7, 9])
    assert user_recall_at_k(ranks, users, ks=(10,)) == {"recall@10": pytest.approx(0.75)}  # (1/2 + 1) / 2
    assert topk_metrics(ranks, ks=(10,))["top_10_accuracy"] == pytest.approx(2 / 3)
    # numpy arrays and lists, string user ids
    assert user_recall_at_k(np.array([1, 20, 3]), ["u7", "u7", "u9"], ks=(10,)) == {"recall@10": pytest.approx(0.75)}
    assert topk_metrics([1, 20, 3], ks=(1, 10)) == topk_metrics(ranks, ks=(1, 10))
    with pytest.raises(ValueError, match=r"user_ids must have shape \[3\]"):
        user_recall_at_k(ranks, [7, 7], ks=(10,))
    with pytest.raises(ValueError, match=r"ranks must be 1-D"):
        topk_metrics([[1], [2]])


def test_evaluate_retrieval_combines_ranks_and_metrics() -> None:
    exclude = [[0], [], [0, 4]]
    metrics = evaluate_retrieval(SCORES, ITEMS, TARGETS, exclude_ids=exclude, ks=(1, 2), user_ids=torch.tensor([1, 1, 2]))
    expected = topk_metrics(torch.tensor([2, 1, 4]), ks=(1, 2))
    expected.update({"recall@1": 0.25, "recall@2": 0.5})
    assert metrics == pytest.approx(expected)
    # the same with numpy arrays and plain lists (string user ids too)
    assert evaluate_retrieval(SCORES.numpy(), ITEMS.tolist(), TARGETS.tolist(), exclude_ids=[np.array([0]), [], (0, 4)],
                              ks=(1, 2), user_ids=["u1", "u1", "u2"]) == pytest.approx(expected)


def test_targets_and_exclusions_are_item_ids_when_candidate_ids_are_given() -> None:
    """Issue 14: ids [10, 20, 30, 40, 50] at positions 0..4; excluding id 10 removes position 0, not 10 or 1."""
    ids = [10, 20, 30, 40, 50]
    ranks = target_ranks(SCORES, ITEMS, [30, 20, 10], candidate_ids=ids, exclude_ids=[[10], [], [10, 50, 7]])
    assert _untied(ranks) == [2, 1, 4]  # the same as positions [[0], [], [0, 4]]; unknown id 7 is ignored
    assert _untied(target_ranks(SCORES, ITEMS, [30, 20, 10], candidate_ids=ids, exclude_ids=[[1], [0], [4]])) == [3, 1, 5]
    names = ["a", "b", "c", "d", "e"]
    ranks = target_ranks(SCORES, ITEMS, np.array(["c", "b", "a"]), candidate_ids=names, exclude_ids=[["a"], [], ["a", "e"]])
    assert _untied(ranks) == [2, 1, 4]
    with pytest.raises(TowerrecError, match=r"targets\[1\] = 99 is not one of the candidate_ids"):
        target_ranks(SCORES, ITEMS, [30, 99, 10], candidate_ids=ids)
    with pytest.raises(TypeError, match="integers, got 'a'"):
        target_ranks(SCORES, ITEMS, [30, 20, 10], candidate_ids=ids, exclude_ids=[["a"], [], []])
    with pytest.raises(TowerrecError, match="unique"):
        target_ranks(SCORES, ITEMS, [30, 20, 10], candidate_ids=[10, 10, 30, 40, 50])


@pytest.mark.parametrize(
    ("query", "targets", "error", "message"),
    [
        ([[0.9, 0.1, 0.5, 0.3, 0.7], [0.2]], [2, 1], ValueError, "query is ragged: row 1 has 1 values, row 0 has 5"),
        (SCORES, [[2], [1], [0]], ValueError, r"targets must be 1-D \[Q\]"),
        (SCORES, [2.5, 1, 0], TypeError, "targets must hold integers"),
        (SCORES, "abc", TypeError, "targets must be a tensor, a numpy array or a list"),
        ([["x"] * 5] * 3, TARGETS, TypeError, "query must hold numbers"),
    ],
)
def test_array_inputs_are_checked(query, targets, error, message) -> None:
    with pytest.raises(error, match=message):
        target_ranks(query, ITEMS, targets)


# -- CSR --------------------------------------------------------------------------
def test_csr_from_pairs_matches_from_lists() -> None:
    rows = np.array([2, 0, 2, 0, 3])
    cols = np.array([5, 1, 6, 2, 0])
    csr = CSR.from_pairs(rows, cols, num_rows=5)
    reference = CSR.from_lists([[1, 2], [], [5, 6], [0], []])
    assert torch.equal(csr.indptr, reference.indptr) and torch.equal(csr.indices, reference.indices)
    from_arrays = CSR.from_lists([np.array([1, 2]), np.array([], dtype=np.int64), [5, 6], (0,), []])
    assert torch.equal(from_arrays.indices, reference.indices) and from_arrays.indices.dtype == torch.int64
    with pytest.raises(ValueError, match="row indices"):
        CSR.from_pairs(np.array([5]), np.array([0]), num_rows=5)


def test_csr_rows_slice_is_rebased() -> None:
    part = CSR.from_lists([[1, 2], [], [5, 6], [0]]).rows(slice(1, 3))
    assert part.indptr.tolist() == [0, 0, 2] and part.indices.tolist() == [5, 6]
    assert CSR.from_lists([[1]]).rows(slice(1, 1)).num_rows == 0


def test_csr_masked_fill_writes_each_row_its_own_items() -> None:
    scores = torch.zeros(3, 4)
    CSR.from_lists([[1, 1, 3], [], [0]]).masked_fill_(scores, -1.0)
    assert scores.tolist() == [[0, -1, 0, -1], [0, 0, 0, 0], [-1, 0, 0, 0]]


def test_csr_rejects_inconsistent_offsets() -> None:
    with pytest.raises(ValueError, match="indptr"):
        CSR(torch.tensor([0, 3]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="indptr"):
        CSR(torch.tensor([0, 2, 1, 2]), torch.tensor([1, 2]))
