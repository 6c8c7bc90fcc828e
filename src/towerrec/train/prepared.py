"""Config + data -> tensors ready for training and full-catalogue evaluation.

Everything string-like is resolved here, once: features are fitted on the
train split, each split becomes a dict of query tensors plus the catalogue
index of its target, and the whole catalogue's candidate features are encoded
once (the trainer gathers rows per batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec.config import LABELLED_KINDS, RankingConfig, RunConfig
from towerrec.data.filters import filter_interactions
from towerrec.data.registry import load_dataset
from towerrec.data.splits import Split, make_split, require_parts, require_rows
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError, shorten
from towerrec.features import FeatureSet, FittedFeatures, builtin_feature
from towerrec.features.spec import FeatureSpec, InputSpec
from towerrec.metrics.topk import CSR, gather_rows
from towerrec.model import USER_ROW


HISTORY = "user_history"
RATERS = "item_raters"  # candidate side: the users who rated the item in train (ranking models)


@dataclass
class EncodedExamples:
    """One split's examples: query features, target candidate index, user row.

    ``history`` ([num_users, L], catalogue index + 1, 0 = padding) adds the
    ``user_history`` query feature; with ``mask_targets`` (training) each
    example's own target is removed from its history. ``known`` (rows = user
    vocabulary rows) lists the items known about each user when these examples
    are queried: evaluation excludes them and EASE uses them as the query; None
    means the train items (:attr:`PreparedData.seen`).
    """

    queries: dict[str, Tensor]
    targets: Tensor  # [n] int64 index into the catalogue
    user_rows: Tensor  # [n] int64 index into the train-user vocabulary, -1 unknown
    history: Tensor | None = None
    mask_targets: bool = False
    known: CSR | None = None
    ratings: Tensor | None = None  # [n] float32 rating of each example, NaN where it has none (implicit data)
    user_groups: Tensor | None = None  # [n] int64 dense id of each example's user (unknown users apart too)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index: Tensor | slice) -> dict[str, Tensor]:
        """The query batch of rows ``index``: its query features, ``user_row`` and (with a history) ``user_history``."""
        batch = {name: value[index] for name, value in self.queries.items()}
        batch[USER_ROW] = self.user_rows[index]
        if self.history is not None:
            rows = self.user_rows[index]
            history = self.history[rows.clamp(min=0)] * (rows >= 0).unsqueeze(1)
            if self.mask_targets:
                history = history * (history != (self.targets[index] + 1).unsqueeze(1))
            batch[HISTORY] = history
        return batch


@dataclass
class PreparedData:
    """A dataset ready to train on, from :func:`prepare`: split, features fitted on train, everything encoded.

    ``catalogue`` holds the candidate features of all N items (name -> [N, ...] tensor, in
    candidate-index order); ``train`` / ``validation`` / ``test`` the encoded examples of each
    split part. Catalogue positions here are internal indices; raw ids are
    ``features.catalogue_ids`` and ``features.user_ids``.
    """

    dataset: Dataset
    split: Split
    features: FittedFeatures
    catalogue: dict[str, Tensor]
    train: EncodedExamples
    validation: EncodedExamples | None
    test: EncodedExamples
    seen: CSR  # train items of each train user (rows = user vocabulary rows)
    item_counts: Tensor  # [N] train interactions per catalogue item
    history: Tensor | None = None  # [num_users, L] recent train items (+1), when the model uses them

    @property
    def num_items(self) -> int:
        """N, the catalogue size (candidate indices 0..N-1)."""
        return len(self.features.catalogue_ids)

    @property
    def catalogue_ids(self) -> np.ndarray:
        """``[N]`` item ids in catalogue order."""
        return self.features.catalogue_ids

    @property
    def num_users(self) -> int:
        """Rows of the train-user vocabulary (users first seen later map to -1)."""
        return self.seen.indptr.shape[0] - 1

    def exclusions_for(self, user_rows: Tensor) -> CSR:
        """Per-query CSR of the items each query's user saw in train (none for unknown users)."""
        return gather_rows(self.seen, user_rows)

    def known_items(self, examples: EncodedExamples) -> Callable[[int, int], CSR]:
        """``known(start, stop)`` -> CSR of the items known for examples start..stop-1 when they are queried.

        Built per chunk of queries (never for a whole split at once): evaluation
        excludes these items and EASE uses them as the query's history.
        """
        known = self.seen if examples.known is None else examples.known
        return lambda start, stop: gather_rows(known, examples.user_rows[start:stop])


