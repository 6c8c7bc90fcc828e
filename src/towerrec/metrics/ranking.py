"""Ranking-stage metrics: rating error (RMSE, MAE), AUC, and NDCG@K / MRR over graded lists.

Inputs may be tensors, numpy arrays or lists; everything is computed in float64
numpy and returned as Python floats.

**Tied scores are never rewarded.** A model that gives many candidates the same
score must not gain from the order the sort happens to leave them in (the lesson
of issue 13). AUC counts a tied positive/negative pair as 1/2 (Mann-Whitney);
NDCG and MRR are the EXACT expectations under a uniformly random order of each
group of tied scores, computed in closed form (no sampling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from torch import Tensor

Gain = Literal["exponential", "linear"]


def rmse(predictions: Any, labels: Any, weights: Any = None) -> float:
    """Root mean squared error ``sqrt(sum_i w_i (p_i - y_i)^2 / sum_i w_i)`` (Keras ``RootMeanSquaredError``).

    Args:
        predictions: [n] predicted labels (e.g. ratings).
        labels: [n] true labels.
        weights: optional [n] non-negative weights with a positive sum (a weighted mean).
    Returns:
        the error, in label units (e.g. stars).
    Raises:
        TypeError: not numbers. ValueError: shapes differ, empty, NaN/inf, bad weights.
    """
    errors, w = _errors(predictions, labels, weights)
    return math.sqrt(float(np.sum(w * errors**2) / np.sum(w)))


def mae(predictions: Any, labels: Any, weights: Any = None) -> float:
    """Mean absolute error ``sum_i w_i |p_i - y_i| / sum_i w_i`` (Keras ``MeanAbsoluteError``).

    Args:
        predictions: [n] predicted labels.
        labels: [n] true labels.
        weights: optional [n] non-negative weights with a positive sum.
    Returns:
        the error, in label units.
    Raises:
        TypeError: not numbers. ValueError: shapes differ, empty, NaN/inf, bad weights.
    """
    errors, w = _errors(predictions, labels, weights)
    return float(np.sum(w * np.abs(errors)) / np.sum(w))


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative.

    Computed exactly from tie-averaged ranks (the Mann-Whitney U statistic):
    a positive and a negative with equal scores count 1/2, so constant scores give
    exactly 0.5.

    Args:
        scores: [n] scores (higher: more likely positive).
        labels: [n] binary labels: 0/1 or booleans.
    Returns:
        AUC in [0, 1].
    Raises:
        TypeError: not numbers. ValueError: shapes differ, NaN/inf, labels other than 0/1,
            or only one class present (AUC is undefined).
    """
    s = _vector(scores, "scores")
    y = _vector(labels, "labels")
    _same_length(s, "scores", y, "labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels for auc must be binary (0/1)")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"auc needs both classes, got {positives} positives and {negatives} negatives")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def list_metrics(scores: Any, labels: Any, groups: Any, *, ks: Sequence[int] = (5, 10),
                 gain: Gain = "exponential") -> dict[str, float]:
    """NDCG@K and MRR of each group's rows ranked by score, averaged over groups.

    A group is one list (a user's candidates); ``groups[i]`` names row i's group.
    Within a group rows are ranked by score, highest first.

    - **NDCG@K** (Järvelin & Kekäläinen 2002): ``DCG@K / ideal DCG@K`` with
      ``DCG@K = sum_{r <= K} gain_r / log2(r + 1)``; gain ``2^label - 1``
      (``"exponential"``, TF-Ranking's default) or ``label`` (``"linear"``).
    - **MRR**: the reciprocal rank of the first row carrying the group's highest
      label (with binary labels: the first positive).

    **Ties.** Both are exact expectations under a uniformly random order of tied
    scores: a tie spanning ranks p..q adds its mean gain times the sum of the
    discounts of p..q (truncated at K); for MRR, if the first tie that holds a
    top-label row spans ranks p..p+n-1 and holds m such rows, the expected
    reciprocal rank is ``sum_x P(first of them at x) / (p - 1 + x)`` with
    ``P(first > x) = C(n - x, m) / C(n, m)``.

    Groups whose labels are all 0 (no positive gain) have no ideal ranking: they
    are skipped, for NDCG and MRR alike.

    Args:
        scores: [n] scores.
        labels: [n] graded relevance >= 0 (ratings, clicks).
        groups: [n] integer group (list / user) of each row.
        ks: cut-offs K >= 1 (a K beyond a group's size takes the whole group).
        gain: ``"exponential"`` or ``"linear"``.
    Returns:
        ``{"ndcg@K": ... for each K, "mrr": ...}``, means over the groups with a positive label.
    Raises:
        TypeError: not numbers. ValueError: lengths differ, NaN/inf, negative labels,
            non-integer groups, bad ks or gain, or no group with a positive label.
    """
    s = _vector(scores, "scores")
    y = _vector(labels, "labels")
    g = _vector(groups, "groups")
    _same_length(s, "scores", y, "labels")
    _same_length(s, "scores", g, "groups")
    if s.size == 0:
        raise ValueError("list_metrics needs at least one row")
    if not np.array_equal(g, np.round(g)):
        raise ValueError("groups must hold integers (the list or user of each row)")
    if (y < 0).any():
        raise ValueError("labels must be >= 0 (graded relevance)")
    cutoffs = [int(k) for k in ks]
    if not cutoffs or any(k < 1 or k != kk for k, kk in zip(cutoffs, ks)):
        raise ValueError(f"ks must be integers >= 1, got {list(ks)}")
    if gain not in ("exponential", "linear"):
        raise ValueError(f"gain must be 'exponential' or 'linear', got {gain!r}")
    gains = np.power(2.0, y) - 1.0 if gain == "exponential" else y

    group_index = np.unique(g, return_inverse=True)[1].reshape(-1)
    num_groups = int(group_index.max()) + 1
    # rank rows by (group, score descending); rank within the group, 1-based
    order = np.lexsort((-s, group_index))
    sorted_group, sorted_score, sorted_gain = group_index[order], s[order], gains[order]
    group_start = np.searchsorted(sorted_group, np.arange(num_groups))
    rank = np.arange(s.size) - group_start[sorted_group] + 1
    # tie blocks: runs of equal (group, score)
    new_block = np.ones(s.size, dtype=bool)
    new_block[1:] = (sorted_group[1:] != sorted_group[:-1]) | (sorted_score[1:] != sorted_score[:-1])
    block = np.cumsum(new_block) - 1
    block_mean_gain = np.bincount(block, weights=sorted_gain) / np.bincount(block)
    expected_gain = block_mean_gain[block]
    discount = 1.0 / np.log2(rank + 1.0)

    # ideal order: rows by (group, gain descending)
    ideal_gain = gains[np.lexsort((-gains, group_index))]
    has_gain = np.bincount(group_index, weights=gains, minlength=num_groups) > 0
    if not has_gain.any():
        raise ValueError("no group has a positive label: NDCG and MRR are undefined")

    result: dict[str, float] = {}
    for k in cutoffs:
        inside = rank <= k
        dcg = np.bincount(sorted_group, weights=expected_gain * discount * inside, minlength=num_groups)
        ideal = np.bincount(sorted_group, weights=ideal_gain * discount * inside, minlength=num_groups)
        result[f"ndcg@{k}"] = float(np.mean(dcg[has_gain] / ideal[has_gain]))
    block_start_rank = rank[new_block]
    result["mrr"] = _expected_mrr(sorted_group, y[order], block, block_start_rank, has_gain, num_groups)
    return result


