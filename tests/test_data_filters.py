"""[data] interaction filters, the leave-last-out count, [sequence] min_rating = false and the
sequential leave-last-out timestamp check (kind 8)."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest

from config_helpers import small_config
from towerrec.config import config_from_dict, load_config
from towerrec.data.filters import filter_interactions
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError
from towerrec.train.prepared import prepare
from towerrec.train.sequence_data import prepare_sequences

SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}


def dataset(pairs: list[tuple[int, int]], *, ratings=None, timestamps=True, items: bool = False) -> Dataset:
    n = len(pairs)
    inter = pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                          "rating": ratings or [4.0] * n, "timestamp": list(range(n)) if timestamps else [None] * n},
                         schema=SCHEMA)
    table = None
    if items:
        ids = sorted({i for _, i in pairs})
        table = pl.DataFrame({"item_id": ids, "title": [f"t{i}" for i in ids], "year": [2000] * len(ids),
                              "genres": [[]] * len(ids)},
                             schema={"item_id": pl.Int64, "title": pl.String, "year": pl.Int32,
                                     "genres": pl.List(pl.String)})
    return Dataset("d", inter, table, fingerprint="d")


# user 1: items 1 2 3; user 2: items 1 2; user 3: item 1; item 4 only from user 4 (once)
PAIRS = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (4, 4)]


def test_min_counts() -> None:
    ds, report = filter_interactions(dataset(PAIRS), min_user_interactions=2)
    assert sorted(set(ds.interactions["user_id"].to_list())) == [1, 2] and report.interactions == (7, 5)
    ds, report = filter_interactions(dataset(PAIRS, items=True), min_item_interactions=2)
    assert sorted(set(ds.interactions["item_id"].to_list())) == [1, 2]
    assert ds.items["item_id"].to_list() == [1, 2]  # rare items leave the catalogue too
    assert report.describe() == "interactions 7 -> 5, users 4 -> 3, items 4 -> 2"


def test_no_filter_is_a_no_op() -> None:
    ds = dataset(PAIRS)
    assert filter_interactions(ds)[1] is None and filter_interactions(ds)[0] is ds


def test_k_core_repeats_until_stable() -> None:
    # one pass of (users >= 2, items >= 2) leaves user 1 with item 3 gone -> still >= 2; user 2 kept
    ds, _ = filter_interactions(dataset(PAIRS), k_core=2)
    assert sorted(ds.interactions.select("user_id", "item_id").rows()) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    chain = [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]  # a chain: the 2-core of it is empty
    with pytest.raises(DataError, match=r"filters \(k_core = 2\) leave no interactions \(of 5\)"):
        filter_interactions(dataset(chain), k_core=2)


def test_filters_apply_in_training_prepare_and_warn() -> None:
    config = small_config({"model": {"kind": "popularity"}, "data": {"min_user_interactions": 2}})
    pairs = [(u, i) for u in (1, 2) for i in range(1, 6)] * 2 + [(3, 1), (4, 5)]
    with pytest.warns(UserWarning, match=r"\[data\] interaction filters kept interactions 22 -> 20, users 4 -> 2"):
        data = prepare(config, dataset(pairs))
    assert set(data.dataset.interactions["user_id"].to_list()) == {1, 2}


@pytest.mark.parametrize("key", ["min_user_interactions", "min_item_interactions", "k_core",
                                 "leave_last_out_min_interactions"])
@pytest.mark.parametrize("value", [0, -1, 10**9, 1.5, "2"])
def test_filter_settings_are_bounded(key: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"\[data\] {key}"):
        config_from_dict({"data": {key: value}})


def test_leave_last_out_count_is_configurable() -> None:
    pairs = [(1, 1), (1, 2), (1, 3), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]  # user 2 has only 2 interactions
    base = {"model": {"kind": "popularity"}, "data": {"split": "leave-last-out"}}
    default = prepare(small_config(base), dataset(pairs)).split
    assert default.test["user_id"].to_list() == [1]  # 3 by default: user 2 only trains
    two = prepare(small_config({**base, "data": {**base["data"], "leave_last_out_min_interactions": 2}}),
                  dataset(pairs)).split
    assert sorted(two.test["user_id"].to_list()) == [1, 2]


# --- [sequence] min_rating ----------------------------------------------------------------------


def test_min_rating_false_is_accepted_and_round_trips(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[model]\nkind = "sequential"\n[sequence]\nmin_rating = false\n')
    config = load_config(tmp_path / "c.toml")
    assert config.sequence.min_rating is None
    (tmp_path / "back.toml").write_text(config.to_toml())
    again = load_config(tmp_path / "back.toml")
    assert again.sequence.min_rating is None and again.hash() == config.hash()
    assert config.hash() != config_from_dict({"model": {"kind": "sequential"}}).hash()


def test_min_rating_reports_the_rows_it_removes() -> None:
    pairs = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)]
    ratings = [5.0, 1.0, 4.0, 1.0, 5.0, 5.0, 5.0]
    config = small_config({"model": {"kind": "sequential"}, "sequence": {"protocol": "leave-last-out"}})
    with pytest.warns(UserWarning, match=r"min_rating = 2 removed 2 of 7 interactions.*min_rating = false"):
        prepare_sequences(config, dataset(pairs, ratings=ratings))
    off = config.replace(sequence={"min_rating": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = prepare_sequences(off, dataset(pairs, ratings=ratings))
    assert data.test.targets.shape[0] == 2


def test_sequential_leave_last_out_refuses_a_table_without_timestamps() -> None:
    pairs = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    config = small_config({"model": {"kind": "sequential"}, "sequence": {"protocol": "leave-last-out"}})
    with pytest.raises(DataError, match="leave-last-out protocol orders events by time, but 6 of 6") as err:
        prepare_sequences(config, dataset(pairs, timestamps=False))
    assert "--timestamp" in err.value.hint
