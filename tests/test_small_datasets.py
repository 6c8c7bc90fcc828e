"""Empty or tiny datasets: one clear error naming the dataset, split and counts before anything is built (rel-17)."""

from __future__ import annotations

import polars as pl
import pytest

from config_helpers import small_config
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import DataError
from towerrec.runs import train_run


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The CASE's dataset: 3 users, 4 items, 2 interactions."""
    root = tmp_path_factory.mktemp("small")
    save_dataset(make_synthetic(3, 4, 2), root / "two")
    return root / "two"


def _train(folder, tmp_path, **sections):
    cfg = small_config({"name": "t", "data": {"dataset": str(folder), **sections.pop("data", {})},
                            "train": {"epochs": 1}, **sections})
    return train_run(cfg, runs_root=tmp_path / "runs", progress=False, log=lambda *_: None)


@pytest.mark.parametrize("split, message", [
    ("tfrs-random", "the tfrs-random split leaves test empty (2 interactions: train 2, test 0)"),
    ("temporal", "the temporal split leaves test empty (2 interactions: train 2, test 0)"),
    ("leave-last-out", "the leave-last-out split leaves validation empty (2 interactions: train 2, validation 0, test 0)"),
])
def test_a_split_without_test_rows_is_one_clear_error(two, tmp_path, split, message):
    with pytest.raises(DataError) as info:
        _train(two, tmp_path, data={"split": split})
    assert info.value.message == f"dataset {str(two)!r}: {message}; training needs at least one in each of " + (
        "train, validation, test" if split == "leave-last-out" else "train, test")
    assert info.value.hint
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_empty_validation_part_is_named(tmp_path):
    folder = tmp_path / "ten"
    save_dataset(make_synthetic(5, 10, 10), folder)
    with pytest.raises(DataError, match=r"tfrs-random split leaves validation empty \(10 interactions: "
                                        r"train 8, validation 0, test 2\)"):
        _train(folder, tmp_path, data={"validation_fraction": 0.01})


@pytest.mark.parametrize("protocol, counts", [
    ("tfrs-sequences", "train 0, test 0"), ("leave-last-out", "train 0, validation 0, test 0")])
def test_sequential_protocols_say_which_part_is_empty(two, tmp_path, protocol, counts):
    with pytest.raises(DataError) as info:
        _train(two, tmp_path, model={"kind": "sequential"}, sequence={"protocol": protocol})
    message = info.value.message
    assert message.startswith(f"dataset {str(two)!r}: the sequential {protocol} protocol leaves 0 train examples")
    assert counts in message and "min_timeline_length" in info.value.hint


@pytest.mark.parametrize("kind", ["two-tower", "sequential"])
def test_a_dataset_without_interactions_is_refused(tmp_path, kind):
    full = make_synthetic(3, 4, 2)
    empty = type(full)(name="empty", interactions=full.interactions.clear(), items=full.items, users=full.users,
                       fingerprint="e" * 64, meta=full.meta)
    cfg = small_config({"name": "t", "model": {"kind": kind}, "train": {"epochs": 1}})
    with pytest.raises(DataError, match=r"^dataset 'empty' has no interactions$"):
        train_run(cfg, runs_root=tmp_path / "runs", dataset=empty, progress=False, log=lambda *_: None)
    assert isinstance(empty.interactions, pl.DataFrame)
