"""Ranking metrics: RMSE, MAE, AUC and NDCG@K / MRR, hand-computed, with ties never rewarded."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import towerrec as tr
from towerrec.metrics import auc, list_metrics, mae, rmse


def test_rmse_and_mae_plain_and_weighted() -> None:
    predictions, labels = [3.0, 4.0, 1.0], [4.0, 4.0, 3.0]
    assert rmse(predictions, labels) == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert mae(predictions, labels) == pytest.approx((1 + 0 + 2) / 3)
    # weighted means: sum(w e) / sum(w)
    assert rmse(predictions, labels, [1.0, 1.0, 2.0]) == pytest.approx(math.sqrt((1 + 8) / 4))
    assert mae(np.array(predictions), torch.tensor(labels), [0.0, 0.0, 1.0]) == pytest.approx(2.0)
    assert isinstance(rmse(torch.tensor(predictions), labels), float)


def test_rating_errors_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="predictions has 2 values but labels has 3"):
        rmse([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="predictions hold NaN or inf"):
        mae([float("nan")], [1.0])
    with pytest.raises(ValueError, match="empty"):
        rmse([], [])
    with pytest.raises(ValueError, match="weights must be >= 0 with a positive sum"):
        rmse([1.0], [1.0], [0.0])
    with pytest.raises(TypeError, match="labels must hold numbers"):
        rmse([1.0], ["a"])


def test_auc_hand_values_and_ties_count_half() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won 1 + 1 + 0 + 1 of 4
    assert auc([0.9, 0.5, 0.4, 0.1], [1, 0, 1, 0]) == pytest.approx(3 / 4)
    assert auc([1.0, 0.0], [1, 0]) == 1.0 and auc([0.0, 1.0], [1, 0]) == 0.0
    # constant scores: every pair tied, exactly 0.5 (no reward for the sort order)
    assert auc([0.3] * 5, [1, 0, 1, 0, 0]) == pytest.approx(0.5)
    # one tied pair among four: (1 + 0.5 + 1 + 1) / 4
    assert auc(torch.tensor([0.9, 0.5, 0.5, 0.1]), np.array([True, False, True, False])) == pytest.approx(3.5 / 4)


def test_auc_refuses_one_class_and_non_binary_labels() -> None:
    with pytest.raises(ValueError, match="auc needs both classes, got 2 positives and 0 negatives"):
        auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="binary"):
        auc([0.1, 0.2], [2, 0])


def _dcg(gains: list[float], k: int) -> float:
    return sum(g / math.log2(r + 2) for r, g in enumerate(gains[:k]))


def test_ndcg_and_mrr_hand_values_without_ties() -> None:
    scores = [0.9, 0.8, 0.7, 0.1, 0.5, 0.4]
    labels = [0, 2, 1, 1, 0, 1]
    groups = [7, 7, 7, 3, 3, 3]
    out = list_metrics(scores, labels, groups, ks=(1, 2, 10))
    # group 7 ranked labels 0, 2, 1; group 3 ranked 0 (0.5), 1 (0.4), 1 (0.1)
    g7 = [_dcg([0, 3, 1], k) / _dcg([3, 1, 0], k) for k in (1, 2, 10)]
    g3 = [_dcg([0, 1, 1], k) / _dcg([1, 1, 0], k) for k in (1, 2, 10)]
    for k, a, b in zip((1, 2, 10), g7, g3):
        assert out[f"ndcg@{k}"] == pytest.approx((a + b) / 2)
    # MRR: group 7's top label (2) at rank 2; group 3's top label (1) first at rank 2
    assert out["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert set(out) == {"ndcg@1", "ndcg@2", "ndcg@10", "mrr"}


def test_linear_gain() -> None:
    out = list_metrics([3.0, 2.0, 1.0], [1, 3, 0], [0, 0, 0], ks=(3,), gain="linear")
    assert out["ndcg@3"] == pytest.approx(_dcg([1, 3, 0], 3) / _dcg([3, 1, 0], 3))


def _brute_force(scores: list[float], labels: list[float], k: int) -> tuple[float, float]:
    """Mean NDCG@k and RR over every order of the tied scores (all permutations consistent with the scores)."""
    ndcgs, rrs = [], []
    ideal = _dcg(sorted((2**y - 1 for y in labels), reverse=True), k)
    for perm in itertools.permutations(range(len(scores))):
        if any(scores[perm[i]] < scores[perm[i + 1]] for i in range(len(perm) - 1)):
            continue
        ranked = [labels[i] for i in perm]
        ndcgs.append(_dcg([2**y - 1 for y in ranked], k) / ideal)
        rrs.append(1 / (1 + ranked.index(max(labels))))
    return float(np.mean(ndcgs)), float(np.mean(rrs))


@pytest.mark.parametrize("scores,labels", [
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 2]),                 # all tied
    ([0.9, 0.5, 0.5, 0.5, 0.1], [0, 0, 1, 0, 1]),         # a tie spanning ranks 2..4, across k=3
    ([0.7, 0.7, 0.2, 0.2, 0.2], [1, 0, 1, 1, 0]),         # two tie groups, top label in both
    ([1.0, 1.0, 1.0, 0.0, 0.0], [2, 0, 2, 2, 1]),         # several top-label rows inside the first tie
])
def test_tied_scores_get_the_exact_expectation_over_tie_orders(scores: list[float], labels: list[float]) -> None:
    for k in (1, 2, 3, 10):
        expected_ndcg, expected_rr = _brute_force(scores, labels, k)
        out = list_metrics(scores, labels, [0] * len(scores), ks=(k,))
        assert out[f"ndcg@{k}"] == pytest.approx(expected_ndcg, abs=1e-12)
        assert out["mrr"] == pytest.approx(expected_rr, abs=1e-12)


def test_constant_scores_are_not_rewarded_by_row_order() -> None:
    labels = [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # the only relevant row comes first in the input
    constant = list_metrics([1.0] * 10, labels, [0] * 10, ks=(1, 5))
    assert constant["ndcg@1"] == pytest.approx(0.1)  # 1/10 chance of being first
    assert constant["mrr"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    perfect = list_metrics(list(range(10, 0, -1)), labels, [0] * 10, ks=(1, 5))
    assert perfect == {"ndcg@1": 1.0, "ndcg@5": 1.0, "mrr": 1.0}


def test_groups_without_positive_gain_are_skipped() -> None:
    out = list_metrics([0.3, 0.2, 0.9, 0.1], [0, 0, 1, 0], [1, 1, 2, 2], ks=(2,))
    assert out == {"ndcg@2": 1.0, "mrr": 1.0}  # group 1 (all zero) is left out
    with pytest.raises(ValueError, match="no group has a positive label"):
        list_metrics([0.3, 0.2], [0, 0], [1, 1])


def test_list_metrics_take_tensors_arrays_lists_and_unsorted_groups() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.4])
    labels = np.array([1, 0, 1, 0])
    a = list_metrics(scores, labels, [5, 2, 5, 2])
    b = list_metrics([0.1, 0.5, 0.9, 0.4], [1, 1, 0, 0], torch.tensor([5, 5, 2, 2]))
    assert a == b
    assert tr.list_metrics is list_metrics and tr.metrics.auc is auc


def test_list_metrics_bad_input() -> None:
    with pytest.raises(ValueError, match="scores has 2 values but groups has 3"):
        list_metrics([0.1, 0.2], [1, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="labels must be >= 0"):
        list_metrics([0.1, 0.2], [1, -1], [0, 0])
    with pytest.raises(ValueError, match="groups must hold integers"):
        list_metrics([0.1, 0.2], [1, 0], [0.5, 0])
    with pytest.raises(ValueError, match="ks must be integers >= 1"):
        list_metrics([0.1, 0.2], [1, 0], [0, 0], ks=(0,))
    with pytest.raises(ValueError, match="gain must be"):
        list_metrics([0.1, 0.2], [1, 0], [0, 0], gain="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scores hold NaN or inf"):
        list_metrics([float("inf"), 0.2], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="must be 1-D"):
        list_metrics([[0.1, 0.2]], [[1, 0]], [[0, 0]])
