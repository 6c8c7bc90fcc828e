"""Top-K recommendations from a trained run, for every kind of model.

Two-tower and baseline runs (:func:`recommend`): the run's configuration
re-prepares its data (cached Parquet, fast) so the user's features and train
history are exactly those the model was trained and evaluated with; a changed
dataset is refused rather than silently used.

Sequential runs: the query is an item history (:func:`recommend_from_histories`).
A known user's history is their whole timeline in the run's data
(:func:`user_histories`: ratings >= the run's ``min_rating``, time order; what is
excluded as seen), plus their learned user vector when the run has a user
embedding (:func:`run_user_indices`); a new user is a history given by item ids
(``--history``: :func:`history_to_indices`, which maps MovieLens's merged twin ids and
warns about, or refuses, unknown ids). Empty histories and unknown users get the
most popular items with ``fallback="popular"``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec import fsio
from towerrec.data.registry import load_dataset, relocated
from towerrec.data.tables import Dataset
from towerrec.errors import TowerrecError, listing, shorten
from towerrec.index.brute_force import BruteForceIndex
from towerrec.runs import USERS_FILE, LoadedRun, load_run, prepare_run_data
from towerrec.train.models import catalogue_embeddings, query_embeddings
from towerrec.train.prepared import EncodedExamples, PreparedData
from towerrec.train.sequence_data import SequenceData, SequenceExamples, timeline_events, user_indices
from towerrec.devices import resolve_device


@dataclass
class Recommendation:
    """One recommended item: its id, title and score (the dot product of query and candidate embeddings)."""

    item_id: Any
    title: str
    score: float


def open_run(run_dir, data_dir=None, device=None) -> LoadedRun:
    """A finished run (:func:`towerrec.runs.load_run`) with its config pointing at the data's new place
    (``data_dir``, if it moved; see :func:`towerrec.data.registry.relocated`) and its model on ``device``.

    Raises:
        TowerrecError: as :func:`~towerrec.runs.load_run`; a device this machine does not have (one line).
    """
    target = resolve_device(device)
    run = load_run(run_dir)
    run.config = relocated(run.config, data_dir)
    run.model.to(target)
    return run


def open_run_with_data(run_dir, data_dir=None, device=None) -> tuple[LoadedRun, PreparedData | SequenceData]:
    """A finished run (see :func:`open_run`) and its data, re-prepared from the run's config: prepared
    data for two-tower and baseline runs, sequence data for sequential runs.

    Raises:
        TowerrecError: the dataset changed since training, or its catalogue is not the run's.
    """
    run = open_run(run_dir, data_dir, device)
    data = prepare_run_data(run.config, progress=False)
    _check_fingerprint(run, data.dataset)
    if run.catalogue["item_id"].to_list() != data.catalogue_ids.tolist():
        raise TowerrecError(
            f"{run.run_dir}: its catalogue ({run.catalogue.height} items) is not the one this towerrec builds "
            f"from the data ({data.num_items} items)",
            hint="retrain the run (towerrec train CONFIG --retrain)",
        )
    return run, data


def _check_fingerprint(run: LoadedRun, dataset: Dataset) -> None:
    if dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the dataset changed since this run was trained",
                            hint="retrain the run on the current data")


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
        examples = user_examples(data, rows[known], at)
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


def user_examples(data: PreparedData, rows: np.ndarray, at: int | None = None) -> EncodedExamples:
    """The query examples of train users ``rows`` (``[n]`` int64 rows of ``data.features.user_ids``, all ≥ 0)
    at recommendation time (:func:`query_time`): their query features, user rows and the run's history."""
    rows = np.asarray(rows, dtype=np.int64)
    frame = _query_frame(data, data.features.user_ids[rows].tolist(), at)
    return EncodedExamples(
        queries=data.features.encode_queries(frame, data.dataset.users),
        targets=torch.zeros(rows.size, dtype=torch.int64),
        user_rows=torch.from_numpy(rows.copy()),
        history=data.history,
    )


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


