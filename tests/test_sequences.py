"""Sequence examples follow the TFRS tutorial's protocol exactly (checked against a plain reference)."""

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from towerrec.data.sequences import build_sequence_examples
from towerrec.errors import ConfigError, DataError

SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}


def _frame(rows):
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def _all(df, **options):
    train, test = build_sequence_examples(df, train_fraction=1.0, **options)
    assert test.height == 0
    return train.sort("user_id", "position")


def _reference(df, min_rating=2.0, min_len=3, max_ctx=10):
    """The TFRS example generator, loop for loop (tensorflow_recommenders' example_generation_movielens)."""
    timelines = {}
    for user, item, rating, ts in df.iter_rows():
        if min_rating is None or rating is None or rating >= min_rating:
            timelines.setdefault(user, []).append((ts, item))
    out = set()
    for user, events in timelines.items():
        events.sort(key=lambda e: e[0])  # stable, as TFRS's list.sort
        items = [item for _, item in events]
        if len(items) < min_len:
            continue
        for i in range(1, len(items)):
            out.add((user, tuple(items[max(0, i - max_ctx) : i]), items[i], i))
    return out


def _as_set(examples):
    rows = examples.iter_rows(named=True)
    return {(r["user_id"], tuple(r["context"]), r["label_item_id"], r["position"]) for r in rows}


def test_hand_computed_case():
    df = _frame(
        [
            (1, 10, 5.0, 4), (1, 11, 1.0, 1), (1, 12, 4.0, 2), (1, 13, 4.0, 3),  # 11 filtered (rating 1)
            (2, 20, 5.0, 1), (2, 21, 5.0, 2),  # timeline of 2: skipped
            (3, 30, None, 5), (3, 31, 3.0, 5), (3, 32, 3.0, 5),  # null rating kept; ties keep row order
        ]
    )  # fmt: skip
    out = _all(df, max_context_length=2)
    assert out["user_id"].to_list() == [1, 1, 3, 3]
    assert out["context"].to_list() == [[12], [12, 13], [30], [30, 31]]
    assert out["label_item_id"].to_list() == [13, 10, 31, 32]
    assert out["timestamp"].to_list() == [3, 4, 5, 5]
    assert out["position"].to_list() == [1, 2, 1, 2]


def test_context_is_capped_with_most_recent_last():
    df = _frame([(1, 100 + t, 5.0, t) for t in range(15)])
    last = _all(df).filter(pl.col("position") == 14)
    assert last["context"].to_list() == [list(range(104, 114))]
    assert last["label_item_id"].to_list() == [114]
    assert _all(df)["context"].list.len().max() == 10


def test_min_rating_none_keeps_everything_and_lengths_filter():
    df = _frame([(1, 1, 1.0, 1), (1, 2, 1.0, 2), (1, 3, 1.0, 3)])
    assert _all(df).height == 0  # all below the default min_rating
    assert _all(df, min_rating=None).height == 2
    assert _all(df, min_rating=None, min_timeline_length=4).height == 0


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 5), st.integers(1, 30), st.sampled_from([1.0, 2.0, 4.0, None]), st.integers(0, 9)),
        max_size=80,
    ),
    max_ctx=st.integers(1, 5),
    min_len=st.integers(1, 4),
)
def test_matches_the_tfrs_reference(rows, max_ctx, min_len):
    df = _frame(rows)
    out = _all(df, max_context_length=max_ctx, min_timeline_length=min_len)
    assert _as_set(out) == _reference(df, min_len=min_len, max_ctx=max_ctx)
    assert out.height == len(_reference(df, min_len=min_len, max_ctx=max_ctx))


def test_shuffle_is_seeded_and_split_loses_nothing():
    df = _frame([(u, i, 4.0, i) for u in range(1, 30) for i in range(1, 12)])
    train, test = build_sequence_examples(df, seed=1)
    n = train.height + test.height
    assert n == 29 * 10 and train.height == round(n * 0.9)
    assert pl.concat([train, test]).sort("user_id", "position").equals(_all(df))
    again = build_sequence_examples(df, seed=1)
    assert train.equals(again[0]) and test.equals(again[1])
    assert not train.equals(build_sequence_examples(df, seed=2)[0])


def test_string_ids_and_errors():
    df = _frame([(1, 1, 5.0, 1), (1, 2, 5.0, 2), (1, 3, 5.0, 3)]).with_columns(pl.col("item_id").cast(pl.String))
    out = _all(df)
    assert out.schema["context"] == pl.List(pl.String) and out["context"].to_list() == [["1"], ["1", "2"]]
    with pytest.raises(DataError, match="timestamp"):
        build_sequence_examples(_frame([(1, 1, 5.0, None)]))
    with pytest.raises(ConfigError, match="max_context_length"):
        build_sequence_examples(df, max_context_length=0)
    with pytest.raises(ConfigError, match="train_fraction"):
        build_sequence_examples(df, train_fraction=1.5)
