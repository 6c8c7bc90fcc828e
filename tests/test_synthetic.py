"""The synthetic generator: schema, exact counts, determinism, and structure a model can learn."""

import numpy as np
import polars as pl
import pytest

from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError


@pytest.fixture(scope="module")
def planted():
    return make_synthetic(2000, 500, 60_000, seed=0)


def test_schema_counts_and_ranges(planted):
    inter = planted.interactions
    assert inter.schema == {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}
    assert inter.height == 60_000
    assert inter["user_id"].min() >= 1 and inter["user_id"].max() <= 2000
    assert inter["item_id"].min() >= 1 and inter["item_id"].max() <= 500
    assert not inter.select("user_id", "item_id").is_duplicated().any()
    assert set(inter["rating"].unique().to_list()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.0 < inter["rating"].mean() < 4.2
    assert inter["user_id"].n_unique() == 2000
    assert inter.group_by("user_id").len()["len"].min() >= 5


def test_side_tables(planted):
    items, users = planted.items, planted.users
    assert items.height == 500 and items["item_id"].to_list() == list(range(1, 501))
    assert items["title"][16] == f"Item 17 ({items['year'][16]})"
    assert items.schema["genres"] == pl.List(pl.String)
    assert items["genres"].list.len().min() >= 1
    assert items["genres"].explode().n_unique() <= 12
    assert users.height == 2000 and {"age", "gender", "occupation", "zip"} <= set(users.columns)
    assert users["zip"].str.len_chars().unique().to_list() == [5]


def test_timestamps_in_range_and_per_user_spread(planted):
    ts = planted.interactions["timestamp"]
    start = 946_684_800
    assert ts.min() >= start and ts.max() < start + 1095 * 86_400
    spans = planted.interactions.group_by("user_id").agg(span=pl.col("timestamp").max() - pl.col("timestamp").min())
    assert spans["span"].median() > 86_400  # events spread over days, not one instant


def test_popularity_is_skewed(planted):
    counts = np.sort(planted.interactions["item_id"].value_counts()["count"].to_numpy())[::-1]
    assert counts[:50].sum() / counts.sum() > 0.3  # top 10% of items take far more than 10%


def test_deterministic_and_fingerprinted():
    a, b = make_synthetic(50, 40, 500, seed=7), make_synthetic(50, 40, 500, seed=7)
    assert a.interactions.equals(b.interactions) and a.items.equals(b.items) and a.users.equals(b.users)
    assert a.fingerprint == b.fingerprint
    c = make_synthetic(50, 40, 500, seed=8)
    assert not a.interactions.equals(c.interactions)
    assert a.fingerprint != c.fingerprint
    assert a.fingerprint != make_synthetic(50, 40, 500, seed=7, affinity=2.0).fingerprint


@pytest.mark.parametrize("shape", [(3, 4, 6), (5, 1, 5), (7, 2, 1), (100, 3, 100), (10, 10, 50)])
def test_edge_sizes_are_exact_and_distinct(shape):
    inter = make_synthetic(*shape).interactions
    assert inter.height == shape[2]
    assert not inter.select("user_id", "item_id").is_duplicated().any()


def test_impossible_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="do not fit"):
        make_synthetic(10, 10, 51)
    with pytest.raises(ConfigError, match="drift_memory"):
        make_synthetic(10, 10, 20, drift_memory=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_interactions": 0}, r"num_interactions must be an integer in 1\.\.\d+, got 0"),  # rel-17: no data rows
    ({"seed": -1}, r"seed must be an integer in 0\.\.4294967295, got -1"),  # rel-14
    ({"seed": 2**63}, r"seed must be an integer in 0\.\.4294967295, got 9223372036854775808"),
    ({"affinity": float("nan")}, r"affinity must be a finite number >= 0, got nan"),
    ({"drift": float("inf")}, r"drift must be a finite number >= 0, got inf"),
    ({"num_users": True}, r"num_users must be an integer"),
])
def test_generator_parameters_are_validated(kwargs, message):
    args = {"num_users": 10, "num_items": 10, "num_interactions": 20, **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_synthetic(args.pop("num_users"), args.pop("num_items"), args.pop("num_interactions"), **args)


def _leave_last_out(dataset):
    df = dataset.interactions.with_row_index("r").sort("user_id", "timestamp", "r")
    users = df["user_id"].to_numpy() - 1
    items = df["item_id"].to_numpy() - 1
    last = np.r_[users[1:] != users[:-1], True]
    train = np.zeros((dataset.num_users, dataset.num_items), np.float32)
    train[users[~last], items[~last]] = 1
    return train, users[last], items[last], items, np.nonzero(last)[0]


def _hit_rate(scores, train, test_users, test_items, k=10):
    scores = np.where(train[test_users] > 0, -np.inf, scores)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return (top == test_items[:, None]).any(axis=1).mean()


def test_planted_structure_beats_popularity(planted):
    """Simple models that use the planted factors beat popularity on the held-out last item."""
    train, test_users, test_items, items, last_rows = _leave_last_out(planted)
    popularity = train.sum(axis=0)
    pop = _hit_rate(np.tile(popularity, (len(test_users), 1)), train, test_users, test_items)

    u, s, vt = np.linalg.svd(train, full_matrices=False)
    svd = _hit_rate(((u[:, :16] * s[:16]) @ vt[:16])[test_users], train, test_users, test_items)

    cooc = train.T @ train
    np.fill_diagonal(cooc, 0)
    cooc /= np.sqrt(np.outer(popularity, popularity)) + 1e-9
    item_knn = _hit_rate((train @ cooc)[test_users], train, test_users, test_items)
    assert svd > 1.3 * pop and item_knn > 1.3 * pop, (pop, svd, item_knn)

    # Order carries signal too: the last 3 items predict the next better than the whole history.
    recent = cooc[items[last_rows - 1]] + cooc[items[last_rows - 2]] + cooc[items[last_rows - 3]]
    assert _hit_rate(recent, train, test_users, test_items) > item_knn