def merge_items_by_title(dataset: Dataset) -> Dataset:
    """Items that share a title become one (the lowest id), as with TFRS's title candidates."""
    if dataset.items is None:
        raise DataError("candidate_key = 'title' needs an items table with titles", file=dataset.name)
    canonical = dataset.items.group_by("title").agg(pl.col("item_id").min().alias("canonical"))
    mapping = dataset.items.join(canonical, on="title").select("item_id", "canonical")
    interactions = (
        dataset.interactions.join(mapping, on="item_id", how="left")
        .with_columns(pl.col("canonical").fill_null(pl.col("item_id")).alias("item_id"))
        .drop("canonical")
    )
    items = dataset.items.filter(pl.col("item_id").is_in(canonical["canonical"].implode()))
    return Dataset(
        name=dataset.name,
        interactions=interactions,
        items=items,
        users=dataset.users,
        fingerprint=dataset.fingerprint + ":by-title",
        meta=dataset.meta,
    )


def feature_specs(config: RunConfig, items: pl.DataFrame | None = None) -> list[FeatureSpec]:
    """Specs of the configured features: built-in names (``items`` resolves ``item:<column>`` names),
    tables spelling out a :class:`FeatureSpec`, or FeatureSpec objects.

    Raises:
        ConfigError: an unknown name, a bad table, or a spec listed on the other side than its ``side``.
    """
    schema = None if items is None else dict(items.schema)
    specs: list[FeatureSpec] = []
    for side, entries in (("query", config.model.query_features), ("candidate", config.model.candidate_features)):
        for entry in entries:
            if entry in (HISTORY, RATERS):  # derived from the split, not fitted
                continue
            if isinstance(entry, str):
                specs.extend(builtin_feature(entry, schema))
                continue
            spec = FeatureSpec.from_dict(entry) if isinstance(entry, dict) else entry
            if not isinstance(spec, FeatureSpec):
                raise ConfigError(f"[model] {side}_features: {shorten(entry)} is not a feature name, table or FeatureSpec")
            if spec.side != side:
                raise ConfigError(f"[model] {side}_features lists feature {spec.name!r}, whose side is {spec.side!r}",
                                  hint=f"move it to [model] {spec.side}_features")
            specs.append(spec)
    return specs


def with_item_features(config: RunConfig, dataset: Dataset, warn=None) -> Dataset:
    """Join the configured item-features table (``[data] item_features``) into the items, if any."""
    d = config.data
    if not d.item_features:
        return dataset
    from towerrec.features.item_table import join_item_features, parse_defaults

    return join_item_features(dataset, d.item_features, d.item_features_on, parse_defaults(d.item_feature_defaults),
                              warn=warn)


def history_input(config: RunConfig, num_items: int) -> list[InputSpec]:
    """The ``user_history`` input of the query tower, if the config asks for it."""
    if HISTORY not in config.model.query_features:
        return []
    return [InputSpec(HISTORY, "multi", num_items + 1, config.model.history_length)]


def item_raters(data: PreparedData, length: int) -> Tensor:
    """``[num_items, length]`` int64: each catalogue item's most recent ``length`` train raters (train-user
    row + 1, oldest first, 0-padded), the ``item_raters`` feature of a ranking model."""
    timestamps = data.split.train["timestamp"].fill_null(0).to_numpy() if "timestamp" in data.split.train.columns \
        else np.zeros(len(data.train), dtype=np.int64)
    return recent_history(data.train.targets.numpy(), data.train.user_rows.numpy(), timestamps, data.num_items, length)


def recent_history(user_rows: np.ndarray, items: np.ndarray, timestamps: np.ndarray, num_users: int, length: int) -> Tensor:
    """[num_users, length] of each user's most recent items (catalogue index + 1), oldest first, 0-padded."""
    order = np.lexsort((np.arange(len(user_rows)), timestamps, user_rows))
    users, items = user_rows[order], items[order]
    starts = np.searchsorted(users, users, side="left")
    ends = np.searchsorted(users, users, side="right")
    from_end = ends - 1 - np.arange(len(users))
    keep = from_end < length
    column = (np.minimum(ends - starts, length) - 1 - from_end)[keep]
    history = np.zeros((num_users, length), dtype=np.int64)
    history[users[keep], column] = items[keep] + 1
    return torch.from_numpy(history)


def catalogue_items(dataset: Dataset) -> pl.DataFrame:
    """The catalogue: the item table, or without one every item id of the interactions (all splits).

    Items with no train row (new items, or rare ones whose only events went to test)
    stay in the catalogue as cold items: ranked, never a reason to stop.
    """
    if dataset.items is not None:
        return dataset.items
    return dataset.interactions.select(pl.col("item_id").unique().sort())


