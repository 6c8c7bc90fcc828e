"""Next-item examples for sequential retrieval, exactly as the TFRS tutorial builds them.

The TFRS "sequential retrieval" tutorial (its ``example_generation_movielens.py``
with ``--min_rating=2 --max_context_length=10``) keeps ratings >= 2, sorts each
user's timeline by timestamp, skips timelines shorter than 3, and emits one
example per position i >= 1: the previous up-to-10 items as context, item i as
label. All examples are shuffled and cut 90/10. This mirrors it, with these
deliberate differences:

* the shuffle is ``numpy.random.default_rng(seed).permutation`` (TFRS: Python's
  ``random.shuffle``), so the same examples land in train/test with other seeds;
* the context is not padded here (TFRS pads with id 0 at the END); encoding pads;
* null ratings are kept (TFRS data has none); ties in time keep input row order,
  as TFRS's stable ``list.sort`` does; the train size is ``round(n * fraction)``
  like TFRS (Python's round: halves go to the even number).

The protocol leaks a user's future into training (examples of one timeline are in
both parts); :mod:`towerrec.data.splits` offers leakage-free protocols.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from towerrec.errors import ConfigError, DataError

_ROW = "__towerrec_row"


def build_sequence_examples(
    interactions: pl.DataFrame,
    *,
    min_rating: float | None = 2.0,
    min_timeline_length: int = 3,
    max_context_length: int = 10,
    train_fraction: float = 0.9,
    seed: int = 42,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (train, test) example tables.

    Columns: ``user_id``, ``context`` (list of item ids, oldest first, most recent
    last, at most ``max_context_length``), ``label_item_id``, ``timestamp`` (of the
    label event) and ``position`` (the label's 0-based index in the filtered
    timeline, >= 1). ``min_rating=None`` keeps every rating.
    """
    if min_timeline_length < 1:
        raise ConfigError(f"min_timeline_length must be at least 1, got {min_timeline_length}")
    if max_context_length < 1:
        raise ConfigError(f"max_context_length must be at least 1, got {max_context_length}")
    if not 0.0 <= train_fraction <= 1.0:
        raise ConfigError(f"train_fraction must be in [0, 1], got {train_fraction}")
    missing = interactions["timestamp"].null_count()
    if missing:
        raise DataError(
            f"sequence examples order events by time, but {missing} interactions have no timestamp",
            field="timestamp",
            hint="import the table with --timestamp COLUMN",
        )

    events = interactions.select("user_id", "item_id", "rating", "timestamp").with_row_index(_ROW)
    if min_rating is not None:
        events = events.filter(pl.col("rating").is_null() | (pl.col("rating") >= min_rating))
    events = (
        events.sort(["user_id", "timestamp", _ROW])
        .with_columns(
            length=pl.len().over("user_id"),
            position=pl.int_range(pl.len(), dtype=pl.Int64).over("user_id"),
        )
        .filter(pl.col("length") >= min_timeline_length)
    )
    labels = np.nonzero(events["position"].to_numpy() >= 1)[0]
    examples = events[labels].select(
        "user_id",
        context=_windows(events["item_id"], labels, events["position"].to_numpy()[labels], max_context_length),
        label_item_id="item_id",
        timestamp="timestamp",
        position="position",
    )
    shuffled = examples[np.random.default_rng(seed).permutation(examples.height)]
    cut = round(examples.height * train_fraction)
    return shuffled[:cut], shuffled[cut:]


def _windows(items: pl.Series, labels: np.ndarray, positions: np.ndarray, max_length: int) -> pl.Series:
    """For each label row g at timeline position p: ``items[g - min(p, max_length) : g]`` as a list."""
    sizes = np.minimum(positions, max_length)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    starts = np.repeat(labels - sizes, sizes)
    flat = starts + np.arange(offsets[-1]) - np.repeat(offsets[:-1], sizes)
    values = items.gather(flat).to_arrow()
    return pl.Series("context", pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values))
