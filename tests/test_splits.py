"""Split protocols: nothing lost or duplicated, deterministic, and no future leaks where promised."""

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from towerrec.data.splits import (
    PROTOCOLS,
    Split,
    make_split,
    split_leave_last_out,
    split_random,
    split_temporal,
)
from towerrec.errors import ConfigError, DataError

SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}


def _frame(rows):
    df = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    return df.with_row_index("row")  # a unique tag per input row: proves each row lands exactly once


interactions = st.lists(
    st.tuples(st.integers(1, 6), st.integers(1, 8), st.sampled_from([1.0, 3.0, 5.0]), st.integers(0, 15)),
    max_size=60,
).map(_frame)

OPTIONS = {
    "tfrs-random": [{}, {"validation_fraction": 0.1, "seed": 3}],
    "temporal": [{}, {"validation_fraction": 0.2}, {"cut_timestamp": 8}],
    "leave-last-out": [{}, {"validation": False, "min_interactions": 1}],
}
CASES = [(protocol, options) for protocol, variants in OPTIONS.items() for options in variants]


def _parts(split: Split) -> list[pl.DataFrame]:
    return [p for p in (split.train, split.validation, split.test) if p is not None]


@settings(max_examples=60, deadline=None)
@given(df=interactions)
@pytest.mark.parametrize(("protocol", "options"), CASES)
def test_no_interaction_lost_or_duplicated(protocol, options, df):
    split = make_split(df, protocol, **options)
    assert split.protocol == protocol
    combined = pl.concat(_parts(split))
    assert sorted(combined["row"].to_list()) == list(range(df.height))
    assert combined.sort(combined.columns).equals(df.sort(df.columns))
    assert all(p.schema == df.schema for p in _parts(split))


@settings(max_examples=60, deadline=None)
@given(df=interactions)
def test_leave_last_out_never_trains_on_the_future(df):
    split = split_leave_last_out(df)
    test = {r["user_id"]: r for r in split.test.iter_rows(named=True)}
    val = {r["user_id"]: r for r in split.validation.iter_rows(named=True)}
    key = lambda r: (r["timestamp"], r["row"])  # noqa: E731  time, then input order
    for r in split.train.iter_rows(named=True):
        if r["user_id"] in test:
            assert key(r) < key(val[r["user_id"]]) < key(test[r["user_id"]])
    counts = df.group_by("user_id").len()
    assert set(test) == set(counts.filter(pl.col("len") >= 3)["user_id"].to_list())
    assert set(val) == set(test)


@settings(max_examples=60, deadline=None)
@given(df=interactions, test_fraction=st.floats(0.05, 0.6), validation_fraction=st.floats(0.0, 0.3))
def test_temporal_cut_is_clean(df, test_fraction, validation_fraction):
    split = split_temporal(df, test_fraction=test_fraction, validation_fraction=validation_fraction)
    ordered = [split.train] + ([split.validation] if split.validation is not None else []) + [split.test]
    for earlier, later in zip(ordered, ordered[1:]):
        if earlier.height and later.height:
            assert earlier["timestamp"].max() < later["timestamp"].min()


def test_temporal_ties_at_the_cut_go_later():
    df = _frame([(1, 1, 1.0, t) for t in (1, 2, 3, 3, 3)])
    split = split_temporal(df, test_fraction=0.2)  # the cut lands inside a run of equal timestamps
    assert split.train["timestamp"].to_list() == [1, 2]
    assert split.test["timestamp"].to_list() == [3, 3, 3]
    assert split_temporal(df, cut_timestamp=2).test["timestamp"].to_list() == [2, 3, 3, 3]


def test_leave_last_out_hand_case():
    df = _frame(
        [
            (1, 10, 5.0, 5), (1, 11, 5.0, 1), (1, 12, 5.0, 5), (1, 13, 5.0, 3),  # tie at 5: row order decides
            (2, 20, 5.0, 1), (2, 21, 5.0, 2),  # too short: all train
        ]
    )  # fmt: skip
    split = split_leave_last_out(df)
    assert split.test["item_id"].to_list() == [12]
    assert split.validation["item_id"].to_list() == [10]
    assert split.train["item_id"].to_list() == [11, 13, 20, 21]  # input order kept
    assert split_leave_last_out(df, min_interactions=2).test["item_id"].to_list() == [12, 21]


def test_random_split_is_seeded_and_sized():
    df = _frame([(u % 7 + 1, u % 11 + 1, 3.0, u) for u in range(100)])
    a, b = split_random(df, seed=1), split_random(df, seed=1)
    assert a.train.equals(b.train) and a.test.equals(b.test)
    assert not a.test.equals(split_random(df, seed=2).test)
    assert (a.train.height, a.test.height, a.validation) == (80, 20, None)
    with_val = split_random(df, seed=1, validation_fraction=0.1)
    assert (with_val.train.height, with_val.validation.height) == (70, 10)
    assert with_val.test.equals(a.test)  # asking for validation does not change the test set


@settings(max_examples=30, deadline=None)
@given(df=interactions, seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_split(df, seed):
    a, b = split_random(df, seed=seed, validation_fraction=0.1), split_random(df, seed=seed, validation_fraction=0.1)
    assert all(x.equals(y) for x, y in zip(_parts(a), _parts(b)))


@pytest.mark.parametrize(
    ("test_fraction", "validation_fraction"), [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.2, -0.1), (1.5, 0.0)]
)
def test_bad_fractions_are_config_errors(test_fraction, validation_fraction):
    df = _frame([(1, 1, 1.0, 1)])
    for func in (split_random, split_temporal):
        with pytest.raises(ConfigError, match="fraction"):
            func(df, test_fraction=test_fraction, validation_fraction=validation_fraction)


def test_make_split_rejects_unknown_names_and_options():
    df = _frame([(1, 1, 1.0, 1)])
    with pytest.raises(ConfigError) as err:
        make_split(df, "random")
    assert all(name in str(err.value) for name in PROTOCOLS)
    with pytest.raises(ConfigError, match="seed"):
        make_split(df, "leave-last-out", seed=3)
    with pytest.raises(ConfigError, match="min_interactions"):
        split_leave_last_out(df, min_interactions=0)


@pytest.mark.parametrize("protocol", ["temporal", "leave-last-out"])
def test_time_ordered_protocols_need_timestamps(protocol):
    df = _frame([(1, 1, 1.0, 1), (1, 2, 1.0, None)])
    with pytest.raises(DataError, match="timestamp"):
        make_split(df, protocol)
    make_split(df, "tfrs-random")  # a random split does not need time


def test_empty_input_gives_empty_parts():
    df = _frame([])
    for protocol in PROTOCOLS:
        assert sum(p.height for p in _parts(make_split(df, protocol))) == 0
