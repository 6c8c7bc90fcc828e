"""Sequential retrieval (workload W3): protocols, padded tensors, training, evaluation, run directories.

Data become padded int tensors once: item index + 1 (0 = padding), LEFT-padded
so the most recent item sits in the last column. A training row holds
``inputs [L]`` and ``targets [L]`` (the item each step should predict, 0 = no
target); without ``all_positions`` only the last column has a target. Batches
are index slices of these tensors.

Protocols (``[sequence] protocol``):

* ``tfrs-sequences``: the TFRS tutorial exactly (:func:`towerrec.data.sequences.build_sequence_examples`).
  The examples of one user land in both train and test: it leaks the future.
  "Seen items" of a test example are the items of its context.
* ``leave-last-out``: per user (ratings >= ``min_rating``, time order), the last
  item is the test target and the second-last the validation target; training
  uses the rest, every position predicting the next item. Test contexts are the
  ``max_length`` most recent items before the target; "seen" is the whole
  earlier history. Users with fewer than ``min_timeline_length`` events only train.

Objectives (``[sequence] objective``): in-batch softmax over the batch's unique
targets (exact and fast, :mod:`towerrec.tasks.unique_softmax`, with the [task]
options), full softmax over the catalogue, or sampled softmax with
popularity-drawn shared negatives and logQ correction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec import fsio
from towerrec.config import RunConfig
from towerrec.data.registry import load_dataset
from towerrec.data.sequences import build_sequence_examples
from towerrec.data.splits import require_rows
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError, TowerrecError, shorten
from towerrec.metrics.topk import CSR, DEFAULT_KS, SCORE_BUDGET, Ties, rank_targets, summarize
from towerrec.models.sequential import HISTORY, HISTORY_RATINGS, NUM_RATING_SLOTS, TARGETS, USER, SequentialModel
from towerrec.train.checkpoint import RETRAIN_HINT, load_json, save_json, save_weights
from towerrec.train.evaluate import PROTOCOLS
from towerrec.train.models import retrieval_task
from towerrec.train.trainer import Trainer

EVAL_CHUNK = 8192
USERS_FILE = "users.parquet"  # a run's training users, when it has a user embedding
YEAR_BUCKET = 5  # years per bucket for the "year" step feature
_POSITION_RANGE = 1 << 32  # timeline positions per user in a (user, position) key


# -- data ----------------------------------------------------------------------
@dataclass
class SequenceExamples:
    """Training rows (``targets`` [n, L]) or evaluation rows (``targets`` [n] catalogue index)."""

    inputs: Tensor  # [n, L] item index + 1, left-padded
    ratings: Tensor | None  # [n, L] rating slot (0 = pad / unknown), when the model uses ratings
    targets: Tensor
    seen: CSR | None = None  # evaluation: items to exclude per row (catalogue indices)
    user_ids: list | None = None  # the raw user id of each row
    users: Tensor | None = None  # [n] user index + 1 (0 = not a training user), set by prepare_sequences

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class SequenceData:
    dataset: Dataset
    item_ids: np.ndarray  # catalogue ids, row i = catalogue index i
    titles: list[str]
    train: SequenceExamples
    validation: SequenceExamples | None
    test: SequenceExamples
    item_counts: Tensor  # [N] popularity: training events per item (see prepare_sequences)
    genres: Tensor | None  # [N + 1, G] genre indices + 1 (row 0 = padding)
    years: Tensor | None  # [N + 1] year bucket + 1
    num_genres: int = 0
    num_year_buckets: int = 0
    user_vocabulary: list | None = None  # training users; user index i + 1 = user_vocabulary[i]
    target_counts: Tensor | None = None  # [N] training targets per item: the in-batch/sampled negatives' logQ

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def left_pad(values: np.ndarray, ends: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """``[n, width]``: row r = the last ``min(lengths[r], width)`` of ``values[ends[r] - lengths[r]:ends[r]]``,
    right-aligned, 0 before them."""
    take = np.minimum(lengths, width)
    cols = np.arange(width)
    src = ends[:, None] - width + cols[None, :]
    valid = cols[None, :] >= (width - take)[:, None]
    out = np.zeros((len(ends), width), dtype=np.int64)
    out[valid] = values[src[valid]]
    return out


def _csr_of_ranges(values: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> CSR:
    indptr = np.zeros(len(ends) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    starts = np.repeat(ends - lengths, lengths)
    flat = starts + np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    return CSR(torch.from_numpy(indptr), torch.from_numpy(values[flat].astype(np.int64)))


def catalogue_of(dataset: Dataset) -> tuple[np.ndarray, list[str]]:
    """Item ids (sorted) and titles: the item table's items, else the items in interactions."""
    if dataset.items is not None:
        items = dataset.items.select("item_id", "title").unique("item_id").sort("item_id")
        return items["item_id"].to_numpy(), [str(t) for t in items["title"].to_list()]
    ids = dataset.interactions["item_id"].unique().sort()
    return ids.to_numpy(), [str(i) for i in ids.to_list()]