# -- sequential runs: the query is an item history ------------------------------
def run_user_indices(run: LoadedRun, user_ids: list) -> Tensor | None:
    """``[n]`` user index + 1 of raw ids for a run with a user embedding (0 = unknown); None without one.

    Ids arrive as text or as the dataset's ids ("42" finds user 42; an id the dataset cannot hold is unknown).
    """
    if not getattr(run.model, "num_users", 0):
        return None
    vocabulary = fsio.read_parquet(run.run_dir / USERS_FILE, hint="retrain the run with --retrain")["user_id"]
    typed = pl.Series([None if u is None else str(u) for u in user_ids], dtype=pl.String).cast(
        vocabulary.dtype, strict=False)  # "42" -> 42; bad -> null
    return user_indices(typed.to_list(), vocabulary.to_list())


def parse_history(text: str, catalogue: pl.DataFrame) -> list[Any]:
    """Item ids of a comma-separated history (``--history 1,2,3``), typed as the catalogue's ids.

    Raises:
        TowerrecError: an id that is not an integer when the dataset's ids are.
    """
    raw = [part.strip() for part in text.split(",") if part.strip()]
    if catalogue.schema["item_id"] != pl.Int64:
        return raw
    out = []
    for value in raw:
        try:
            out.append(int(value))
        except ValueError as exc:
            raise TowerrecError(f"--history item {value!r} is not an integer, as this dataset's ids are") from exc
    return out


def history_to_indices(items: list[Any], catalogue: pl.DataFrame, *, unknown: str = "warn",
                       max_length: int | None = None, warn=None,
                       aliases: dict[str, Any] | None = None) -> list[int]:
    """Catalogue indices of a history of item ids (oldest first).

    ``aliases`` (``{merged twin id as text: catalogue id}``, a run's :attr:`~towerrec.runs.LoadedRun.item_aliases`)
    maps ids merged into another (MovieLens 268 -> 246). Other unknown ids warn (through ``warn``) and
    are dropped, or raise with ``unknown="error"``; longer histories keep their ``max_length`` most recent items.

    Raises:
        TowerrecError: unknown ids with ``unknown="error"``.
    """
    index = {v: i for i, v in enumerate(catalogue["item_id"].to_list())}
    aliases = aliases or {}
    items = [v if v in index else aliases.get(str(v), v) for v in items]
    missing = [v for v in items if v not in index]
    if missing:
        if unknown == "error":
            raise TowerrecError(f"history item id(s) {missing} are not in the catalogue",
                                hint="set [sequence] unknown_items = 'warn' to ignore them")
        message = f"ignoring history item id(s) not in the catalogue: {missing}"
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(message)
    kept = [index[v] for v in items if v in index]
    return kept[-max_length:] if max_length else kept


