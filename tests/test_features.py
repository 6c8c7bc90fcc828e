"""Feature fitting and encoding on hand-checked tiny tables."""

from __future__ import annotations

import json
import time

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from towerrec.errors import ConfigError, DataError
from towerrec.features import (
    BUILTIN_NAMES,
    FeatureSet,
    FeatureSpec,
    FittedFeatures,
    Vocabulary,
    builtin_feature,
    tokenize,
)
from towerrec.features.text import pad_lists


def interactions(users, items, timestamps) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": pl.Series([4.0] * len(users), dtype=pl.Float32),
            "timestamp": pl.Series(timestamps, dtype=pl.Int64),
        }
    )


TRAIN = interactions([1, 1, 1, 2, 2, 3], [10, 20, 30, 10, 20, 10], [0, 10, 20, 30, 40, 100])
TEST = interactions([1, 4, None], [10, 99, 20], [-5, 500, None])
ITEMS = pl.DataFrame(
    {
        "item_id": [10, 20, 30],
        "title": ["Toy Story (1995)", "Heat (1991)", "Toy Soldiers (1991)"],
        "year": pl.Series([1995, 1991, None], dtype=pl.Int32),
        "genres": [["Animation", "Comedy"], ["Action"], ["Comedy", "Action", "War"]],
    }
)
USERS = pl.DataFrame(
    {
        "user_id": [1, 2, 3, 4],
        "age": pl.Series([20, 30, 40, 50], dtype=pl.Int32),
        "gender": ["M", "F", "M", "F"],
        "occupation": ["a", "b", "a", "c"],
        "zip": ["12345", "98765", "1A2B3", "55555"],
    }
)
ALL = ["user_id", "timestamp", "user_age", "user_gender", "user_zip_prefix",
       "movie_id", "movie_title", "movie_title_text", "movie_genres", "movie_year"]  # fmt: skip


@pytest.fixture(scope="module")
def fitted() -> FittedFeatures:
    specs = [s if s.kind != "bucketized" else FeatureSpec(s.name, s.side, s.kind, s.column, num_buckets=10)
             for name in ALL for s in builtin_feature(name)]  # fmt: skip
    return FeatureSet(specs).fit(TRAIN, ITEMS, USERS)


def test_id_vocabulary_frequency_order_oov_and_fit_on_train_only(fitted: FittedFeatures) -> None:
    vocab = fitted.features[0].vocab
    assert vocab.values == [1, 2, 3]  # counts 3, 2, 1; index 0 is the OOV bucket
    q = fitted.encode_queries(TEST)
    assert q["user_id"].tolist() == [1, 0, 0]  # user 4 only in test, null -> OOV
    assert q["user_id"].dtype == torch.int64
    assert fitted.oov_counts["user_id"] == 2


def test_vocabulary_ties_min_count_and_cap() -> None:
    s = pl.Series(["b", "a", "c", "a", "b", "d"])
    assert Vocabulary.fit(s).values == ["a", "b", "c", "d"]  # ties broken by value
    assert Vocabulary.fit(s, min_count=2).values == ["a", "b"]
    v = Vocabulary.fit(s, max_size=3, padding=True)
    assert v.values == ["a", "b", "c"] and v.offset == 2 and v.size == 5
    assert v.lookup(pl.Series(["c", "zzz", "a"]))[0].tolist() == [4, 1, 2]


def test_several_oov_buckets_are_stable_and_in_range() -> None:
    v = Vocabulary.fit(pl.Series(["x", "y"]), num_oov=5)
    unknown = pl.Series([f"new{i}" for i in range(200)] + ["x"])
    idx, n_oov = v.lookup(unknown)
    assert n_oov == 200 and idx[-1] == 5
    assert idx[:-1].min() >= 0 and idx[:-1].max() < 5 and len(set(idx[:-1])) == 5
    again, _ = Vocabulary.from_json(json.loads(json.dumps(v.to_json()))).lookup(unknown)
    assert np.array_equal(idx, again)
    ints, _ = Vocabulary.fit(pl.Series([1, 2]), num_oov=3).lookup(pl.Series(np.arange(100, 400)))
    assert set(ints.tolist()) == {0, 1, 2}


def test_bucket_boundaries_clipping_and_nulls(fitted: FittedFeatures) -> None:
    b = fitted.features[1].bucketizer
    assert b.boundaries == pytest.approx([10, 20, 30, 40, 50, 60, 70, 80, 90])  # train range 0..100
    assert fitted.inputs("query")[1].cardinality == 11  # 10 buckets + null row
    train = fitted.encode_queries(TRAIN)["timestamp_bucketized"]
    assert train.tolist() == [1, 2, 3, 4, 5, 10]
    test = fitted.encode_queries(TEST)["timestamp_bucketized"]
    assert test.tolist() == [1, 10, 0]  # below / above the train range clip; null -> 0