def _expected_mrr(sorted_group: np.ndarray, sorted_label: np.ndarray, block: np.ndarray,
                  block_start_rank: np.ndarray, has_gain: np.ndarray, num_groups: int) -> float:
    """Mean over groups with a positive label of the expected reciprocal rank of the first top-label row."""
    top = np.full(num_groups, -np.inf)
    np.maximum.at(top, sorted_group, sorted_label)
    relevant = sorted_label == top[sorted_group]
    # the first tie block of each group that holds a top-label row
    relevant_rows = np.flatnonzero(relevant)
    first_row = relevant_rows[np.unique(sorted_group[relevant_rows], return_index=True)[1]]
    reciprocal = []
    block_size = np.bincount(block)
    block_relevant = np.bincount(block, weights=relevant.astype(np.float64))
    for row in first_row:
        if not has_gain[sorted_group[row]]:
            continue
        b = block[row]
        n, m = int(block_size[b]), int(block_relevant[b])
        reciprocal.append(_expected_reciprocal_rank(int(block_start_rank[b]), n, m))
    return float(np.mean(reciprocal))


def _expected_reciprocal_rank(start: int, n: int, m: int) -> float:
    """E[1 / (start - 1 + X)], X the first of m marked slots among n shuffled ones (ranks start..start+n-1)."""
    if m == n or n == 1:
        return 1.0 / start
    x = np.arange(1, n - m + 2)
    # survival P(X > x) = C(n - x, m) / C(n, m) = prod_{t=1..x} (n - t + 1 - m) / (n - t + 1)
    survival = np.concatenate(([1.0], np.cumprod((n - x + 1 - m) / (n - x + 1.0))))
    probability = survival[:-1] - survival[1:]
    return float(np.sum(probability / (start - 1 + x)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` ascending, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    new = np.ones(values.size, dtype=bool)
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    tie = np.cumsum(new) - 1
    positions = np.arange(1, values.size + 1, dtype=np.float64)
    mean_rank = np.bincount(tie, weights=positions) / np.bincount(tie)
    ranks = np.empty(values.size)
    ranks[order] = mean_rank[tie]
    return ranks


def _errors(predictions: Any, labels: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _vector(predictions, "predictions")
    y = _vector(labels, "labels")
    _same_length(p, "predictions", y, "labels")
    if p.size == 0:
        raise ValueError("predictions and labels are empty")
    if weights is None:
        return p - y, np.ones_like(p)
    w = _vector(weights, "weights")
    _same_length(p, "predictions", w, "weights")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    return p - y, w


def _vector(value: Any, name: str) -> np.ndarray:
    """``value`` (tensor, array or list) as a finite 1-D float64 array."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    elif isinstance(value, (str, bytes)) or not isinstance(value, (np.ndarray, Sequence)):
        raise TypeError(f"{name} must be a tensor, a numpy array or a list, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} must be a flat list of numbers ({error})") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got {array.dtype} values")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n], got shape {list(array.shape)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} hold NaN or inf values")
    return array


def _same_length(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} has {a.size} values but {b_name} has {b.size}")
