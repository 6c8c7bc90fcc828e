"""sample_lists: TFRS's sample_listwise idea (per-user lists of rated items, drawn without replacement)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import towerrec as tr
from towerrec.data import ListSample, sample_lists


def _ml100k() -> Path | None:
    """$ML100K, else the first shared/datasets/ml-100k above this file (worktrees sit deeper than the repo)."""
    if os.environ.get("ML100K"):
        return Path(os.environ["ML100K"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets" / "ml-100k"
        if candidate.is_dir():
            return candidate
    return None


REAL_100K = _ml100k()


def _ratings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # user 10 rated 5 items, user 20 rated 3, user 30 rated 1 (skipped for list_size >= 2)
    users = np.array([10, 20, 10, 30, 10, 20, 10, 20, 10])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    labels = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 4.0, 1.0, 2.0])
    return users, items, labels


def test_lists_come_from_each_users_own_ratings_without_replacement() -> None:
    users, items, labels = _ratings()
    sample = sample_lists(users, items, labels, lists_per_user=4, list_size=3, seed=1)
    assert isinstance(sample, ListSample)
    assert len(sample) == 8 and sample.items.shape == (8, 3) and sample.labels.shape == (8, 3)
    assert sample.labels.dtype == np.float32 and sample.num_skipped_users == 1
    assert sample.users.tolist() == [10] * 4 + [20] * 4
    rating = {(u, i): y for u, i, y in zip(users, items, labels)}
    for user, row_items, row_labels in zip(sample.users, sample.items, sample.labels):
        assert len(set(row_items.tolist())) == 3  # no item twice in one list
        assert [rating[(user, i)] for i in row_items] == row_labels.tolist()  # labels travel with their items
    # user 20 has exactly 3 ratings: every list is a permutation of them
    assert all(sorted(row) == [2, 6, 8] for row in sample.items[4:].tolist())


def test_deterministic_for_a_seed_and_varied_across_lists() -> None:
    users, items, labels = _ratings()
    a = sample_lists(users, items, labels, lists_per_user=6, list_size=2, seed=3)
    b = sample_lists(users.tolist(), torch.tensor(items), labels.tolist(), lists_per_user=6, list_size=2, seed=3)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.labels, b.labels)
    c = sample_lists(users, items, labels, lists_per_user=6, list_size=2, seed=4)
    assert not np.array_equal(a.items, c.items)
    assert len({tuple(row) for row in a.items[:6].tolist()}) > 1  # lists are drawn independently


def test_subsets_are_uniform() -> None:
    users = np.zeros(4, dtype=np.int64)
    sample = sample_lists(users, np.arange(4), np.ones(4), lists_per_user=6000, list_size=2, seed=0)
    pairs = [tuple(sorted(row)) for row in sample.items.tolist()]
    counts = np.array([pairs.count(p) for p in sorted(set(pairs))])
    assert len(counts) == 6 and np.all(np.abs(counts / 6000 - 1 / 6) < 0.02)
    first = np.bincount(sample.items[:, 0], minlength=4) / 6000  # positions are shuffled too
    assert np.all(np.abs(first - 0.25) < 0.03)


def test_string_ids_keep_their_type() -> None:
    sample = sample_lists(["b", "a", "b", "a"], ["x", "y", "z", "w"], [1, 2, 3, 4], lists_per_user=1, list_size=2)
    assert sample.users.tolist() == ["a", "b"]
    assert sorted(sample.items[0].tolist()) == ["w", "y"] and sorted(sample.labels[0].tolist()) == [2.0, 4.0]


def test_bad_input_raises_clear_errors() -> None:
    users, items, labels = _ratings()
    with pytest.raises(ValueError, match="no user has list_size=6 ratings \\(the most any user has is 5\\)"):
        sample_lists(users, items, labels, lists_per_user=1, list_size=6)
    with pytest.raises(ValueError, match="list_size must be an integer >= 1"):
        sample_lists(users, items, labels, lists_per_user=1, list_size=0)
    with pytest.raises(ValueError, match="lists_per_user must be an integer >= 1"):
        sample_lists(users, items, labels, lists_per_user=0, list_size=2)
    with pytest.raises(ValueError, match="one length"):
        sample_lists(users, items[:-1], labels, lists_per_user=1, list_size=2)
    bad = labels.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="labels hold NaN or inf"):
        sample_lists(users, items, bad, lists_per_user=1, list_size=2)
    with pytest.raises(ValueError, match="no ratings"):
        sample_lists([], [], [], lists_per_user=1, list_size=2)
    assert tr.sample_lists is sample_lists


@pytest.mark.realdata
@pytest.mark.skipif(REAL_100K is None, reason="shared/datasets/ml-100k is absent")
def test_movielens_100k_lists_like_the_tfrs_tutorial() -> None:
    data = np.loadtxt(REAL_100K / "u.data", dtype=np.int64)
    sample = sample_lists(data[:, 0], data[:, 1], data[:, 2], lists_per_user=50, list_size=5, seed=42)
    assert len(sample) == 943 * 50 and sample.num_skipped_users == 0  # every ML-100K user rated >= 20 films
    big = sample_lists(data[:, 0], data[:, 1], data[:, 2], lists_per_user=1, list_size=100, seed=42)
    assert big.num_skipped_users + len(big) == 943 and big.num_skipped_users > 0
