"""Sequence data preparation: a dataset -> the configured protocol's padded tensors (:class:`SequenceData`).

Data become padded int tensors once: item index + 1 (0 = padding), LEFT-padded
so the most recent item sits in the last column. A training row holds
``inputs [L]`` and ``targets [L]`` (the item each step should predict, 0 = no
target); without ``all_positions`` only the last column has a target. Batches
are index slices of these tensors (:class:`towerrec.train.batches.SequenceBatches`);
an evaluation row's query batch is :meth:`SequenceExamples.select`.

Protocols (``[sequence] protocol``):

* ``tfrs-sequences``: the TFRS tutorial exactly (:func:`towerrec.data.sequences.build_sequence_examples`).
  The examples of one user land in both train and test: it leaks the future.
  "Seen items" of a test example are the items of its context. ``[sequence] validation_fraction``
  moves that fraction of the training examples (seeded by ``[data] seed``) to a validation split;
  the test examples stay as they are. With ``all_positions``, an inner step whose target is a
  validation label of the same user and position is not trained, as for test labels.
* ``leave-last-out``: per user (ratings >= ``min_rating``, time order), the last
  item is the test target and the second-last the validation target; training
  uses the rest, every position predicting the next item. Test contexts are the
  ``max_length`` most recent items before the target; "seen" is the whole
  earlier history. Users with fewer than ``min_timeline_length`` events only train.

Objectives (in-batch, full or sampled softmax) belong to the model
(:class:`towerrec.models.sequential.SequentialModel`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec.config import RunConfig
from towerrec.data.registry import load_dataset
from towerrec.data.sequences import build_sequence_examples
from towerrec.data.splits import require_rows
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError, shorten
from towerrec.metrics.topk import CSR
from towerrec.models.sequential import HISTORY, HISTORY_RATINGS, NUM_RATING_SLOTS, STEP_FEATURES, USER
from towerrec.train.prepared import apply_filters  # the [data] filters of the two-tower path, shared

YEAR_BUCKET = 5  # years per bucket for the "year" step feature
_POSITION_RANGE = 1 << 32  # timeline positions per user in a (user, position) key


@dataclass
class SequenceExamples:
    """Training rows (``targets`` ``[n, L]``) or evaluation rows (``targets`` ``[n]`` catalogue index).

    ``inputs`` ``[n, L]``: item index + 1, left-padded (most recent last); ``ratings`` ``[n, L]``: each
    step's rating slot (0 = pad / unknown) when the model reads ratings; ``seen`` (evaluation): the
    catalogue indices to exclude per row; ``user_ids``: each row's raw user id; ``users`` ``[n]``: user
    index + 1 (0 = not a training user), set by :func:`prepare_sequences`.
    """

    inputs: Tensor
    ratings: Tensor | None
    targets: Tensor
    seen: CSR | None = None
    user_ids: list | None = None
    users: Tensor | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def select(self, index: Tensor | slice) -> dict[str, Tensor]:
        """The query batch of rows ``index``: ``history`` ``[b, L]`` (+ ``history_ratings``, ``user`` when held)."""
        batch = {HISTORY: self.inputs[index]}
        if self.ratings is not None:
            batch[HISTORY_RATINGS] = self.ratings[index]
        if self.users is not None:
            batch[USER] = self.users[index]
        return batch


@dataclass
class SequenceData:
    """A dataset prepared for sequential retrieval (see the module docstring for the protocols).

    ``item_ids`` ``[N]``: catalogue ids (row i = catalogue index i); ``item_counts`` ``[N]``: training
    events per item (popularity); ``target_counts`` ``[N]``: training targets per item (the logQ of
    in-batch / sampled negatives); ``genres`` ``[N + 1, G]`` genre indices + 1 (row 0 = padding) and
    ``years`` ``[N + 1]`` year bucket + 1, for the genre/year step features; ``user_vocabulary``: the
    training users (user index i + 1 = ``user_vocabulary[i]``).
    """

    dataset: Dataset
    item_ids: np.ndarray
    titles: list[str]
    train: SequenceExamples
    validation: SequenceExamples | None
    test: SequenceExamples
    item_counts: Tensor
    genres: Tensor | None
    years: Tensor | None
    num_genres: int = 0
    num_year_buckets: int = 0
    user_vocabulary: list | None = None
    target_counts: Tensor | None = None

    @property
    def catalogue(self) -> dict[str, Tensor]:
        """Encoded candidate features of the catalogue: none (a sequential candidate is its item id)."""
        return {}

    @property
    def num_items(self) -> int:
        """Catalogue size N."""
        return len(self.item_ids)

    @property
    def catalogue_ids(self) -> np.ndarray:
        """``[N]`` item ids in catalogue order (as :attr:`FittedFeatures.catalogue_ids` on the two-tower path)."""
        return self.item_ids

    @property
    def genre_width(self) -> int:
        """Most genres of one item (columns of :attr:`genres`; 1 without the genre feature)."""
        return 1 if self.genres is None else int(self.genres.shape[1])

    def known_items(self, examples: SequenceExamples) -> Callable[[int, int], CSR | None]:
        """``known(start, stop)`` -> CSR of the items each of those evaluation rows has seen (excluded
        under the ``seen_excluded`` protocol); None for rows that record none."""
        seen = examples.seen
        return lambda start, stop: None if seen is None else seen.rows(slice(start, stop))


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

    Raises:
        ConfigError: ``[sequence]`` settings that contradict each other (heads, shared embeddings,
            unknown step features; leave-last-out with ``min_timeline_length`` < 3).
        DataError: an empty dataset, items missing from the item table, genre/year features
            without one, leave-last-out without timestamps.
    """
    s = config.sequence
    _check_sequence_config(config)
    label = config.data.dataset if dataset is None else dataset.name  # as the user named it
    if dataset is None:
        dataset = load_dataset(config.data.dataset, config.data.data_dir, progress=progress,
                               duplicate_titles=config.data.duplicate_titles)
    require_rows(label, dataset.interactions.height)
    dataset = apply_filters(config, dataset)
    item_ids, titles = catalogue_of(dataset)
    events = timeline_events(dataset, item_ids, s.min_rating, report=_warn)
    use_ratings = "rating" in s.step_features
    if s.protocol == "tfrs-sequences":
        train, validation, test = _tfrs_sequences(config, events, use_ratings)
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
    universe = (train_df, test_df)  # every (user, position) key is coded against the same users
    train_df, validation_df = _carve_validation(train_df, s.validation_fraction, config.data.seed)
    held_out = _timeline_keys(test_df if validation_df is None else pl.concat([test_df, validation_df]), *universe)

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
                targets[:, :-1][_inner_targets_held_out(frame, held_out, width, *universe)] = 0
            targets[:, -1] = label
            return SequenceExamples(torch.from_numpy(inputs), _t(ratings), torch.from_numpy(targets),
                                    user_ids=frame["user_id"].to_list())
        seen = _csr_of_ranges(item1[flat] - 1, ends, offsets)
        return SequenceExamples(torch.from_numpy(inputs), _t(ratings), torch.from_numpy(label - 1), seen,
                                frame["user_id"].to_list())

    validation = None if validation_df is None else encode(validation_df, train=False)
    return encode(train_df, train=True), validation, encode(test_df, train=False)


def _carve_validation(train_df: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """``(train, validation)``: ``round(fraction * n)`` of the ``n`` tutorial training examples, drawn with
    ``seed``, become validation examples (None at fraction 0); the test examples are not touched."""
    if not fraction:
        return train_df, None
    order = np.random.default_rng(seed).permutation(train_df.height)
    n_val = min(round(train_df.height * fraction), train_df.height)
    is_val = np.zeros(train_df.height, dtype=bool)
    is_val[order[:n_val]] = True
    mask = pl.Series(is_val)
    return train_df.filter(~mask), train_df.filter(mask)


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
    bad = sorted(set(s.step_features) - set(STEP_FEATURES))
    if bad:
        raise ConfigError(f"[sequence] step_features {bad} unknown; valid: {list(STEP_FEATURES)}")


