"""Interaction filters applied before a split: minimum counts per user and item, and k-core.

``[data] min_user_interactions`` drops users with fewer interactions,
``min_item_interactions`` drops items with fewer (they also leave the catalogue),
and ``k_core = k`` repeats both with ``k`` until every remaining user and item has at
least ``k`` interactions (the usual "k-core" of the user-item graph). Counts are of
rows, so a repeated (user, item) row counts twice (see ``data import --dedupe``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from towerrec.data.tables import Dataset
from towerrec.errors import DataError


@dataclass(frozen=True)
class FilterReport:
    """What a filter removed: interactions, users and items (before -> after)."""

    interactions: tuple[int, int]
    users: tuple[int, int]
    items: tuple[int, int]

    def describe(self) -> str:
        """One line: interactions, users and items before -> after the filters."""
        parts = [f"{name} {before:,} -> {after:,}" for name, (before, after) in
                 (("interactions", self.interactions), ("users", self.users), ("items", self.items))]
        return ", ".join(parts)


def filter_interactions(
    dataset: Dataset,
    *,
    min_user_interactions: int | None = None,
    min_item_interactions: int | None = None,
    k_core: int | None = None,
) -> tuple[Dataset, FilterReport | None]:
    """``dataset`` without the users and items below the thresholds; ``None`` report when no filter is set.

    Items dropped by an item threshold (or the k-core) also leave the item table.

    Raises:
        DataError: the filters leave no interaction (the thresholds are named).
    """
    if min_user_interactions is None and min_item_interactions is None and k_core is None:
        return dataset, None
    inter = dataset.interactions
    before = (inter.height, inter["user_id"].n_unique(), inter["item_id"].n_unique())
    min_user = max(min_user_interactions or 1, k_core or 1)
    min_item = max(min_item_interactions or 1, k_core or 1)
    while True:
        kept = _at_least(_at_least(inter, "user_id", min_user), "item_id", min_item)
        if kept.height == inter.height or k_core is None:
            inter = kept
            break
        inter = kept
    if inter.height == 0:
        settings = ", ".join(f"{name} = {value}" for name, value in (
            ("min_user_interactions", min_user_interactions), ("min_item_interactions", min_item_interactions),
            ("k_core", k_core)) if value is not None)
        raise DataError(f"dataset {dataset.name!r}: the [data] filters ({settings}) leave no interactions "
                        f"(of {before[0]:,})", hint="lower the thresholds")
    items = dataset.items
    if items is not None and (min_item_interactions is not None or k_core is not None):
        items = items.filter(pl.col("item_id").is_in(inter["item_id"].unique().implode()))
    after = (inter.height, inter["user_id"].n_unique(), inter["item_id"].n_unique())
    report = FilterReport(*zip(before, after))
    return replace(dataset, interactions=inter, items=items), report


def _at_least(frame: pl.DataFrame, column: str, minimum: int) -> pl.DataFrame:
    if minimum <= 1:
        return frame
    return frame.filter(pl.len().over(column) >= minimum)
