"""Per-user lists of rated items for listwise and pairwise ranking losses.

The idea of TFRS's listwise tutorial (``tensorflow_recommenders.examples.movielens.
sample_listwise``): for every user, draw ``lists_per_user`` lists, each of
``list_size`` of the user's rated items drawn WITHOUT replacement (lists drawn
independently, so two lists may share items), keeping each item's rating as its
label; users with fewer than ``list_size`` ratings are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class ListSample:
    """Sampled lists: row l is one list of ``list_size`` items rated by ``users[l]``.

    Attributes:
        users: [L] user id of each list (the input's dtype).
        items: [L, list_size] item ids (the input's dtype), distinct within a row, in random order.
        labels: [L, list_size] float32 label (rating) of each item.
        num_skipped_users: users left out because they rated fewer than ``list_size`` items.
    """

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    num_skipped_users: int

    def __len__(self) -> int:
        """The number of lists L."""
        return int(self.users.shape[0])


def sample_lists(user_ids: Any, item_ids: Any, labels: Any, *, lists_per_user: int, list_size: int,
                 seed: int = 0) -> ListSample:
    """Draws ``lists_per_user`` lists of ``list_size`` distinct rated rows per user (TFRS's ``sample_listwise``).

    Each list is a uniform random subset of the user's rows (ratings), in random
    order; lists are independent. Users come out in ascending id order, each
    user's lists together. Deterministic for a ``seed`` (numpy ``default_rng``);
    the draws differ from TFRS's (``RandomState.choice``), the distribution is the same.

    Args:
        user_ids: [n] user of each rating (ints or strings; tensor, array or list).
        item_ids: [n] item of each rating.
        labels: [n] rating (or other label) of each row; must be finite.
        lists_per_user: lists per qualifying user (>= 1).
        list_size: items per list (>= 1); users with fewer rows are skipped and counted.
        seed: random seed.
    Returns:
        a :class:`ListSample` with ``lists_per_user * (qualifying users)`` lists.
    Raises:
        ValueError: lengths differ, inputs empty or not 1-D, NaN/inf labels,
            lists_per_user or list_size < 1, or no user has ``list_size`` ratings.
    """
    for value, name in ((lists_per_user, "lists_per_user"), (list_size, "list_size")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    users = _column(user_ids, "user_ids")
    items = _column(item_ids, "item_ids")
    ratings = _column(labels, "labels")
    if not (users.shape[0] == items.shape[0] == ratings.shape[0]):
        raise ValueError(f"user_ids, item_ids and labels must have one length, got "
                         f"{users.shape[0]}, {items.shape[0]}, {ratings.shape[0]}")
    if users.shape[0] == 0:
        raise ValueError("no ratings to sample lists from")
    if ratings.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numbers, got {ratings.dtype} values")
    ratings = ratings.astype(np.float32)
    if not np.isfinite(ratings).all():
        raise ValueError("labels hold NaN or inf values")

    unique_users, user_index, counts = np.unique(users, return_inverse=True, return_counts=True)
    user_index = user_index.reshape(-1)
    qualifying = np.flatnonzero(counts >= list_size)
    if qualifying.size == 0:
        raise ValueError(f"no user has list_size={list_size} ratings (the most any user has is {int(counts.max())})")
    rows_by_user = np.argsort(user_index, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)))
    rng = np.random.default_rng(seed)
    picked = []
    for u in qualifying:
        rows = rows_by_user[starts[u]:starts[u + 1]]
        # a random permutation per list, keep its first list_size: a uniform subset in random order
        keys = rng.random((lists_per_user, rows.size))
        picked.append(rows[np.argsort(keys, axis=1)[:, :list_size]])
    chosen = np.concatenate(picked, axis=0)
    return ListSample(
        users=np.repeat(unique_users[qualifying], lists_per_user),
        items=items[chosen],
        labels=ratings[chosen],
        num_skipped_users=int(unique_users.size - qualifying.size),
    )


def _column(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    elif isinstance(value, (str, bytes)) or not (isinstance(value, Sequence) or hasattr(value, "__array__")):
        raise ValueError(f"{name} must be a tensor, an array (numpy, a DataFrame column) or a list, "
                         f"got {type(value).__name__}")
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n], got shape {list(array.shape)}")
    return array
