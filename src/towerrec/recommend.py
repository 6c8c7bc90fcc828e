"""Top-K recommendations for known users from a trained run.

The run's configuration re-prepares its data (cached Parquet, fast) so the
user's features and train history are exactly those the model was trained
and evaluated with; a changed dataset is refused rather than silently used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from towerrec.errors import TowerrecError, listing, shorten
from towerrec.index.brute_force import BruteForceIndex
from towerrec.runs import LoadedRun, load_run
from towerrec.train.models import catalogue_embeddings, query_embeddings
from towerrec.train.prepared import EncodedExamples, PreparedData, prepare


@dataclass
class Recommendation:
    item_id: Any
    title: str
    score: float


def open_run_with_data(run_dir, data_dir=None) -> tuple[LoadedRun, PreparedData]:
    """A finished run and its data, re-prepared from the run's config (``data_dir``: the data's
    new place, if it moved; see :func:`towerrec.data.registry.relocated`)."""
    from towerrec.data.registry import relocated

    run = load_run(run_dir)
    run.config = relocated(run.config, data_dir)
    data = prepare(run.config, progress=False)
    if data.dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(
            f"{run.run_dir}: the dataset changed since this run was trained",
            hint="retrain the run on the current data",
        )
    if run.catalogue["item_id"].to_list() != data.features.catalogue_ids.tolist():
        raise TowerrecError(
            f"{run.run_dir}: its catalogue ({run.catalogue.height} items) is not the one this towerrec builds "
            f"from the data ({data.num_items} items)",
            hint="retrain the run (towerrec train CONFIG --retrain)",
        )
    return run, data


def _coerce_user(data: PreparedData, user: Any) -> Any | None:
    """A user id as the dataset spells it (CLI ids arrive as strings; MovieLens ids are Int64).

    None when the spelling cannot be an id of this dataset ("dd42" on integer ids):
    such a user is simply unknown, as in the HTTP API.
    """
    return _coercer(data)(user)


def _coercer(data: PreparedData):
    if data.dataset.interactions.schema["user_id"] != pl.Int64:
        return str

    def as_int(user: Any) -> int | None:
        if isinstance(user, bool):
            return None
        if isinstance(user, (int, np.integer)):
            return int(user)
        try:
            return int(str(user).strip())
        except ValueError:
            return None

    return as_int


def known_user_rows(data: PreparedData, users: list[Any]) -> np.ndarray:
    """[len(users)] int64 train-user rows, -1 for users not in the training data (or not valid ids)."""
    coerce = _coercer(data)
    raw = [coerce(u) for u in users]
    valid = [i for i, r in enumerate(raw) if r is not None]
    rows = np.full(len(users), -1, dtype=np.int64)
    if valid:
        rows[valid] = data.features.user_index(_id_array([raw[i] for i in valid]))
    return rows


def recommend(
    run: LoadedRun,
    data: PreparedData,
    users: list[Any],
    *,
    k: int = 10,
    exclude_seen: bool = True,
    fallback: str | None = None,
    at: int | None = None,
) -> dict[Any, list[Recommendation]]:
    """Top ``k`` items for each user, best first, all users in one batched pass.

    A model with a timestamp query feature is asked at time ``at`` (Unix seconds);
    by default at the dataset's latest timestamp (:func:`query_time`).

    A user with fewer than ``k`` unseen items left gets the items left (a shorter
    list, possibly empty), never an error for the others. Unknown users (not in
    train, or an id this dataset cannot hold, like "dd42" for integer ids) raise
    :class:`TowerrecError` naming them, or get the most popular items with
    ``fallback='popular'``. Keys of the result are the ``users`` as given.

    Raises:
        TowerrecError: ``k`` < 1; ``at`` not an integer; unknown users without a fallback.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TowerrecError(f"k must be ≥ 1, got {k}")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, np.integer))):
        raise TowerrecError(f"at must be a Unix timestamp in seconds (an integer), got {at!r}")
    rows = known_user_rows(data, users)
    titles = run.catalogue["title"].to_list()
    ids = run.catalogue["item_id"].to_list()
    unknown = [u for u, r in zip(users, rows.tolist()) if r < 0]
    if unknown and fallback != "popular":
        raise TowerrecError(
            f"user(s) {listing(unknown, 10, shorten)} not in the training data",
            hint="pass --fallback popular to recommend the most popular items to unknown users",
        )
    results: dict[Any, list[Recommendation]] = {}
    known = np.flatnonzero(rows >= 0)
    if known.size:
        known_rows = torch.from_numpy(rows[known])
        frame = _query_frame(data, data.features.user_ids[rows[known]].tolist(), at)
        examples = EncodedExamples(
            queries=data.features.encode_queries(frame, data.dataset.users),
            targets=torch.zeros(known.size, dtype=torch.int64),
            user_rows=known_rows,
            history=data.history,
        )
        index = BruteForceIndex(catalogue_embeddings(run.model, data.catalogue, data.num_items), ids)
        queries = query_embeddings(run.model, examples)
        exclude = data.exclusions_for(known_rows) if exclude_seen else None
        found = index.search(queries, k, exclude_positions=exclude)
        counts = found.counts.tolist()
        positions, scores = found.indices.tolist(), found.scores.tolist()
        for j, i in enumerate(known.tolist()):
            results[i] = [Recommendation(ids[c], titles[c], s) for c, s in zip(positions[j][: counts[j]], scores[j][: counts[j]])]
    if unknown:
        top = torch.topk(data.item_counts, min(k, data.num_items))
        popular = [Recommendation(ids[c], titles[c], float(s)) for c, s in zip(top.indices.tolist(), top.values.tolist())]
        for i in np.flatnonzero(rows < 0).tolist():
            results[i] = list(popular)
    return {users[i]: results[i] for i in range(len(users))}


def _id_array(values: list[Any]):
    return np.asarray(values, dtype=object if any(isinstance(v, str) for v in values) else np.int64)


def uses_query_time(data: PreparedData) -> bool:
    """Whether the model has a query feature read from the timestamp (W2's ``timestamp``)."""
    return any(spec.side == "query" and spec.column == "timestamp" for spec in data.features.specs)


def query_time(data: PreparedData, at: int | None = None) -> int:
    """The time recommendations are asked at: ``at``, else the dataset's latest timestamp (Unix seconds)."""
    if at is not None:
        return int(at)
    latest = data.dataset.interactions["timestamp"].max()
    return int(latest) if latest is not None else 0


def _query_frame(data: PreparedData, users: list[Any], at: int | None = None) -> pl.DataFrame:
    """Query rows for recommendation time: each user at :func:`query_time`."""
    return pl.DataFrame(
        {
            "user_id": pl.Series(users, dtype=data.dataset.interactions.schema["user_id"]),
            "timestamp": pl.Series([query_time(data, at)] * len(users), dtype=pl.Int64),
        }
    )


def seen_titles(run: LoadedRun, data: PreparedData, user: str, limit: int = 10) -> list[tuple[str, float]]:
    """The user's highest-rated train items, best first (what a person checks recommendations against)."""
    raw = _coerce_user(data, user)
    if raw is None:
        return []
    train = data.split.train.filter(pl.col("user_id") == raw).sort(["rating", "timestamp"], descending=True)
    titles = dict(zip(run.catalogue["item_id"].to_list(), run.catalogue["title"].to_list()))
    return [(titles.get(i, str(i)), r) for i, r in zip(train["item_id"].to_list()[:limit], train["rating"].to_list()[:limit])]
