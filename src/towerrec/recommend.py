"""Top-K recommendations for known users from a trained run.

The run's configuration re-prepares its data (cached Parquet, fast) so the
user's features and train history are exactly those the model was trained
and evaluated with; a changed dataset is refused rather than silently used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import torch

from towerrec.errors import TowerrecError
from towerrec.index.brute_force import BruteForceIndex
from towerrec.runs import LoadedRun, load_run
from towerrec.train.models import catalogue_embeddings, query_embeddings
from towerrec.train.prepared import EncodedExamples, PreparedData, prepare


@dataclass
class Recommendation:
    item_id: Any
    title: str
    score: float


def open_run_with_data(run_dir) -> tuple[LoadedRun, PreparedData]:
    run = load_run(run_dir)
    data = prepare(run.config, progress=False)
    if data.dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(
            f"{run.run_dir}: the dataset changed since this run was trained",
            hint="retrain the run on the current data",
        )
    return run, data


def _coerce_user(data: PreparedData, user: str) -> Any:
    """CLI users arrive as strings; ids are Int64 for MovieLens."""
    if data.dataset.interactions.schema["user_id"] == pl.Int64:
        try:
            return int(user)
        except ValueError as exc:
            raise TowerrecError(f"user id {user!r} is not an integer, as this dataset's ids are") from exc
    return user


def recommend(
    run: LoadedRun,
    data: PreparedData,
    users: list[str],
    *,
    k: int = 10,
    exclude_seen: bool = True,
    fallback: str | None = None,
) -> dict[str, list[Recommendation]]:
    """Top ``k`` items for each user. Unknown users raise, or get popular items with ``fallback='popular'``."""
    num_items = data.num_items
    if k <= 0 or k > num_items:
        raise TowerrecError(f"k must be between 1 and the catalogue size {num_items}, got {k}")
    raw = [_coerce_user(data, u) for u in users]
    rows = torch.as_tensor(data.features.user_index(_id_array(raw)), dtype=torch.int64)
    titles = run.catalogue["title"].to_list()
    ids = run.catalogue["item_id"].to_list()
    results: dict[str, list[Recommendation]] = {}
    unknown = [u for u, r in zip(users, rows.tolist()) if r < 0]
    if unknown and fallback != "popular":
        raise TowerrecError(
            f"user(s) {unknown} not in the training data",
            hint="pass --fallback popular to recommend the most popular items to unknown users",
        )
    known = [i for i, r in enumerate(rows.tolist()) if r >= 0]
    if known:
        frame = _query_frame(data, [raw[i] for i in known])
        examples = EncodedExamples(
            queries=data.features.encode_queries(frame, data.dataset.users),
            targets=torch.zeros(len(known), dtype=torch.int64),
            user_rows=rows[known],
            history=data.history,
        )
        index = BruteForceIndex(catalogue_embeddings(run.model, data), ids)
        queries = query_embeddings(run.model, examples)
        exclude = data.exclusions_for(rows[known]) if exclude_seen else None
        found = index.search(queries, k, exclude=exclude)
        for j, i in enumerate(known):
            results[users[i]] = [
                Recommendation(ids[c], titles[c], float(s))
                for c, s in zip(found.indices[j].tolist(), found.scores[j].tolist())
            ]
    if unknown:
        top = torch.topk(data.item_counts, k)
        popular = [Recommendation(ids[c], titles[c], float(s)) for c, s in zip(top.indices.tolist(), top.values.tolist())]
        for u in unknown:
            results[u] = popular
    return {u: results[u] for u in users}


def _id_array(values: list[Any]):
    import numpy as np

    return np.asarray(values, dtype=object if any(isinstance(v, str) for v in values) else np.int64)


def _query_frame(data: PreparedData, users: list[Any]) -> pl.DataFrame:
    """Query rows for recommendation time: each user at the latest timestamp in the data."""
    latest = data.dataset.interactions["timestamp"].max()
    return pl.DataFrame(
        {
            "user_id": pl.Series(users, dtype=data.dataset.interactions.schema["user_id"]),
            "timestamp": pl.Series([latest] * len(users), dtype=pl.Int64),
        }
    )


def seen_titles(run: LoadedRun, data: PreparedData, user: str, limit: int = 10) -> list[tuple[str, float]]:
    """The user's highest-rated train items, best first (what a person checks recommendations against)."""
    raw = _coerce_user(data, user)
    train = data.split.train.filter(pl.col("user_id") == raw).sort(["rating", "timestamp"], descending=True)
    titles = dict(zip(run.catalogue["item_id"].to_list(), run.catalogue["title"].to_list()))
    return [(titles.get(i, str(i)), r) for i, r in zip(train["item_id"].to_list()[:limit], train["rating"].to_list()[:limit])]