def test_normalisation_uses_train_statistics(fitted: FittedFeatures) -> None:
    ts = TRAIN["timestamp"].to_numpy().astype(float)
    z = fitted.encode_queries(TEST)["timestamp_normalized"]
    assert z.shape == (3, 1) and z.dtype == torch.float32
    # -5 is below every train timestamp: clipped to the train minimum, as the bucketizer clips
    assert z[0, 0].item() == pytest.approx((ts.min() - ts.mean()) / ts.std(), rel=1e-6)
    assert z[2, 0].item() == 0.0  # null -> train mean
    year = fitted.encode_candidates()["movie_year"]
    assert year[:, 0].tolist() == pytest.approx([1.0, -1.0, 0.0])  # mean 1993, std 2, null -> mean


def test_user_columns_are_joined_and_zip_prefix_derived(fitted: FittedFeatures) -> None:
    gender = fitted.features[4].vocab
    assert gender.values == ["M", "F"]  # frequency over train rows: M 4, F 2
    q = fitted.encode_queries(TEST)  # users kept from fit; user 4 is known in the users table
    assert q["user_gender"].tolist() == [1, 2, 0]
    ages = fitted.features[3].normalizer
    rows = np.array([20, 20, 20, 30, 30, 40], dtype=float)
    assert (ages.mean, ages.std) == pytest.approx((rows.mean(), rows.std()))
    zips = fitted.features[5].vocab.values
    assert sorted(zips) == ["12", "1A", "98"]


def test_tokenize_titles() -> None:
    titles = pl.Series(["Toy Story (1995)", "Schindler's List (1993)", "Usual Suspects, The (1995)", None])
    assert tokenize(titles).to_list() == [["toy", "story"], ["schindlers", "list"], ["usual", "suspects", "the"], []]


def test_tokenize_normalises_unicode_and_apostrophes() -> None:
    """field-15: typographic apostrophes and fullwidth forms tokenize like their ASCII twins; scripts survive."""
    titles = pl.Series([
        "Schindler's List", "Schindler\u2019s List", "Schindler\u2018s List", "Schindler\u02bcs List",
        "\uff21\uff4c\uff49\uff43\uff45", "Am\u00e9lie", "Ame\u0301lie", "\u5343\u3068\u5343\u5c0b\u306e\u795e\u96a0\u3057",
        "\u041a\u0438\u043d-\u0434\u0437\u0430-\u0434\u0437\u0430!", "L\u00e9on: The Professional", "\u201cQuoted\u201d \u00ab Title \u00bb",
    ])
    tokens = tokenize(titles).to_list()
    assert tokens[:4] == [["schindlers", "list"]] * 4
    assert tokens[4] == ["alice"]
    assert tokens[5] == tokens[6] == ["am\u00e9lie"]  # NFKC composes e + combining acute
    assert tokens[7] == ["\u5343\u3068\u5343\u5c0b\u306e\u795e\u96a0\u3057"]
    assert tokens[8] == ["\u043a\u0438\u043d", "\u0434\u0437\u0430", "\u0434\u0437\u0430"]
    assert tokens[9] == ["l\u00e9on", "the", "professional"]
    assert tokens[10] == ["quoted", "title"]


def test_text_and_multi_encodings(fitted: FittedFeatures) -> None:
    c = fitted.encode_candidates()
    text = fitted.features[8].vocab
    assert text.values == ["toy", "heat", "soldiers", "story"]
    assert c["movie_title_text"].shape == (3, 20)
    assert c["movie_title_text"][0, :3].tolist() == [2, 5, 0]
    genres = fitted.features[9].vocab
    assert genres.values == ["Action", "Comedy", "Animation", "War"]  # 2, 2, 1, 1
    assert c["movie_genres"][2, :4].tolist() == [3, 2, 5, 0]
    new = ITEMS.head(1).with_columns(pl.lit("Brand New Toy (2001)").alias("title"))
    assert fitted.encode_candidates(new)["movie_title_text"][0, :4].tolist() == [1, 1, 2, 0]
    assert fitted.oov_counts["movie_title_text"] == 2