def _item_lookup(item_ids: np.ndarray, dtype) -> pl.DataFrame:
    return pl.DataFrame({"item_id": pl.Series(item_ids.tolist(), dtype=dtype),
                         "__item": np.arange(len(item_ids), dtype=np.int64)})


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def timeline_events(dataset: Dataset, item_ids: np.ndarray, min_rating: float | None, report=None) -> pl.DataFrame:
    """Interactions with their catalogue index and rating slot, filtered by rating; input row order.

    ``report(message)``, if given, hears how many rows ``min_rating`` removed (when any did).
    """
    inter = dataset.interactions
    events = inter.select("user_id", "item_id", "rating", "timestamp").join(
        _item_lookup(item_ids, inter.schema["item_id"]), on="item_id", how="left", maintain_order="left")
    missing = events["__item"].null_count()
    if missing:
        bad = events.filter(pl.col("__item").is_null())["item_id"][0]
        raise DataError(f"item {shorten(bad)} is in the interactions but not in the item table", field="item_id")
    if min_rating is not None:
        before = events.height
        events = events.filter(pl.col("rating").is_null() | (pl.col("rating") >= min_rating))
        if report is not None and events.height < before:
            report(f"[sequence] min_rating = {min_rating:g} removed {before - events.height:,} of {before:,} "
                   f"interactions (rated below {min_rating:g}); min_rating = false keeps every rating")
    slot = (pl.col("rating").round(0).clip(0, NUM_RATING_SLOTS - 2) + 1).fill_null(0).cast(pl.Int64)
    return events.with_columns(__slot=slot)