def _encode(features: FittedFeatures, frame: pl.DataFrame, users: pl.DataFrame | None) -> EncodedExamples:
    targets = features.item_index(frame["item_id"].to_numpy())
    if (targets < 0).any():
        missing = frame["item_id"].filter(pl.Series(targets < 0)).to_list()
        raise DataError(f"item {shorten(missing[0])} ({len(set(missing))} item(s) in all) is in the interactions but "
                        "not in the item table", field="item_id", hint="list every interacted item in the item table")
    return EncodedExamples(
        queries=features.encode_queries(frame, users),
        targets=torch.as_tensor(targets, dtype=torch.int64),
        user_rows=torch.as_tensor(features.user_index(frame["user_id"].to_numpy()), dtype=torch.int64),
        ratings=torch.as_tensor(frame["rating"].cast(pl.Float32).fill_null(float("nan")).to_numpy().copy(),
                                dtype=torch.float32),
        user_groups=torch.as_tensor(np.unique(frame["user_id"].to_numpy(), return_inverse=True)[1].reshape(-1),
                                    dtype=torch.int64),
    )


def check_ratings(config: RunConfig, dataset: Dataset) -> None:
    """The ratings a ranking run reads: finite, within ``[ranking] rating_min..rating_max`` when declared,
    and present for every interaction when ``[ranking] label = "rating"``.

    Raises:
        DataError: naming the ``rating`` field, the first bad value and how many rows have one.
    """
    r = config.ranking
    ratings = dataset.interactions["rating"].cast(pl.Float64)
    present = ratings.drop_nulls()
    bad = present.filter(~present.is_finite())
    if bad.len():
        raise DataError(f"rating {_number(bad[0])} is not a finite number ({bad.len()} rating(s) in all)",
                        file=dataset.name, field="rating", hint="drop those rows, or leave the rating empty")
    low = -np.inf if r.rating_min is None else r.rating_min
    high = np.inf if r.rating_max is None else r.rating_max
    outside = present.filter((present < low) | (present > high))
    if outside.len():
        raise DataError(f"rating {_number(outside[0])} is outside the declared range {_number(low)}..{_number(high)} "
                        f"({outside.len()} rating(s) in all)", file=dataset.name, field="rating",
                        hint="fix the data, or widen [ranking] rating_min / rating_max")
    missing = ratings.null_count()
    if missing and r.label == "rating":
        what = "has no ratings (implicit feedback)" if missing == ratings.len() else f"has {missing} interaction(s) without a rating"
        raise DataError(f"the data {what}, but [ranking] label = \"rating\" trains on ratings", file=dataset.name,
                        field="rating", hint='use [ranking] label = "binary" (an interaction is a positive) with '
                                         "negatives > 0")


def ranking_labels(settings: RankingConfig, ratings: Tensor) -> Tensor:
    """``[n]`` float32 labels of examples with these ratings: the rating itself (``[ranking] label = "rating"``),
    or 1.0 for a rating >= ``threshold`` or a missing one (an implicit interaction) and 0.0 below it (``"binary"``)."""
    if settings.label == "rating":
        return ratings.float()
    return ((ratings >= settings.threshold) | torch.isnan(ratings)).float()


def _number(value: float) -> str:
    return f"{value:g}"