def test_multi_truncates_pads_and_splits_strings() -> None:
    items = ITEMS.with_columns(pl.Series("genres", [["A", "B", "C"], [], None]))
    spec = FeatureSpec("g", "candidate", "multi", "genres", max_length=2)
    f = FeatureSet([spec]).fit(TRAIN, items)
    assert f.encode_candidates()["g"].tolist() == [[2, 3], [0, 0], [0, 0]]
    piped = items.with_columns(pl.Series("genres", ["A|B|C", "", None]))
    assert FeatureSet([spec]).fit(TRAIN, piped).encode_candidates()["g"].tolist() == [[2, 3], [0, 0], [0, 0]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdef"), max_size=6), max_size=8), st.integers(1, 5))
def test_pad_lists_matches_a_reference(rows: list[list[str]], width: int) -> None:
    vocab = Vocabulary.fit(pl.Series(list("abc")), padding=True)
    got, _ = pad_lists(pl.Series(rows, dtype=pl.List(pl.String)), vocab, width)
    index = {v: i + vocab.offset for i, v in enumerate(vocab.values)}
    want = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        for p, v in enumerate(row[:width]):
            want[r, p] = index.get(v, 1)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("string_ids", [False, True])
def test_json_round_trip_gives_identical_encodings(string_ids: bool) -> None:
    train, items, users = TRAIN, ITEMS, USERS
    if string_ids:
        train = TRAIN.with_columns(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String))
        items = ITEMS.with_columns(pl.col("item_id").cast(pl.String))
        users = USERS.with_columns(pl.col("user_id").cast(pl.String))
    fitted = FeatureSet([*ALL, "user_age_bucket", "user_occupation"]).fit(train, items, users)
    loaded = FittedFeatures.from_json(json.loads(json.dumps(fitted.to_json())))
    test = train.vstack(train.head(1).with_columns(pl.lit(None, dtype=pl.Int64).alias("timestamp")))
    for a, b in [(fitted.encode_queries(test), loaded.encode_queries(test)),
                 (fitted.encode_candidates(), loaded.encode_candidates())]:  # fmt: skip
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded.catalogue_ids.tolist() == fitted.catalogue_ids.tolist()
    assert type(loaded.catalogue_ids[0]) is type(fitted.catalogue_ids[0])
    assert loaded.inputs("query") == fitted.inputs("query")


def test_catalogue_and_indices() -> None:
    f = FeatureSet(["user_id", "item_id"]).fit(TRAIN.filter(pl.col("item_id") != 30), ITEMS)
    assert f.catalogue_ids.tolist() == [10, 20, 30]  # the items table, not only train items
    assert f.item_index([30, 10, 77]).tolist() == [2, 0, -1]
    assert f.user_index(pl.Series([3, 9, 1])).tolist() == [2, -1, 0]
    assert f.item_index(["20"]).tolist() == [1]  # ids from text input are cast
    bare = FeatureSet(["item_id"]).fit(TRAIN.with_columns(pl.col("item_id") * -1))
    assert bare.catalogue_ids.tolist() == [-30, -20, -10]


def test_hashed_kind_is_stable_and_bounded() -> None:
    spec = FeatureSpec("h", "query", "hashed", "user_id", num_buckets=7)
    f = FeatureSet([spec]).fit(TRAIN)
    idx = f.encode_queries(TRAIN)["h"]
    assert idx.min() >= 0 and idx.max() < 7 and f.inputs("query")[0].cardinality == 7
    assert f.oov_counts["h"] == 0
    assert torch.equal(idx, FittedFeatures.from_json(f.to_json()).encode_queries(TRAIN)["h"])


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError) as e:
        builtin_feature("user_height")
    assert all(n in str(e.value) for n in BUILTIN_NAMES)
    with pytest.raises(ConfigError, match="unknown option 'bukets'.*num_buckets"):
        FeatureSpec.from_dict({"name": "t", "side": "query", "kind": "bucketized", "bukets": 3})
    with pytest.raises(ConfigError, match="kind 'embedding' is not one of id, hashed, bucketized"):
        FeatureSpec.from_dict({"name": "t", "side": "query", "kind": "embedding"})
    with pytest.raises(ConfigError, match="max_length"):
        FeatureSpec("t", "candidate", "text", "title", max_length=0)
    for key, value in (("num_buckets", 10**12), ("embedding_dim", 10**9), ("oov_buckets", True), ("min_count", 1.5)):
        with pytest.raises(ConfigError, match=rf"feature 't': {key} must be an integer in 1\.\.\d+"):
            FeatureSpec("t", "query", "bucketized", "age", **{key: value})
    with pytest.raises(ConfigError, match="used twice: user_id"):
        FeatureSet(["user_id", "user_id"])
    spec = FeatureSpec.from_dict({"name": "length", "side": "candidate", "kind": "normalized"})
    assert spec.column == "length" and FeatureSpec.from_dict(spec.to_dict()) == spec


def test_missing_column_is_a_data_error_naming_the_feature() -> None:
    with pytest.raises(DataError, match="'user_age' reads column 'age'"):
        FeatureSet(["user_age"]).fit(TRAIN)
    f = FeatureSet(["timestamp"]).fit(TRAIN)
    with pytest.raises(DataError, match="timestamp"):
        f.encode_queries(TRAIN.drop("timestamp"))


def test_encoding_a_million_rows_is_fast(fitted: FittedFeatures) -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    df = pl.DataFrame({"user_id": rng.integers(0, 6, n), "timestamp": rng.integers(-10, 200, n)})
    start = time.perf_counter()
    q = fitted.encode_queries(df)
    assert time.perf_counter() - start < 5.0  # ~0.3 s on a laptop core; generous for CI
    assert q["user_id"].shape == (n,) and q["user_zip_prefix"].shape == (n,)