def recommend_from_histories(run: LoadedRun, histories: dict[str, list[int]], *, k: int = 10,
                             exclude_seen: bool = True, fallback: str | None = None,
                             seen: dict[str, list[int]] | None = None,
                             users: dict[str, Any] | None = None) -> dict[str, list[Recommendation]]:
    """Top ``k`` per named history (catalogue indices, oldest first) of a sequential run, best first.

    Each history's last ``[sequence] max_length`` items are the query (ratings unknown); the model's
    ``query_embeddings`` scores them against every item on the model's device. ``users`` maps a
    history's name to its raw user id, for runs with a user embedding (other histories query by their
    items alone). ``exclude_seen`` leaves out ``seen[name]`` (default: the history itself). Empty
    histories get the most popular items (training counts) with ``fallback='popular'``. A history
    that leaves fewer than ``k`` unseen items gets those left (a shorter list), never an error.

    Raises:
        TowerrecError: ``k`` < 1; an empty history without ``fallback='popular'``.
    """
    catalogue = run.catalogue
    ids, titles = catalogue["item_id"].to_list(), catalogue["title"].to_list()
    num_items = len(ids)
    if k < 1:
        raise TowerrecError(f"k must be ≥ 1, got {k}")
    k = min(k, num_items)
    empty = [name for name, h in histories.items() if not h]
    if empty and fallback != "popular":
        raise TowerrecError(f"empty history for {empty}: nothing to condition on",
                            hint="pass --fallback popular to recommend the most popular items instead")
    results: dict[str, list[Recommendation]] = {}
    named = [name for name, h in histories.items() if h]
    width = run.config.sequence.max_length
    if named:
        rows = [histories[name][-width:] for name in named]
        inputs = torch.zeros(len(rows), width, dtype=torch.int64)
        for r, h in enumerate(rows):
            inputs[r, width - len(h):] = torch.as_tensor(h, dtype=torch.int64) + 1
        ratings = torch.zeros_like(inputs) if "rating" in run.config.sequence.step_features else None
        queries = SequenceExamples(inputs, ratings, torch.zeros(len(rows), dtype=torch.int64),
                                   users=run_user_indices(run, [(users or {}).get(name) for name in named]))
        scores = query_embeddings(run.model, queries) @ catalogue_embeddings(run.model, {}, num_items).T
        if exclude_seen:
            for r, name in enumerate(named):
                scores[r, torch.as_tensor((seen or histories)[name], dtype=torch.int64)] = -torch.inf
        top = torch.topk(scores, k, dim=1)
        for r, name in enumerate(named):
            results[name] = [Recommendation(ids[c], titles[c], float(s))
                             for c, s in zip(top.indices[r].tolist(), top.values[r].tolist()) if s != -math.inf]
    if empty:
        counts = torch.as_tensor(catalogue["train_count"].to_numpy().copy(), dtype=torch.float32)
        top = torch.topk(counts, k)
        popular = [Recommendation(ids[c], titles[c], float(s)) for c, s in zip(top.indices.tolist(), top.values.tolist())]
        for name in empty:
            results[name] = popular
    return {name: results[name] for name in histories}


def run_dataset(run: LoadedRun) -> Dataset:
    """The dataset a run was trained on (from its config, relocated if it moved), refusing a changed one."""
    config = run.config
    dataset = load_dataset(config.data.dataset, config.data.data_dir, progress=False,
                           duplicate_titles=config.data.duplicate_titles)
    _check_fingerprint(run, dataset)
    return dataset


def user_histories(run: LoadedRun, users: list[str], *, fallback: str | None = None, all_users: bool = False,
                   dataset: Dataset | None = None) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Each user's full timeline (ratings >= min_rating, time order) as catalogue indices: (recent, seen).

    One pass over the events for all users; ``all_users`` adds every user with a timeline.
    An id this dataset cannot hold ("dd42" on integer ids) is an unknown user. ``dataset``:
    the run's dataset when already loaded (else :func:`run_dataset`).

    Raises:
        TowerrecError: users without a timeline, unless ``fallback='popular'``; a changed dataset.
    """
    config = run.config
    dataset = run_dataset(run) if dataset is None else dataset
    item_ids = np.asarray(run.catalogue["item_id"].to_list())
    events = timeline_events(dataset, item_ids, config.sequence.min_rating).with_row_index("__row")
    schema = dataset.interactions.schema["user_id"]
    users = list(users)
    if all_users:
        users += [str(u) for u in events["user_id"].unique().sort().to_list()]

    def coerce(user: str) -> Any:
        if schema != pl.Int64:
            return user
        try:
            return int(user)
        except ValueError:  # "dd42" cannot be a user of integer ids: unknown, as in the HTTP API
            return None

    raw = {user: coerce(user) for user in users}
    wanted = pl.Series([r for r in raw.values() if r is not None], dtype=schema)
    timelines = (
        events.filter(pl.col("user_id").is_in(wanted.implode()))
        .sort(["user_id", "timestamp", "__row"])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("__item"))
    )
    found = dict(zip(timelines["user_id"].to_list(), timelines["__item"].to_list()))
    histories: dict[str, list[int]] = {user: list(found.get(raw[user], [])) for user in users}
    unknown = [user for user, timeline in histories.items() if not timeline]
    if unknown and fallback != "popular":
        raise TowerrecError(f"user(s) {unknown} have no history in the training data",
                            hint="pass --fallback popular to recommend the most popular items to them")
    return histories, histories