def prepare(config: RunConfig, dataset: Dataset | None = None, *, progress: bool = True) -> PreparedData:
    """Load (or take) the dataset, split it, fit features on train and encode everything.

    Args:
        config: the run configuration (its ``[data]`` and ``[model]`` sections matter here).
        dataset: the data to use; None loads ``config.data.dataset``.
        progress: show download / parse progress.
    Raises:
        DataError: data that cannot be loaded or split as configured (too few rows, no timestamps
            for a time-ordered split, ...).
        ConfigError: features that name unknown columns or kinds.
    """
    label = config.data.dataset if dataset is None else dataset.name  # as the user named it
    if dataset is None:
        dataset = load_dataset(config.data.dataset, config.data.data_dir, progress=progress,
                               duplicate_titles=config.data.duplicate_titles)
    if config.data.item_features and "item_features" not in dataset.meta:
        dataset = with_item_features(config, dataset, warn=_warn)
    if config.data.candidate_key == "title":
        dataset = merge_items_by_title(dataset)
    dataset = apply_filters(config, dataset)
    if config.model.kind in LABELLED_KINDS:
        check_ratings(config, dataset)
    split = _split(config, dataset, label)
    _warn_duplicate_titles(config, dataset)
    features = FeatureSet(feature_specs(config, dataset.items)).fit(split.train, catalogue_items(dataset), dataset.users)
    train = _encode(features, split.train, dataset.users)
    num_users = int(train.user_rows.max()) + 1 if len(train) else 0
    seen = CSR.from_pairs(train.user_rows.numpy(), train.targets.numpy(), num_rows=num_users)
    history = None
    if HISTORY in config.model.query_features:
        timestamps = split.train["timestamp"].fill_null(0).to_numpy()
        history = recent_history(
            train.user_rows.numpy(), train.targets.numpy(), timestamps, num_users, config.model.history_length
        )
        train.history, train.mask_targets = history, True
    validation = None if split.validation is None else _encode(features, split.validation, dataset.users)
    test = _encode(features, split.test, dataset.users)
    if validation is not None:
        validation.history = history
    test.history, test.known = history, None
    if validation is not None:
        # At test time the validation interactions are known, as on the sequential path: they are
        # fed as history and excluded from the ranking (users first seen in validation stay unknown).
        rows, items = _known_at_test(train, validation)
        test.known = CSR.from_pairs(rows, items, num_rows=num_users)
        if history is not None:
            stamps = np.concatenate([split.train["timestamp"].fill_null(0).to_numpy(),
                                     split.validation["timestamp"].fill_null(0).to_numpy()[validation.user_rows.numpy() >= 0]])
            test.history = recent_history(rows, items, stamps, num_users, config.model.history_length)
    return PreparedData(
        dataset=dataset,
        split=split,
        features=features,
        catalogue=features.encode_candidates(),
        train=train,
        validation=validation,
        test=test,
        seen=seen,
        item_counts=torch.bincount(train.targets, minlength=len(features.catalogue_ids)).float(),
        history=history,
    )


def _warn_duplicate_titles(config: RunConfig, dataset: Dataset) -> None:
    """Warns when the catalogue still lists one title under several ids (lists may show it twice)."""
    if config.data.candidate_key == "title" or dataset.items is None or "title" not in dataset.items.columns:
        return
    from towerrec.data.movielens import duplicate_title_ids

    twins = duplicate_title_ids(dataset.items)
    if twins:
        title, ids = next(iter(twins.items()))
        fix = ('[data] duplicate_titles = "merge"' if dataset.meta.get("source") == "movielens"
               else '[data] candidate_key = "title"')
        _warn(f"{len(twins)} title(s) are listed under several item ids (e.g. {title!r} = "
              f"{', '.join(str(i) for i in ids)}): a list can show one title twice; merge them with {fix}")


def apply_filters(config: RunConfig, dataset: Dataset, warn=None) -> Dataset:
    """``dataset`` after the ``[data]`` count and k-core filters (:mod:`towerrec.data.filters`), saying what went."""
    d = config.data
    dataset, report = filter_interactions(dataset, min_user_interactions=d.min_user_interactions,
                                          min_item_interactions=d.min_item_interactions, k_core=d.k_core)
    if report is not None and report.interactions[0] != report.interactions[1]:
        (warn or _warn)(f"the [data] interaction filters kept {report.describe()}")
    return dataset


def _known_at_test(train: EncodedExamples, validation: EncodedExamples) -> tuple[np.ndarray, np.ndarray]:
    """(user row, item) of every train interaction, then every validation one of a train user."""
    keep = validation.user_rows >= 0
    rows = np.concatenate([train.user_rows.numpy(), validation.user_rows[keep].numpy()])
    items = np.concatenate([train.targets.numpy(), validation.targets[keep].numpy()])
    return rows, items


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def _split(config: RunConfig, dataset: Dataset, label: str) -> Split:
    """The configured split; a clear error when it leaves a part empty."""
    d = config.data
    require_rows(label, dataset.interactions.height)
    if d.split == "leave-last-out":
        split = make_split(dataset.interactions, d.split, min_interactions=d.leave_last_out_min_interactions or 3)
    else:
        options = {"test_fraction": d.test_fraction, "validation_fraction": d.validation_fraction}
        if d.split == "tfrs-random":
            options["seed"] = d.seed
        split = make_split(dataset.interactions, d.split, **options)
    require_parts(split, label, dataset.interactions.height)
    return split


def history_lists(csr: CSR, rows: np.ndarray) -> list[np.ndarray]:
    """Item indices of each listed row, for printing and exclusion lists."""
    return [csr.indices[csr.indptr[r] : csr.indptr[r + 1]].numpy() if r >= 0 else np.array([], dtype=np.int64) for r in rows]
