"""One definition per protocol detail on the two-tower and the sequential path (issue 13, kind 9).

- leave-last-out: at test time the validation item is known: fed as history and excluded from the ranking;
  validation queries know the train items only.
- popularity: training events per item.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from config_helpers import small_config

from towerrec.data.tables import Dataset
from towerrec.train.prepared import prepare
from towerrec.train.sequence_data import prepare_sequences

# user a: items 1..6 in time order (test 6, validation 5); user b: 2, 3, 4 (test 4, validation 3);
# user c: 1, 2 (too short for leave-last-out on the sequential path: trains only)
TIMELINES = {"a": [1, 2, 3, 4, 5, 6], "b": [2, 3, 4], "c": [7, 1]}


def _dataset() -> Dataset:
    users, items, stamps = [], [], []
    for user, timeline in TIMELINES.items():
        users += [user] * len(timeline)
        items += timeline
        stamps += list(range(100, 100 + len(timeline)))
    interactions = pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": [5.0] * len(users), "timestamp": stamps},
        schema={"user_id": pl.String, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    items = pl.DataFrame(
        {"item_id": list(range(1, 8)), "title": [f"m{i}" for i in range(1, 8)], "year": [2000] * 7,
         "genres": [["Drama"]] * 7},
        schema={"item_id": pl.Int64, "title": pl.String, "year": pl.Int32, "genres": pl.List(pl.String)},
    )
    return Dataset("timelines", interactions, items, fingerprint="timelines")


def _known(data, examples) -> dict[str, list[int]]:
    ids = data.features.catalogue_ids
    known = data.known_items(examples)(0, len(examples))
    users = data.split.test if examples is data.test else data.split.validation
    return {u: sorted(int(ids[i]) for i in known.indices[known.indptr[r]:known.indptr[r + 1]].tolist())
            for r, u in enumerate(users["user_id"].to_list())}


def test_two_tower_leave_last_out_feeds_and_excludes_the_validation_item_at_test_time() -> None:
    config = small_config(data={"dataset": "timelines", "split": "leave-last-out"},
                         model={"query_features": ["user_id", "user_history"], "history_length": 4})
    data = prepare(config, _dataset(), progress=False)
    ids = np.asarray(data.features.catalogue_ids)
    assert _known(data, data.test) == {"a": [1, 2, 3, 4, 5], "b": [2, 3]}
    assert _known(data, data.validation) == {"a": [1, 2, 3, 4], "b": [2]}
    test_users = data.split.test["user_id"].to_list()
    history = data.test.select(slice(None))["user_history"]
    fed = {u: [int(ids[i - 1]) for i in row.tolist() if i] for u, row in zip(test_users, history)}
    assert fed == {"a": [2, 3, 4, 5], "b": [2, 3]}  # most recent 4, the validation item last
    val_users = data.split.validation["user_id"].to_list()
    history = data.validation.select(slice(None))["user_history"]
    assert {u: [int(ids[i - 1]) for i in row.tolist() if i] for u, row in zip(val_users, history)} == {
        "a": [1, 2, 3, 4], "b": [2]}


def test_sequential_leave_last_out_feeds_and_excludes_the_validation_item_at_test_time() -> None:
    config = small_config(data={"dataset": "timelines"}, model={"kind": "sequential"},
                         sequence={"protocol": "leave-last-out", "max_length": 4, "min_rating": 1.0})
    data = prepare_sequences(config, _dataset(), progress=False)
    ids = data.item_ids

    def rows(examples):
        seen = examples.seen
        fed = [[int(ids[i - 1]) for i in row.tolist() if i] for row in examples.inputs]
        known = [sorted(int(ids[i]) for i in seen.indices[seen.indptr[r]:seen.indptr[r + 1]].tolist())
                 for r in range(len(examples))]
        return dict(zip(examples.user_ids, zip(fed, known)))

    assert rows(data.test) == {"a": ([2, 3, 4, 5], [1, 2, 3, 4, 5]), "b": ([2, 3], [2, 3])}
    assert rows(data.validation) == {"a": ([1, 2, 3, 4], [1, 2, 3, 4]), "b": ([2], [2])}


def test_popularity_counts_training_events_on_both_paths() -> None:
    expected = {1: 2, 2: 2, 3: 1, 4: 1, 7: 1}  # a: 1..4, b: 2, c: 7, 1 (c is too short to hold out)
    two_tower = prepare(small_config(data={"dataset": "timelines", "split": "leave-last-out"}), _dataset(),
                        progress=False)
    counts = {int(i): int(c) for i, c in zip(two_tower.features.catalogue_ids, two_tower.item_counts) if c}
    # the two-tower leave-last-out split holds out users with >= 3 events as well
    assert counts == expected
    config = small_config(data={"dataset": "timelines"}, model={"kind": "sequential"},
                         sequence={"protocol": "leave-last-out", "max_length": 2, "min_rating": 1.0})
    sequential = prepare_sequences(config, _dataset(), progress=False)
    counts = {int(i): int(c) for i, c in zip(sequential.item_ids, sequential.item_counts) if c}
    assert counts == expected  # every training event, also the first of a timeline and beyond max_length
    assert not torch.equal(sequential.target_counts, sequential.item_counts)  # logQ uses what training predicts
