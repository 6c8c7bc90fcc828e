"""Dataset.from_frame: Polars and pandas frames of interactions become a normal, trainable Dataset."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from config_helpers import small_config
from towerrec.data import Dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.data.tables import frame_fingerprint
from towerrec.errors import DataError
from towerrec.runs import train_run
from towerrec.train.prepared import prepare

pd = pytest.importorskip("pandas")


def _interactions() -> dict[str, list]:
    return {"user": [1, 1, 2, 3], "movie": [10, 20, 10, 30], "stars": [4.0, 3.5, 5.0, 1.0],
            "when": [100, 200, 300, 400], "extra": ["x", "y", "z", "w"]}


@pytest.mark.parametrize("make", [pl.DataFrame, pd.DataFrame], ids=["polars", "pandas"])
def test_frames_give_the_towerrec_schema(make) -> None:
    ds = Dataset.from_frame(make(_interactions()), user="user", item="movie", rating="stars", timestamp="when",
                            name="mine")
    assert ds.name == "mine" and ds.meta["source"] == "frame"
    assert ds.interactions.columns == ["user_id", "item_id", "rating", "timestamp"]  # 'extra' is not read
    assert ds.interactions.schema == {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32,
                                      "timestamp": pl.Int64}
    assert ds.interactions["item_id"].to_list() == [10, 20, 10, 30]
    assert ds.interactions["rating"].to_list() == [4.0, 3.5, 5.0, 1.0]
    assert ds.fingerprint == frame_fingerprint(ds.interactions, None, None)
    assert ds.num_users == 3 and ds.num_items == 3


def test_polars_and_pandas_give_the_same_dataset() -> None:
    a = Dataset.from_frame(pl.DataFrame(_interactions()), user="user", item="movie", rating="stars", timestamp="when")
    b = Dataset.from_frame(pd.DataFrame(_interactions()), user="user", item="movie", rating="stars", timestamp="when")
    assert a.interactions.equals(b.interactions) and a.fingerprint == b.fingerprint
    changed = _interactions() | {"stars": [4.0, 3.5, 5.0, 2.0]}
    c = Dataset.from_frame(pl.DataFrame(changed), user="user", item="movie", rating="stars", timestamp="when")
    assert c.fingerprint != a.fingerprint


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([10, 20], "int32", [10, 20]),
        ([10, 20], "uint16", [10, 20]),
        ([10.0, 20.0], "float64", [10, 20]),  # whole-number floats are integer ids
        ([10, None], "Int64", None),  # pandas nullable integers with a gap: a missing id (below)
        (["a", "007"], "object", ["a", "007"]),  # strings stay strings ("007" is not 7)
        (["a", "b"], "category", ["a", "b"]),
    ],
)
def test_pandas_id_dtypes(values, dtype, expected) -> None:
    df = pd.DataFrame({"u": [1, 2], "i": pd.Series(values, dtype=dtype)})
    if expected is None:
        with pytest.raises(DataError, match=r"field 'i': row 1: missing id"):
            Dataset.from_frame(df, user="u", item="i")
        return
    assert Dataset.from_frame(df, user="u", item="i").interactions["item_id"].to_list() == expected


def test_implicit_feedback_and_no_timestamp_give_nulls_that_train() -> None:
    ds = Dataset.from_frame(pl.DataFrame({"u": [1, 2], "i": ["a", "b"]}), user="u", item="i")
    assert ds.interactions["rating"].to_list() == [None, None]
    assert ds.interactions["timestamp"].to_list() == [None, None]
    assert ds.interactions.schema["item_id"] == pl.String


def test_datetime_timestamps_become_epoch_seconds() -> None:
    when = [dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 2, 0, 0, 1)]
    for df in (pd.DataFrame({"u": [1, 2], "i": [1, 2], "t": pd.to_datetime(when)}),
               pl.DataFrame({"u": [1, 2], "i": [1, 2], "t": when}),
               pl.DataFrame({"u": [1, 2], "i": [1, 2], "t": [1577836800.9, 1577923201.2]})):
        ds = Dataset.from_frame(df, user="u", item="i", timestamp="t")
        assert ds.interactions["timestamp"].to_list() == [1577836800, 1577923201]


@pytest.mark.parametrize(
    ("frame", "options", "message"),
    [
        ({"u": [1, 2], "i": [1, 2]}, {"user": "user"}, r"frame: df has no column\(s\) 'user'; its columns are 'u', 'i'"),
        ({"u": [1, 2], "i": [1.0, 2.5]}, {}, r"field 'i': row 1: id 2.5 is not a whole number"),
        ({"u": [1, None, 3], "i": [1, 2, 3]}, {}, r"field 'u': row 1: missing id"),
        ({"u": [1, 2, 3], "i": [1.0, float("nan"), 3.0]}, {}, r"field 'i': row 1: missing id"),
        ({"u": [1, 2], "i": [1.0, float("inf")]}, {}, r"field 'i': row 1: id inf is not a finite number"),
        ({"u": [True, False], "i": [1, 2]}, {}, r"field 'u': Boolean is not an id type"),
        ({"u": [1, 2, 3], "i": [1, 2, 3], "r": [1.0, 2.0, float("nan")]}, {"rating": "r"},
         r"field 'r': row 2: rating nan is not a finite number"),
        ({"u": [1, 2], "i": [1, 2], "r": [float("-inf"), 2.0]}, {"rating": "r"}, r"field 'r': row 0: rating -inf"),
        ({"u": [1, 2], "i": [1, 2], "r": ["good", "bad"]}, {"rating": "r"}, r"field 'r': String is not a rating type"),
        ({"u": [1, 2], "i": [1, 2], "t": [1, None]}, {"timestamp": "t"}, r"field 't': row 1: missing timestamp"),
        ({"u": [1, 2], "i": [1, 2], "t": ["x", "y"]}, {"timestamp": "t"}, r"field 't': String is not a timestamp type"),
        ({"u": [1, 2], "i": [1, 2]}, {"item": "u"}, r"one column is named for two roles"),
        ({"u": [], "i": []}, {}, r"no rows"),
    ],
)
def test_bad_frames_name_column_and_first_bad_row(frame, options, message) -> None:
    kwargs = {"user": "u", "item": "i"} | options
    with pytest.raises(DataError, match=message):
        Dataset.from_frame(pl.DataFrame(frame), **kwargs)


def test_pandas_errors_name_the_row_position() -> None:
    df = pd.DataFrame({"u": ["a", "b", 3], "i": [1, 2, 3]}, index=[7, 8, 9])
    with pytest.raises(DataError, match=r"field 'u': row 2: 3 \(int\) differs in type from row 0 \(str\)"):
        Dataset.from_frame(df, user="u", item="i")
    df = pd.DataFrame({"u": [1, 2, 3], "i": [1, 2, 3], "r": [1.0, np.nan, 2.0]}, index=[7, 8, 9])
    with pytest.raises(DataError, match=r"field 'r': row 1: rating nan is not a finite number"):
        Dataset.from_frame(df, user="u", item="i", rating="r")


def test_not_a_frame_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="df must be a polars or pandas DataFrame, got dict"):
        Dataset.from_frame({"u": [1]}, user="u", item="i")
    with pytest.raises(TypeError, match=r"LazyFrame \(call .collect\(\) first\)"):
        Dataset.from_frame(pl.DataFrame({"u": [1], "i": [1]}).lazy(), user="u", item="i")


def test_side_tables_are_keyed_by_the_id_column() -> None:
    df = pd.DataFrame({"user": [1, 1, 2], "movie": [10, 20, 30]})
    items = pd.DataFrame({"movie": [10, 20, 40], "title": ["Heat (1995)", "Up", "Extra"], "genres": ["A|B", "C", None]})
    users = pl.DataFrame({"user_id": [1, 2], "age": [30.0, None], "gender": ["F", "M"]})
    ds = Dataset.from_frame(df, user="user", item="movie", items=items, users=users)
    by_id = {row["item_id"]: row for row in ds.items.iter_rows(named=True)}
    assert by_id[10]["year"] == 1995 and by_id[10]["genres"] == ["A", "B"] and by_id[40]["title"] == "Extra"
    assert by_id[30]["title"] == "30"  # used in interactions, absent from the item table: kept, no features
    assert ds.users.schema["age"] == pl.Int32 and ds.users["age"].to_list() == [30, None]
    with pytest.raises(DataError, match=r"items, field 'movie': row 1: duplicate id 10"):
        Dataset.from_frame(df, user="user", item="movie", items=pd.DataFrame({"movie": [10, 10]}))
    with pytest.raises(DataError, match=r"items ids are String, the interactions' item_ids are Int64"):
        Dataset.from_frame(df, user="user", item="movie", items=pd.DataFrame({"movie": ["10"]}))
    with pytest.raises(DataError, match=r"items has no column\(s\) 'movie'"):
        Dataset.from_frame(df, user="user", item="movie", items=pd.DataFrame({"id": [10]}))


def test_a_frame_dataset_prepares_and_trains() -> None:
    synthetic = make_synthetic(60, 30, 900, seed=3)
    frame = synthetic.interactions.rename({"user_id": "customer", "item_id": "product"}).to_pandas()
    frame["product"] = frame["product"].astype("float64")  # as pandas stores ids after a merge with gaps
    ds = Dataset.from_frame(frame, user="customer", item="product", rating="rating", timestamp="timestamp")
    assert ds.interactions.equals(synthetic.interactions)
    config = small_config({
        "name": "frame", "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"query_features": ["user_id"], "candidate_features": ["item_id"], "embedding_dim": 8},
        "train": {"epochs": 1, "batch_size": 256, "eval_every": 1}, "eval": {"ks": [1, 10]},
    })  # fmt: skip
    data = prepare(config, ds, progress=False)
    assert data.num_items == 30
    implicit = Dataset.from_frame(frame, user="customer", item="product")
    assert prepare(config, implicit, progress=False).num_items == 30


def test_train_run_accepts_a_frame_dataset(tmp_path) -> None:
    frame = make_synthetic(60, 30, 900, seed=3).interactions.to_pandas()
    ds = Dataset.from_frame(frame, user="user_id", item="item_id")  # implicit, no timestamps
    config = small_config({
        "name": "frame", "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"query_features": ["user_id"], "candidate_features": ["item_id"], "embedding_dim": 8},
        "train": {"epochs": 1, "batch_size": 256, "eval_every": 1}, "eval": {"ks": [1, 10]},
    })  # fmt: skip
    result = train_run(config, runs_root=tmp_path, dataset=ds, progress=False, log=lambda *_: None)
    assert 0.0 <= result.metrics["test"]["seen_excluded"]["top_10_accuracy"] <= 1.0