def _item_side(dataset: Dataset, item_ids: np.ndarray, step_features: tuple[str, ...]):
    genres = years = None
    num_genres = num_years = 0
    items = dataset.items
    if items is None:
        if {"genre", "year"} & set(step_features):
            raise DataError("the genre/year step features need an item table", file=dataset.name)
        return genres, years, num_genres, num_years
    lookup = pl.DataFrame({"item_id": pl.Series(item_ids.tolist(), dtype=items.schema["item_id"])})
    table = lookup.join(items.unique("item_id"), on="item_id", how="left", maintain_order="left")
    if "genre" in step_features:
        names = sorted({g for gs in table["genres"].to_list() if gs for g in gs})
        index = {g: i + 1 for i, g in enumerate(names)}
        lists = [[index[g] for g in (gs or [])] for gs in table["genres"].to_list()]
        width = max(1, max((len(x) for x in lists), default=1))
        matrix = np.zeros((len(item_ids) + 1, width), dtype=np.int64)
        for row, gs in enumerate(lists, start=1):
            matrix[row, : len(gs)] = gs
        genres, num_genres = torch.from_numpy(matrix), len(names)
    if "year" in step_features:
        year = table["year"].cast(pl.Float64).to_numpy()
        known = ~np.isnan(year)
        low = np.nanmin(year) if known.any() else 0
        bucket = np.where(known, (np.nan_to_num(year) - low) // YEAR_BUCKET + 1, 0).astype(np.int64)
        years = torch.from_numpy(np.concatenate([[0], bucket]))
        num_years = int(bucket.max()) if bucket.size else 0
    return genres, years, num_genres, num_years


def prepare_sequences(config: RunConfig, dataset: Dataset | None = None, *, progress: bool = True) -> SequenceData:
    """Load (or take) the dataset and build the configured protocol's padded tensors.

    Popularity (``item_counts``: the popularity baseline, the ``--fallback popular``
    list, a run's ``train_count``) counts each item's training events, as on the
    two-tower path: under ``leave-last-out`` every event before a user's validation
    item, under ``tfrs-sequences`` the label event of every training example.
    ``target_counts`` (what training predicts, inner positions included) sets logQ
    and sampled negatives.
    """
    s = config.sequence
    _check_sequence_config(config)
    label = config.data.dataset if dataset is None else dataset.name  # as the user named it
    if dataset is None:
        dataset = load_dataset(config.data.dataset, config.data.data_dir, progress=progress,
                               duplicate_titles=config.data.duplicate_titles)
    require_rows(label, dataset.interactions.height)
    from towerrec.train.prepared import apply_filters

    dataset = apply_filters(config, dataset)
    item_ids, titles = catalogue_of(dataset)
    events = timeline_events(dataset, item_ids, s.min_rating, report=_warn)
    use_ratings = "rating" in s.step_features
    if s.protocol == "tfrs-sequences":
        train, test = _tfrs_sequences(config, events, use_ratings)
        validation = None
        train_events = train.targets[:, -1] - 1  # one training example per label event
    else:
        train, validation, test, train_events = _leave_last_out(config, events, use_ratings)
    counts = torch.bincount(train_events, minlength=len(item_ids)).float()
    flat_targets = train.targets[train.targets > 0] - 1
    target_counts = torch.bincount(flat_targets, minlength=len(item_ids)).float()
    genres, years, num_genres, num_years = _item_side(dataset, item_ids, s.step_features)
    vocabulary = sorted(set(train.user_ids or []))
    for examples in (train, validation, test):
        if examples is not None:
            examples.users = user_indices(examples.user_ids or [], vocabulary)
    return SequenceData(dataset, item_ids, titles, train, validation, test, counts, genres, years, num_genres,
                        num_years, vocabulary, target_counts)


def require_examples(config: RunConfig, dataset: str, data: SequenceData) -> None:
    """One clear error when the protocol leaves a part without examples (before any model is built)."""
    s = config.sequence
    parts = (data.train, data.validation, data.test)
    named = [(n, p) for n, p in zip(("train", "validation", "test"), parts) if p is not None]
    for name, part in named:
        if part.inputs.shape[0] == 0:
            counts = ", ".join(f"{n} {p.inputs.shape[0]}" for n, p in named)
            raise DataError(
                f"dataset {dataset!r}: the sequential {s.protocol} protocol leaves 0 {name} examples "
                f"({data.dataset.interactions.height} interactions"
                f"{'' if s.min_rating is None else f', kept when rating >= {s.min_rating:g}'}; {counts})",
                hint="timelines need at least [sequence] min_timeline_length "
                     f"({s.min_timeline_length}) events: use more data or lower min_rating / min_timeline_length",
            )


def user_indices(user_ids: list, vocabulary: list) -> Tensor:
    """User index + 1 of each id in ``vocabulary`` (sorted), 0 for ids outside it."""
    position = {u: i + 1 for i, u in enumerate(vocabulary)}
    return torch.tensor([position.get(u, 0) for u in user_ids], dtype=torch.int64)


def _tfrs_sequences(config: RunConfig, events: pl.DataFrame, use_ratings: bool):
    s, width = config.sequence, config.sequence.max_length
    # Build on event row numbers so contexts can be mapped to items AND ratings afterwards.
    rows = events.with_row_index("__event").with_columns(pl.col("__event").cast(pl.Int64))
    train_df, test_df = build_sequence_examples(
        rows.select("user_id", pl.col("__event").alias("item_id"), "rating", "timestamp"),
        min_rating=None,  # already applied
        min_timeline_length=s.min_timeline_length,
        max_context_length=width,
        train_fraction=s.train_fraction,
        seed=config.data.seed,
    )
    item1 = rows["__item"].to_numpy() + 1
    slots = rows["__slot"].to_numpy()
    held_out = _timeline_keys(test_df, train_df, test_df)

    def encode(frame: pl.DataFrame, *, train: bool) -> SequenceExamples:
        ctx = frame["context"]
        offsets = ctx.list.len().to_numpy().astype(np.int64)
        flat = ctx.explode().to_numpy().astype(np.int64) if frame.height else np.zeros(0, dtype=np.int64)
        ends = np.cumsum(offsets)
        inputs = left_pad(item1[flat], ends, offsets, width)
        ratings = left_pad(slots[flat], ends, offsets, width) if use_ratings else None
        label = item1[frame["label_item_id"].to_numpy()]
        if train:
            targets = np.zeros_like(inputs)
            if s.all_positions:
                targets[:, :-1] = inputs[:, 1:]
                targets[:, :-1][_inner_targets_held_out(frame, held_out, width, train_df, test_df)] = 0
            targets[:, -1] = label
            return SequenceExamples(torch.from_numpy(inputs), _t(ratings), torch.from_numpy(targets),
                                    user_ids=frame["user_id"].to_list())
        seen = _csr_of_ranges(item1[flat] - 1, ends, offsets)
        return SequenceExamples(torch.from_numpy(inputs), _t(ratings), torch.from_numpy(label - 1), seen,
                                frame["user_id"].to_list())

    return encode(train_df, train=True), encode(test_df, train=False)


def _timeline_keys(frame: pl.DataFrame, *universe: pl.DataFrame) -> np.ndarray:
    """One int64 per (user, timeline position) of ``frame``'s labels, comparable across ``universe``."""
    users = pl.concat([u.select(pl.col("user_id").cast(pl.String)) for u in universe])["user_id"].unique().sort()
    codes = frame.select(pl.col("user_id").cast(pl.String).replace_strict(users, pl.int_range(len(users), eager=True),
                                                                          return_dtype=pl.Int64))
    return codes["user_id"].to_numpy() * _POSITION_RANGE + frame["position"].to_numpy()


def _inner_targets_held_out(frame: pl.DataFrame, held_out: np.ndarray, width: int,
                            *universe: pl.DataFrame) -> np.ndarray:
    """``[n, width - 1]`` mask of inner targets that are test labels of the same user.

    All-positions training under the tutorial protocol would otherwise train on
    test pairs: column c of a right-aligned context ending before label position p
    predicts the item at position ``p - width + c + 1``, which is a test example's
    label whenever that (user, position) landed in the 10% test part.
    """
    keys = _timeline_keys(frame, *universe)
    inner = keys[:, None] - width + np.arange(1, width)[None, :]
    return np.isin(inner, held_out)


def _t(array: np.ndarray | None) -> Tensor | None:
    return None if array is None else torch.from_numpy(array)


def _leave_last_out(config: RunConfig, events: pl.DataFrame, use_ratings: bool):
    s, width = config.sequence, config.sequence.max_length
    if s.min_timeline_length < 3:
        raise ConfigError("[sequence] leave-last-out needs min_timeline_length >= 3 (train, validation, test)")
    missing = events["timestamp"].null_count()
    if missing:  # as every time-ordered protocol: file order is not time order
        raise DataError(
            f"the sequential leave-last-out protocol orders events by time, but {missing:,} of {events.height:,} "
            "interactions have no timestamp",
            field="timestamp",
            hint="import the table with --timestamp COLUMN",
        )
    ordered = events.with_row_index("__row").sort(["user_id", "timestamp", "__row"])
    items = ordered["__item"].to_numpy().astype(np.int64)
    slots = ordered["__slot"].to_numpy().astype(np.int64)
    users = ordered["user_id"]
    bounds = np.flatnonzero(np.concatenate([[True], (users[1:] != users[:-1]).to_numpy(), [True]]))
    starts, ends = bounds[:-1], bounds[1:]
    lengths = ends - starts
    user_ids = users.gather(starts).to_list()
    held = lengths >= s.min_timeline_length
    train_len = np.where(held, lengths - 2, lengths)  # the part training sees
    # training rows: inputs = items[:train_len - 1], targets = items[1:train_len] (last `width` of them)
    has_pair = train_len >= 2
    t_end, t_len = (starts + train_len)[has_pair], (train_len - 1)[has_pair]
    inputs = left_pad(items + 1, t_end - 1, t_len, width)
    targets = left_pad(items + 1, t_end, t_len, width)
    ratings = left_pad(slots, t_end - 1, t_len, width) if use_ratings else None
    train = SequenceExamples(torch.from_numpy(inputs), _t(ratings), torch.from_numpy(targets),
                             user_ids=[u for u, pair in zip(user_ids, has_pair) if pair])

    def held_out(offset: int) -> SequenceExamples:
        label_pos = (ends - offset)[held]
        ctx_len = (lengths - offset)[held]
        sel_users = [u for u, h in zip(user_ids, held) if h]
        return SequenceExamples(
            torch.from_numpy(left_pad(items + 1, label_pos, ctx_len, width)),
            _t(left_pad(slots, label_pos, ctx_len, width)) if use_ratings else None,
            torch.from_numpy(items[label_pos]),
            _csr_of_ranges(items, label_pos, ctx_len),
            sel_users,
        )

    train_rows = np.repeat(starts, train_len) + np.arange(train_len.sum()) - np.repeat(np.cumsum(train_len) - train_len, train_len)
    return train, held_out(2), held_out(1), torch.from_numpy(items[train_rows])


def _check_sequence_config(config: RunConfig) -> None:
    s = config.sequence  # ranges of single values: towerrec.config.BOUNDS, checked at load
    if s.encoder == "sasrec" and config.model.embedding_dim % s.num_heads:
        raise ConfigError(f"[model] embedding_dim {config.model.embedding_dim} must be divisible by "
                          f"[sequence] num_heads {s.num_heads}")
    if s.shared_embeddings and s.hidden_dim not in (None, config.model.embedding_dim):
        raise ConfigError("[sequence] shared_embeddings needs hidden_dim == [model] embedding_dim")
    from towerrec.models.sequential import STEP_FEATURES

    bad = sorted(set(s.step_features) - set(STEP_FEATURES))
    if bad:
        raise ConfigError(f"[sequence] step_features {bad} unknown; valid: {list(STEP_FEATURES)}")


# -- model ---------------------------------------------------------------------
def sequential_model_for(config: RunConfig, num_items: int, num_genres: int = 0, num_year_buckets: int = 0,
                         genre_width: int = 1, num_users: int = 0) -> SequentialModel:
    s, m = config.sequence, config.model
    return SequentialModel(
        num_items,
        embedding_dim=m.embedding_dim,
        encoder=s.encoder,
        max_length=s.max_length,
        hidden_dim=s.hidden_dim,
        num_blocks=s.num_blocks,
        num_heads=s.num_heads,
        dropout=m.dropout,
        shared_embeddings=s.shared_embeddings,
        init=m.init,
        step_features=s.step_features,
        num_genres=num_genres,
        num_year_buckets=num_year_buckets,
        genre_width=genre_width,
        num_users=num_users if s.user_embedding else 0,
        task=retrieval_task(config),
        objective=s.objective,
        num_sampled=s.num_sampled,
        all_positions=s.all_positions or s.protocol == "leave-last-out",
    )


def build_sequential_model(config: RunConfig, data: SequenceData) -> SequentialModel:
    torch.manual_seed(config.train.seed)
    model = sequential_model_for(config, data.num_items, data.num_genres, data.num_year_buckets, _genre_width(data),
                                 len(data.user_vocabulary or []))
    model.set_item_features(data.genres, data.years)
    return model


# -- evaluation ----------------------------------------------------------------
@torch.no_grad()
def encode_histories(model: SequentialModel, inputs: Tensor, ratings: Tensor | None = None,
                     users: Tensor | None = None) -> Tensor:
    model.eval()
    parts = [model.encode(inputs[s : s + EVAL_CHUNK], None if ratings is None else ratings[s : s + EVAL_CHUNK],
                          None if users is None else users[s : s + EVAL_CHUNK])
             for s in range(0, inputs.shape[0], EVAL_CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0, model.candidate_weight().shape[1])


@torch.no_grad()
def evaluate_sequence_protocols(model: SequentialModel, examples: SequenceExamples, *, ks=DEFAULT_KS,
                                protocols=PROTOCOLS, ties: Ties = "random",
                                score_budget: int = SCORE_BUDGET) -> dict[str, dict[str, float]]:
    """Full-catalogue metrics of the last-step queries under each protocol, from one scoring pass.

    ``seen_excluded`` removes each row's known items (its whole earlier timeline);
    ``tfrs`` keeps them. Queries are encoded per chunk of scores, so memory is
    bounded by one [chunk, N] score matrix. Ties never count for the target.
    """
    candidates_t = model.candidate_weight().detach().T.contiguous()

    def scores(start: int, stop: int) -> Tensor:
        users = None if examples.users is None else examples.users[start:stop]
        ratings = None if examples.ratings is None else examples.ratings[start:stop]
        return encode_histories(model, examples.inputs[start:stop], ratings, users) @ candidates_t

    return _rank_protocols(scores, examples, candidates_t.shape[1], ks, protocols, ties, score_budget)


def _rank_protocols(scores, examples: SequenceExamples, num_items: int, ks, protocols, ties: Ties,
                    score_budget: int = SCORE_BUDGET):
    seen = examples.seen

    def known(start: int, stop: int) -> CSR | None:
        return None if seen is None else seen.rows(slice(start, stop))

    ranks = rank_targets(scores, examples.targets, num_items,
                         protocols={name: known if name == "seen_excluded" else None for name in protocols},
                         score_budget=score_budget)
    return {name: summarize(ranks[name], ks, ties=ties) for name in protocols}


def evaluate_sequences(model: SequentialModel, examples: SequenceExamples, *, ks=DEFAULT_KS,
                       exclude_seen: bool = True, ties: Ties = "random") -> dict[str, float]:
    """Full-catalogue metrics under one protocol; ``exclude_seen`` removes each row's history items."""
    protocol = "seen_excluded" if exclude_seen else "tfrs"
    return evaluate_sequence_protocols(model, examples, ks=ks, protocols=(protocol,), ties=ties)[protocol]


def popularity_metrics(data: SequenceData, examples: SequenceExamples, *, ks=DEFAULT_KS,
                       exclude_seen: bool = True, ties: Ties = "random") -> dict[str, float]:
    """The popularity baseline (:attr:`SequenceData.item_counts`) under the same protocol."""
    counts = data.item_counts

    def scores(start: int, stop: int) -> Tensor:
        return counts.expand(stop - start, -1).clone()

    protocol = "seen_excluded" if exclude_seen else "tfrs"
    return _rank_protocols(scores, examples, data.num_items, ks, (protocol,), ties)[protocol]


def evaluate_both(model: SequentialModel, examples: SequenceExamples, ks) -> dict[str, dict[str, float]]:
    return evaluate_sequence_protocols(model, examples, ks=ks)


# -- training ------------------------------------------------------------------
class SequenceBatches:
    """Sequence data as the trainer reads it: padded training rows, sequence metrics per split."""

    def __init__(self, data: SequenceData, *, ks=DEFAULT_KS, exclude_seen: bool = True) -> None:
        self.data, self.ks, self.exclude_seen = data, tuple(ks), exclude_seen
        self.has_validation = data.validation is not None
        self.metric_names = {"mrr", *(f"top_{k}_accuracy" for k in self.ks), *(f"ndcg@{k}" for k in self.ks)}

    def __len__(self) -> int:
        return len(self.data.train)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        train = self.data.train
        batch = {HISTORY: train.inputs[index], TARGETS: train.targets[index]}
        if train.ratings is not None:
            batch[HISTORY_RATINGS] = train.ratings[index]
        if train.users is not None:
            batch[USER] = train.users[index]
        return batch

    def attach(self, model: SequentialModel) -> None:
        data = self.data
        model.set_candidate_counts(data.target_counts if data.target_counts is not None else data.item_counts)

    def evaluate(self, model: SequentialModel, split: str) -> dict[str, float] | None:
        examples = self.data.validation if split == "validation" else self.data.test
        if examples is None:
            return None
        return evaluate_sequences(model, examples, ks=self.ks, exclude_seen=self.exclude_seen)


def train_sequential_run(config: RunConfig, *, runs_root: Path, retrain: bool, progress: bool,
                         dataset: Dataset | None, log):
    """Like :func:`towerrec.runs.train_run`, for ``[model] kind = "sequential"`` (same run bookkeeping)."""
    from towerrec.runs import train_in_run_dir

    data = prepare_sequences(config, dataset, progress=progress)
    require_examples(config, config.data.dataset if dataset is None else dataset.name, data)

    def train(run_dir: Path) -> tuple[dict[str, Any], SequentialModel]:
        save_json({"num_items": data.num_items, "num_genres": data.num_genres,
                   "num_year_buckets": data.num_year_buckets, "genre_width": _genre_width(data),
                   "num_users": len(data.user_vocabulary or [])}, run_dir / "sequence.json")
        with fsio.io_errors(run_dir):
            if config.sequence.user_embedding:
                pl.DataFrame({"user_id": pl.Series(data.user_vocabulary,
                                                   dtype=data.dataset.interactions.schema["user_id"])}
                             ).write_parquet(run_dir / USERS_FILE)
            frame = pl.DataFrame({"item_id": pl.Series(data.item_ids.tolist(),
                                                       dtype=data.dataset.interactions.schema["item_id"]),
                                  "title": data.titles, "train_count": data.item_counts.numpy()})
            frame.write_parquet(run_dir / "catalogue.parquet")
        model = build_sequential_model(config, data)
        trainer = Trainer.from_config(config, SequenceBatches(data, ks=config.eval.ks,
                                                              exclude_seen=config.eval.exclude_seen),
                                      model, checkpoint_dir=run_dir / "checkpoints",
                                      history_path=run_dir / "history.jsonl", progress=progress)
        if trainer.checkpointer is not None and trainer.checkpointer.exists():
            log(f"resuming {run_dir} from its last checkpoint")
        fit = trainer.fit()
        save_weights(model, run_dir / "model.safetensors")
        metrics: dict[str, Any] = {
            "train_seconds": round(fit.train_seconds, 3),
            "examples_per_s": round(fit.examples_per_s, 1),
            "epochs_run": len(fit.history),
            "stopped_early": fit.stopped_early,
            "best_epoch": fit.best_epoch,
            "resumed_from_epoch": fit.resumed_from_epoch,
            "test": evaluate_both(model, data.test, config.eval.ks),
        }
        if data.validation is not None:
            metrics["validation"] = evaluate_both(model, data.validation, config.eval.ks)
        return metrics, model

    return train_in_run_dir(config, data.dataset.fingerprint, runs_root, retrain=retrain, log=log, data=data,
                            train=train)


def load_sequential_model(config: RunConfig, run_dir: Path) -> SequentialModel:
    """The untrained model of a sequential run, shaped by its ``sequence.json``."""
    path = run_dir / "sequence.json"
    return sequential_model_from_shape(config, load_json(path), path, hint=RETRAIN_HINT)


def sequential_model_from_shape(config: RunConfig, shape: Any, path: Path, *, hint: str) -> SequentialModel:
    """The model ``shape`` (the JSON of ``path``) describes; a foreign shape is one error naming ``path``."""
    try:
        sizes = [shape["num_items"], shape["num_genres"], shape["num_year_buckets"], shape.get("genre_width", 1),
                 shape.get("num_users", 0)]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 40 for v in sizes):
            raise ValueError("sizes must be non-negative integers")
        return sequential_model_for(config, *sizes)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise TowerrecError(f"{path}: unreadable model shape ({error})", hint=hint) from None


def run_user_indices(run, user_ids: list) -> Tensor | None:
    """User index + 1 of raw ids for a run with a user embedding (0 = unknown); None without one."""
    if not getattr(run.model, "num_users", 0):
        return None
    vocabulary = fsio.read_parquet(run.run_dir / USERS_FILE, hint="retrain the run with --retrain")["user_id"]
    typed = pl.Series([None if u is None else str(u) for u in user_ids], dtype=pl.String).cast(vocabulary.dtype, strict=False)  # "42" -> 42; bad -> null
    return user_indices(typed.to_list(), vocabulary.to_list())


def _genre_width(data: SequenceData) -> int:
    return 1 if data.genres is None else int(data.genres.shape[1])


# -- recommendation ------------------------------------------------------------
def _coerce_items(raw: list[str], catalogue: pl.DataFrame) -> list[Any]:
    if catalogue.schema["item_id"] == pl.Int64:
        out = []
        for value in raw:
            try:
                out.append(int(value))
            except ValueError as exc:
                raise TowerrecError(f"--history item {value!r} is not an integer, as this dataset's ids are") from exc
        return out
    return list(raw)


def history_to_indices(items: list[Any], catalogue: pl.DataFrame, *, unknown: str = "warn",
                       max_length: int | None = None, warn=None) -> list[int]:
    """Catalogue indices of a history (oldest first). Unknown ids warn (and are dropped) or raise;
    longer histories keep their ``max_length`` most recent items."""
    index = {v: i for i, v in enumerate(catalogue["item_id"].to_list())}
    missing = [v for v in items if v not in index]
    if missing:
        if unknown == "error":
            raise TowerrecError(f"history item id(s) {missing} are not in the catalogue",
                                hint="set [sequence] unknown_items = 'warn' to ignore them")
        message = f"ignoring history item id(s) not in the catalogue: {missing}"
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(message)
    kept = [index[v] for v in items if v in index]
    return kept[-max_length:] if max_length else kept


def recommend_from_histories(run, histories: dict[str, list[int]], *, k: int = 10, exclude_seen: bool = True,
                             fallback: str | None = None, seen: dict[str, list[int]] | None = None,
                             users: dict[str, Any] | None = None):
    """Top ``k`` per named history (catalogue indices, oldest first). Empty histories get popular items
    with ``fallback='popular'``, else raise. ``users`` maps a history's name to its raw user id, for
    runs with a user embedding (other histories query by their items alone). A history that leaves
    fewer than ``k`` unseen items gets those left (a shorter list), never an error."""
    from towerrec.recommend import Recommendation

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
    results: dict[str, list] = {}
    named = [name for name, h in histories.items() if h]
    width = run.config.sequence.max_length
    if named:
        rows = [histories[name][-width:] for name in named]
        inputs = torch.zeros(len(rows), width, dtype=torch.int64)
        for r, h in enumerate(rows):
            inputs[r, width - len(h):] = torch.as_tensor(h, dtype=torch.int64) + 1
        ratings = torch.zeros_like(inputs) if "rating" in run.config.sequence.step_features else None
        user_index = run_user_indices(run, [(users or {}).get(name) for name in named])
        queries = encode_histories(run.model, inputs, ratings, user_index)
        scores = queries @ run.model.candidate_weight().detach().t()
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


def user_histories(run, users: list[str], *, fallback: str | None = None,
                   all_users: bool = False) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Each user's full timeline (ratings >= min_rating, time order) as catalogue indices: (recent, seen).

    One pass over the events for all users; ``all_users`` adds every user with a timeline.
    An id this dataset cannot hold ("dd42" on integer ids) is an unknown user.
    """
    config = run.config
    dataset = load_dataset(config.data.dataset, config.data.data_dir, progress=False,
                           duplicate_titles=config.data.duplicate_titles)
    if dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the dataset changed since this run was trained",
                            hint="retrain the run on the current data")
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


def evaluate_sequential_run(run, split: str = "test", include_seen: bool = False) -> dict[str, float]:
    """Re-evaluate a finished sequential run on its protocol's split."""
    config = run.config
    data = prepare_sequences(config, progress=False)
    if data.dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the dataset changed since this run was trained",
                            hint="retrain the run on the current data")
    run.model.set_item_features(data.genres, data.years)
    examples = {"test": data.test, "validation": data.validation}.get(split)
    if examples is None:
        raise TowerrecError(f"split {split!r} does not exist for this run", hint="use --split test")
    return evaluate_sequences(run.model, examples, ks=config.eval.ks, exclude_seen=not include_seen)
