"""Evaluation protocols: how interactions become train / validation / test.

* ``tfrs-random`` — a seeded shuffle of all interactions, as the TFRS tutorials do.
  Easy to compare with published numbers, but it trains on a user's future.
* ``temporal`` — one global time cut: everything before trains, everything after
  tests. No future leaks into training.
* ``leave-last-out`` — per user, the last event tests and the one before validates.

Every split keeps each input row exactly once (nothing lost, nothing duplicated).
Protocols that order by time need timestamps: a table imported without a
timestamp column raises a :class:`~towerrec.errors.DataError` here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from towerrec.errors import ConfigError, DataError

_ROW = "__towerrec_row"


@dataclass(frozen=True)
class Split:
    """The three parts of a split, each an interactions table; ``validation`` is None when none was asked for.

    ``protocol`` names how it was made (``tfrs-random``, ``temporal``, ``leave-last-out``).
    """

    train: pl.DataFrame
    validation: pl.DataFrame | None
    test: pl.DataFrame
    protocol: str


def split_random(
    interactions: pl.DataFrame,
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.0,
    seed: int = 42,
) -> Split:
    """TFRS-style random split: shuffle rows with ``default_rng(seed).permutation``.

    The first ``1 - test_fraction`` of the shuffled rows train and the rest test;
    validation (a fraction of ALL rows) is the tail of the training portion, so
    the test set is the same with or without validation. Parts keep the
    shuffled order, as ``dataset.shuffle().take()/.skip()`` does in TFRS.
    """
    _check_fractions(test_fraction, validation_fraction)
    n = interactions.height
    order = np.random.default_rng(seed).permutation(n)
    n_train_total = n - round(n * test_fraction)
    n_val = min(round(n * validation_fraction), n_train_total)
    train_end = n_train_total - n_val
    validation = interactions[order[train_end:n_train_total]] if validation_fraction > 0 else None
    return Split(interactions[order[:train_end]], validation, interactions[order[n_train_total:]], "tfrs-random")


def split_temporal(
    interactions: pl.DataFrame,
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.0,
    cut_timestamp: int | None = None,
) -> Split:
    """Global time cut: train strictly before the cut, test at or after it.

    Without ``cut_timestamp`` the cut is the timestamp of the first event of the
    latest ``test_fraction`` of events (in time order). Events tied with a cut go
    to the LATER side, so a part can be slightly larger than its fraction but no
    second is ever split between train and test. Validation, when asked for, is
    the latest ``validation_fraction`` (of all rows) of the events before the test
    cut, with the same tie rule. Parts keep the input row order.
    """
    if cut_timestamp is None:
        _check_fractions(test_fraction, validation_fraction)
    elif not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    ts = _timestamps(interactions, "temporal")
    n = ts.size
    ordered = np.sort(ts, kind="stable")
    if cut_timestamp is None:
        test_cut = _cut_at(ordered, n - round(n * test_fraction))
        before = n - round(n * test_fraction)
    else:
        test_cut = int(cut_timestamp)
        before = int(np.searchsorted(ordered, test_cut, "left"))
    val_cut = _cut_at(ordered, before - round(n * validation_fraction)) if validation_fraction > 0 else test_cut
    val_cut = min(val_cut, test_cut)
    train = interactions.filter(pl.col("timestamp") < val_cut)
    validation = (
        interactions.filter((pl.col("timestamp") >= val_cut) & (pl.col("timestamp") < test_cut))
        if validation_fraction > 0
        else None
    )
    return Split(train, validation, interactions.filter(pl.col("timestamp") >= test_cut), "temporal")


def split_leave_last_out(
    interactions: pl.DataFrame,
    *,
    validation: bool = True,
    min_interactions: int = 3,
) -> Split:
    """Per user, in time order (ties: input row order): last -> test, second-last -> validation.

    Users with fewer than ``min_interactions`` events stay entirely in train (too
    short a history to hold any out). Parts keep the input row order.
    """
    if min_interactions < 1:
        raise ConfigError(f"min_interactions must be at least 1, got {min_interactions}")
    _timestamps(interactions, "leave-last-out")
    from_end = (
        interactions.select("user_id", "timestamp")
        .with_row_index(_ROW)
        .sort(["user_id", "timestamp", _ROW])
        .select(
            _ROW,
            count=pl.len().over("user_id"),
            from_end=pl.len().over("user_id") - 1 - pl.int_range(pl.len()).over("user_id"),
        )
        .sort(_ROW)
    )
    eligible = from_end["count"] >= min_interactions
    rank = from_end["from_end"]
    is_test = eligible & (rank == 0)
    is_val = eligible & (rank == (1 if validation else -1))  # rank is never -1: no validation
    return Split(
        interactions.filter(~(is_test | is_val)),
        interactions.filter(is_val) if validation else None,
        interactions.filter(is_test),
        "leave-last-out",
    )


PROTOCOLS: dict[str, Callable[..., Split]] = {
    "tfrs-random": split_random,
    "temporal": split_temporal,
    "leave-last-out": split_leave_last_out,
}


def make_split(interactions: pl.DataFrame, protocol: str, **options: object) -> Split:
    """Split ``interactions`` (a Dataset's interactions table) by protocol name.

    Protocols: ``tfrs-random`` (:func:`split_random`, the TFRS tutorials'), ``temporal``
    (:func:`split_temporal`, a global time cut) and ``leave-last-out``
    (:func:`split_leave_last_out`, each user's last event); ``options`` are that function's
    keyword arguments, e.g. ``make_split(ds.interactions, "tfrs-random", test_fraction=0.2, seed=42)``.

    Raises:
        ConfigError: an unknown protocol or option (the message lists the valid ones).
        DataError: a time-ordered protocol on interactions without timestamps.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown split protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}",
            hint="tfrs-random reproduces the TFRS tutorials; temporal and leave-last-out do not leak the future",
        )
    func = PROTOCOLS[protocol]
    accepted = [name for name in inspect.signature(func).parameters if name != "interactions"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"split protocol {protocol!r} takes no option(s) {unknown}; it takes {accepted}")
    return func(interactions, **options)


def require_rows(dataset: str, total: int) -> None:
    """Raise :class:`DataError` when a dataset has no interactions at all."""
    if total == 0:
        raise DataError(f"dataset {dataset!r} has no interactions",
                        hint="import or generate a table with at least one (user, item) row")


def require_parts(split: Split, dataset: str, total: int) -> None:
    """Raise :class:`DataError` unless train, test (and validation, when asked for) each hold a row.

    Called before any feature is fitted, so a too-small dataset is one clear line
    (``dataset 'two': the tfrs-random split leaves 0 test interactions (2 in total) ...``),
    not a shape error deep in training.
    """
    require_rows(dataset, total)
    parts = [("train", split.train), ("test", split.test)]
    if split.validation is not None:
        parts.insert(1, ("validation", split.validation))
    for part, frame in parts:
        if frame.height == 0:
            counts = ", ".join(f"{name} {f.height}" for name, f in parts)
            raise DataError(
                f"dataset {dataset!r}: the {split.protocol} split leaves {part} empty ({total} interactions: "
                f"{counts}); training needs at least one in each of {', '.join(name for name, _ in parts)}",
                hint=_EMPTY_HINTS.get((split.protocol, part), _EMPTY_HINTS[split.protocol]),
            )


_EMPTY_HINTS = {
    "tfrs-random": "use more interactions, or change [data] test_fraction / validation_fraction",
    "temporal": "use more interactions spread over time, or change [data] test_fraction / validation_fraction",
    ("temporal", "train"): "every event is at or after the time cut (do all share one timestamp?): "
                           "use timestamps that vary, or split = \"tfrs-random\"",
    "leave-last-out": "leave-last-out holds out only users with at least [data] leave_last_out_min_interactions "
                      "interactions (default 3): use more data, lower it, or another [data] split",
    ("leave-last-out", "train"): "each user needs more interactions than the held-out ones",
}


def _check_fractions(test_fraction: float, validation_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if test_fraction + validation_fraction >= 1.0:
        raise ConfigError(
            f"test_fraction + validation_fraction must be below 1, got {test_fraction} + {validation_fraction}",
            hint="leave some interactions for training",
        )


def _timestamps(interactions: pl.DataFrame, protocol: str) -> np.ndarray:
    """The timestamp column as an array; a clear error when some are missing."""
    if "timestamp" not in interactions.columns:
        raise DataError(f"the {protocol} split needs a 'timestamp' column", field="timestamp")
    missing = interactions["timestamp"].null_count()
    if missing:
        raise DataError(
            f"the {protocol} split orders events by time, but {missing} of {interactions.height} "
            "interactions have no timestamp",
            field="timestamp",
            hint="import the table with --timestamp COLUMN, or use the tfrs-random protocol",
        )
    return interactions["timestamp"].to_numpy()


def _cut_at(ordered: np.ndarray, index: int) -> int:
    """The timestamp of the ``index``-th event in time order; past the end: nothing is after it."""
    if index >= ordered.size:
        return int(ordered[-1]) + 1 if ordered.size else 0
    return int(ordered[max(index, 0)])
