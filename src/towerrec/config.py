"""Run configuration: frozen dataclasses loadable from TOML.

``RunConfig()`` is the ``default`` preset (towerrec's best two-tower model on
MovieLens-100K, ``configs/w1_default.toml``) apart from its name: the query
tower reads ``user_id`` and ``user_history`` (the 100 most recent train items),
embeddings of 64, towers ending in an MLP ``[128, 64]``, cosine similarity,
temperature 0.1, logQ-corrected in-batch softmax with accidental-hit removal,
10 epochs of Adam 0.005 at batch 1024, evaluated every 5 epochs. A key a TOML
file or dict leaves out takes that value; the other presets and shipped
configs state every key where they differ (``tests/test_config_defaults.py``).

A configuration's hash together with the data fingerprint names the run
directory, so a cached model is reused only when both match. Unknown keys are
errors that list the valid ones: a typo never silently trains another model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w

from towerrec.errors import ConfigError, shorten, shorten_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is split. ``candidate_key = "title"`` merges items
    sharing a title, as the TFRS tutorials (which use titles as candidates) do.
    ``duplicate_titles`` (MovieLens only): ``"merge"`` (default) folds a movie
    listed under two ids into its lowest id when the data is prepared, ``"keep"``
    keeps the ids apart; it is part of the dataset fingerprint."""

    dataset: str = "movielens-100k"
    data_dir: str | None = None
    split: Literal["tfrs-random", "temporal", "leave-last-out"] = "tfrs-random"
    test_fraction: float = 0.2
    validation_fraction: float = 0.0
    seed: int = 42
    candidate_key: Literal["item_id", "title"] = "item_id"
    duplicate_titles: Literal["merge", "keep"] = "merge"
    # Extra item columns from a user-supplied CSV/Parquet table joined on ``item_features_on``
    # (that file's id column; default "item_id"). See towerrec.features.item_table.
    item_features: str | None = None
    item_features_on: str | None = None
    item_feature_defaults: tuple[str, ...] | None = None  # e.g. ["length=90"]: value for items the table lacks
    # Interaction filters, applied before the split (towerrec.data.filters); absent = off.
    min_user_interactions: int | None = None  # drop users with fewer interactions
    min_item_interactions: int | None = None  # drop items with fewer interactions (and from the catalogue)
    k_core: int | None = None  # repeat both filters with k until every user and item has >= k interactions
    # leave-last-out holds out users with at least this many interactions (absent: 3); shorter ones only train
    leave_last_out_min_interactions: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The model: a two-tower network or one of the baselines.

    Defaults are the ``default`` preset's towers: query ``user_id`` + ``user_history``,
    candidate ``item_id``, embeddings of 64 then an MLP ``[128, 64]`` per tower,
    cosine similarity. The query feature ``user_history`` is the user's most recent ``history_length``
    train items (mean of their embeddings); in training the example's own target
    is masked out of it, so the model learns to predict, not to copy.
    """

    kind: Literal["two-tower", "popularity", "ease", "sequential", "ranking", "multi-task"] = "two-tower"
    # each entry: a built-in name, a table spelling out a FeatureSpec, or (from Python) a FeatureSpec
    query_features: tuple[str | dict[str, Any], ...] = ("user_id", "user_history")
    candidate_features: tuple[str | dict[str, Any], ...] = ("item_id",)
    embedding_dim: int = 64
    layer_sizes: tuple[int, ...] = (128, 64)
    similarity: Literal["dot", "cosine"] = "cosine"
    dropout: float = 0.0
    init: Literal["keras-uniform", "normal"] = "normal"
    history_length: int = 100
    ease_l2: float = 300.0
    # Ranking models (kind = "ranking"; see towerrec.models.ranking): how the feature embeddings interact
    # before the MLP (layer_sizes, then a linear layer to the score). "cross": a DCN-v2 cross network of
    # cross_layers layers (projection_dim: low-rank, absent: full rank); "dot": DLRM's pairwise dot products;
    # "fm": their sum added to the score (factorization machine / DeepFM). The candidate feature
    # "item_raters" (ranking only) adds the item's most recent history_length train raters (SVD++ style).
    interaction: Literal["none", "cross", "dot", "fm"] = "none"
    cross_layers: int = 1
    projection_dim: int | None = None
    diag_scale: float = 0.0
    cross_use_bias: bool = True


@dataclass(frozen=True)
class TaskConfig:
    """The retrieval loss: in-batch softmax with the corrections TFRS leaves optional.

    Defaults are the ``default`` preset's: temperature 0.1, logQ correction and
    accidental-hit removal on, mean over the batch."""

    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: int | None = None
    reduction: Literal["mean", "sum"] = "mean"


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop. Defaults are the ``default`` preset's: 10 epochs of Adam
    (learning rate 0.005) at batch 1024, evaluated every 5 epochs, seed 42.

    ``precision``: ``bf16`` computes the loss under bf16 autocast (weights and optimizer state
    stay fp32; evaluation is fp32; see towerrec.train.precision). ``sparse_embeddings``: the
    embedding tables return gradients of the looked-up rows only; absent, it is on for the
    ``rowwise-adagrad`` and ``sparse-adam`` optimizers (whose table updates then touch only
    those rows; see towerrec.train.optimizers) and off otherwise.
    """

    epochs: int = 10
    batch_size: int = 1024
    optimizer: Literal["adagrad", "adam", "adamw", "rowwise-adagrad", "sparse-adam"] = "adam"
    learning_rate: float = 0.005
    weight_decay: float = 0.0
    seed: int = 42
    eval_every: int = 5
    early_stopping_patience: int | None = None
    early_stopping_metric: str = "top_100_accuracy"
    precision: Literal["fp32", "bf16"] = "fp32"
    sparse_embeddings: bool | None = None


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 50, 100)
    exclude_seen: bool = True


@dataclass(frozen=True)
class SequenceConfig:
    """Sequential retrieval (``[model] kind = "sequential"``; see towerrec.train.sequence_data and towerrec.models.sequential).

    ``protocol``: ``tfrs-sequences`` is the TFRS tutorial's (ratings >= min_rating,
    timelines >= min_timeline_length, one example per position with the previous
    ``max_length`` items, all shuffled, ``train_fraction`` / rest); ``leave-last-out``
    trains on each user's full history (up to ``max_length`` most recent items) with
    the last item held out for test and the second-last for validation.
    ``min_rating = false`` (TOML has no null) keeps every rating; rows it removes are
    counted in a warning. ``objective``: ``in-batch`` softmax (the tutorial), ``full-softmax`` over the whole
    catalogue, or ``sampled`` softmax with ``num_sampled`` popularity-drawn negatives
    and logQ correction. ``all_positions``: every step of a context predicts its next
    item (always on for leave-last-out; under ``tfrs-sequences`` a step whose target is
    a test example's label, same user and position, is not trained). ``user_embedding``:
    add a learned vector per training user to the query (unknown users get zero:
    history only). ``step_features``: any of rating, genre, year. ``validation_fraction`` (``tfrs-sequences``
    only): that fraction of the training examples, drawn with ``[data] seed``, becomes a validation split
    (test is unchanged); leave-last-out already holds out each user's second-last item for validation.
    """

    protocol: Literal["tfrs-sequences", "leave-last-out"] = "tfrs-sequences"
    encoder: Literal["gru", "sasrec"] = "gru"
    max_length: int = 10
    min_rating: float | None = 2.0
    min_timeline_length: int = 3
    train_fraction: float = 0.9
    hidden_dim: int | None = None
    num_blocks: int = 2
    num_heads: int = 1
    objective: Literal["in-batch", "full-softmax", "sampled"] = "in-batch"
    num_sampled: int = 1000
    all_positions: bool = False
    shared_embeddings: bool = False
    user_embedding: bool = False
    step_features: tuple[str, ...] = ()
    unknown_items: Literal["warn", "error"] = "warn"
    validation_fraction: float = 0.0


RANKING_KINDS = ("ranking",)  # the [model] kinds that read [ranking] (and the ranking fields of [model])
MULTI_TASK = "multi-task"  # two towers + a rating head (towerrec.models.multitask): reads [task], [ranking], [tasks]
LABELLED_KINDS = (*RANKING_KINDS, MULTI_TASK)  # the kinds trained on labels (ratings): they read [ranking]
RANKING_MODEL_FIELDS = ("interaction", "cross_layers", "projection_dim", "diag_scale", "cross_use_bias")
POINTWISE_LOSSES = ("mse", "bce")
LISTWISE_LOSSES = ("hinge", "logistic", "softmax", "listmle")


#: Keys added after runs of their section existed, with the value that changes nothing: left out of the
#: hash at that value, so a run folder named before the key existed keeps its name.
NEUTRAL_WHEN_ADDED: dict[tuple[str, str], Any] = {("ranking", "embedding_l2"): 0.0,
                                                  ("sequence", "validation_fraction"): 0.0,
                                                  ("train", "precision"): "fp32"}


@dataclass(frozen=True)
class RankingConfig:
    """The ranking stage (``[model] kind = "ranking"``; see towerrec.models.ranking and towerrec.tasks.Ranking).

    ``loss``: pointwise ``mse`` (rating regression) or ``bce`` (0/1 labels, needs ``label = "binary"``),
    pairwise ``hinge`` (with ``margin``) / ``logistic`` and listwise ``softmax`` / ``listmle``; pairwise and
    listwise losses (and any loss with ``train_on_lists``) train on ``lists_per_user`` lists of ``list_size``
    rated train items per user (TFRS's listwise tutorial). ``label``: ``rating`` (the rating itself) or ``binary`` (rating >= ``threshold`` -> 1,
    else 0; an interaction without a rating is 1) with ``negatives`` sampled unseen items (label 0) per
    train example. ``rating_min`` / ``rating_max``: the declared rating range; a rating outside it is a data
    error (absent: any finite rating). ``user_item_bias`` adds a learned bias per training user and per
    item; ``mean_offset`` starts the score at the mean train label (matrix factorisation's global mean);
    ``embedding_l2`` adds that weight times the squared norm of the embedding rows and biases each
    example looks up to the loss (matrix factorisation's regularisation).
    ``ks``: cut-offs of NDCG@K over each user's test items, graded by their labels.
    """

    loss: Literal["mse", "bce", "hinge", "logistic", "softmax", "listmle"] = "mse"
    label: Literal["rating", "binary"] = "rating"
    threshold: float = 4.0
    negatives: int = 0
    list_size: int = 5
    lists_per_user: int = 50
    train_on_lists: bool = False
    margin: float = 1.0
    rating_min: float | None = None
    rating_max: float | None = None
    user_item_bias: bool = False
    mean_offset: bool = False
    embedding_l2: float = 0.0
    ks: tuple[int, ...] = (5, 10)


@dataclass(frozen=True)
class TasksConfig:
    """A multi-task model's heads (``[model] kind = "multi-task"``, towerrec.models.multitask): loss weights
    (its loss: ``retrieval * retrieval loss + ranking * ranking loss``; 0 switches a task off, not both) and
    ``rating_layers``, the hidden sizes of the rating head over the two tower outputs (a 1-wide layer follows;
    TFRS's multi-task tutorial: 256, 64)."""

    retrieval: float = 1.0
    ranking: float = 1.0
    rating_layers: tuple[int, ...] = (256, 64)


TRACK_BACKENDS = ("none", "tensorboard", "mlflow")


@dataclass(frozen=True)
class TrackConfig:
    """Experiment tracking (towerrec.track, docs/tracking.md): where a run's per-epoch loss, metrics and
    examples/s, its configuration and its final metrics are logged. It does not change the model, so it is
    never part of :meth:`RunConfig.hash`.

    ``backend``: ``"none"`` (default: nothing is written), ``"tensorboard"`` (event files under
    ``dir/<experiment>/``) or ``"mlflow"`` (the SQLite store ``dir/mlflow.db``, artifacts in
    ``dir/mlartifacts``, unless ``uri`` names another MLflow tracking URI). ``dir`` is relative to the working
    folder. ``experiment``: the TensorBoard folder / MLflow experiment name (absent: the config's ``name``).
    """

    backend: Literal["none", "tensorboard", "mlflow"] = "none"
    dir: str = "runs/track"
    experiment: str | None = None
    uri: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs: which data and split, the model, the task (loss), training
    and evaluation settings (plus where it is tracked, ``[track]``), one dataclass per TOML section.

    ``RunConfig()`` is the ``default`` preset: it equals ``presets.preset("default")`` in every
    value but ``name`` (same :meth:`hash`). Read from TOML with :func:`load_config`, from a dict
    with :func:`config_from_dict` (keys left out take these defaults), or take a built-in one with
    :func:`towerrec.presets.preset`; :meth:`replace` gives a changed copy. The run directory is
    keyed by :meth:`hash` (everything that changes the trained model).
    """

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for TOML: an unset optional is left out, or written ``false`` when its default is set
        (``[sequence] min_rating = false``), so the file reads back as the same config. ``[track]`` is left
        out while it holds its defaults (tracking off)."""
        values = dataclasses.asdict(self)
        for section in SECTIONS:
            for f in fields(getattr(self, section)):
                if values[section][f.name] is None and f.default is not None:
                    values[section][f.name] = False
        if self.track == TrackConfig():
            values.pop("track")
        return _drop_none(values)

    def to_toml(self) -> str:
        """This configuration as TOML text (what ``config.toml`` of a run holds; :func:`load_config` reads it)."""
        return tomli_w.dumps(self.to_dict())

    def hash(self) -> str:
        """Hash of everything that changes the trained model (the name and ``[track]`` do not)."""
        payload = self.to_dict()
        payload.pop("name")
        payload.pop("track", None)  # where the run is logged is not what it trains
        payload["data"].pop("data_dir", None)  # where the files are is not what they are
        payload["data"].pop("item_features", None)  # ditto: its content is in the data fingerprint
        payload["data"].pop("duplicate_titles", None)  # ditto: it changes the prepared data's fingerprint
        if self.model.kind != "sequential":
            payload.pop("sequence", None)  # only sequential runs read it: other hashes stay as they were
        if self.model.kind not in LABELLED_KINDS:  # likewise the ranking settings
            payload.pop("ranking", None)
        if self.model.kind not in RANKING_KINDS:
            for key in RANKING_MODEL_FIELDS:
                payload["model"].pop(key, None)
        else:
            payload.pop("task", None)  # the retrieval loss: a ranking model has none
            for key in ("similarity", "ease_l2"):
                payload["model"].pop(key, None)
        if self.model.kind != MULTI_TASK:
            payload.pop("tasks", None)  # only multi-task models read the heads' weights
        else:
            payload["model"].pop("ease_l2", None)
        for (section, key), neutral in NEUTRAL_WHEN_ADDED.items():  # keys added later: hashes stay put
            if section in payload and payload[section].get(key) == neutral:
                payload[section].pop(key)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some fields of some sections changed: ``cfg.replace(train={"epochs": 5})``."""
        merged = self.to_dict()
        for section, values in sections.items():
            if section == "name":
                merged["name"] = values
            else:
                merged.setdefault(section, {}).update(values)
        return config_from_dict(merged)


def _drop_none(value: Any) -> Any:
    """TOML has no null: absent keys mean the default (None)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return [_drop_none(v) for v in value]
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _coerce(section: str, name: str, annotation: Any, value: Any) -> Any:
    where = f"[{section}] {name}" if section else name
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} = {shorten(value)} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {shorten(value)}")
        if get_origin(args[0]) in (Union, UnionType) and dict in [get_origin(a) or a for a in get_args(args[0])]:
            for v in value:  # feature lists: names or spec tables (checked when the features are resolved)
                if not isinstance(v, (str, dict)) and not dataclasses.is_dataclass(v):
                    raise ConfigError(f"{where} entries must be feature names or tables, got {shorten(v)}")
            return tuple(value)
        return tuple(_coerce(section, name, args[0], v) for v in value)
    if args and type(None) in args:  # Optional[X]: TOML has no null, so `false` switches it off too
        if value is None or (value is False and bool not in args):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(section, name, inner, value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {_TYPE_NAMES[annotation]}, got {_shown(value)}")
    return value


def _section_from_dict(cls: type, section: str, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {shorten(values)}")
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]; valid keys: {sorted(valid)}",
            hint="check the spelling against configs/*.toml",
        )
    hints = _resolved_hints(cls)
    kwargs = {k: _coerce(section, k, hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def _resolved_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "task": TaskConfig, "train": TrainConfig, "eval": EvalConfig,
            "sequence": SequenceConfig, "ranking": RankingConfig, "tasks": TasksConfig, "track": TrackConfig}


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a dict shaped like the TOML file (``{"name": ..., "data": {...}, "model": {...}}``).

    Sections and keys left out keep their defaults (those of the ``default`` preset).

    Raises:
        ConfigError: an unknown section or key, a value of the wrong type or out of its range, named by
            ``section.key``.
    """
    unknown = sorted(set(values) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid: {['name', *SECTIONS]}")
    kwargs: dict[str, Any] = {"name": str(values.get("name", "run"))}
    for section, cls in SECTIONS.items():
        kwargs[section] = _section_from_dict(cls, section, values.get(section, {}))
    config = RunConfig(**kwargs)
    _check_values(config)
    return config


SEED_MAX = 2**32 - 1  # numpy and torch accept it; the trainer derives per-epoch seeds as seed * 1_000_003 + epoch
MAX_WIDTH = 16_384  # embedding / layer / hidden sizes: beyond this a tower is a typo, not a model
MAX_COUNT = 1_000_000  # epochs, eval_every, patience: the per-epoch seed needs epoch < 1_000_003


@dataclass(frozen=True)
class Bound:
    """The valid range of one numeric config value; ``None`` is an open end.

    ``integer`` bounds read ``an integer in 1..16384``; real ones read
    ``a finite number > 0`` or ``a finite number in [0, 1)``.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False
    integer: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        low, high = self.low, self.high
        if low is not None and high is not None:
            if self.integer:
                return f"{what} in {low}..{high}"
            return f"{what} in {'(' if self.low_open else '['}{low:g}, {high:g}{')' if self.high_open else ']'}"
        if low is not None:
            return f"{what} {'>' if self.low_open else '>='} {low:g}"
        if high is not None:
            return f"{what} {'<' if self.high_open else '<='} {high:g}"
        return what


def _ints(low: int, high: int) -> Bound:
    return Bound(low, high, integer=True)


FRACTION_OPEN = Bound(0.0, 1.0, low_open=True, high_open=True)
POSITIVE = Bound(0.0, low_open=True)

#: The valid range of every numeric field of every section (lists: of each element). Optional
#: fields may also be absent (None). A test checks that no numeric field is missing here.
BOUNDS: dict[tuple[str, str], Bound] = {
    ("data", "test_fraction"): FRACTION_OPEN,
    ("data", "validation_fraction"): Bound(0.0, 1.0, high_open=True),
    ("data", "seed"): _ints(0, SEED_MAX),
    ("data", "min_user_interactions"): _ints(1, MAX_COUNT),
    ("data", "min_item_interactions"): _ints(1, MAX_COUNT),
    ("data", "k_core"): _ints(1, MAX_COUNT),
    ("data", "leave_last_out_min_interactions"): _ints(1, MAX_COUNT),
    ("model", "embedding_dim"): _ints(1, MAX_WIDTH),
    ("model", "layer_sizes"): _ints(1, MAX_WIDTH),
    ("model", "dropout"): Bound(0.0, 1.0, high_open=True),
    ("model", "history_length"): _ints(1, 100_000),
    ("model", "ease_l2"): POSITIVE,
    ("task", "temperature"): POSITIVE,
    ("task", "num_hard_negatives"): _ints(1, MAX_COUNT),
    ("train", "epochs"): _ints(1, MAX_COUNT),
    ("train", "batch_size"): _ints(1, 2**31 - 1),
    ("train", "learning_rate"): POSITIVE,
    ("train", "weight_decay"): Bound(0.0),
    ("train", "seed"): _ints(0, SEED_MAX),
    ("train", "eval_every"): _ints(1, MAX_COUNT),
    ("train", "early_stopping_patience"): _ints(1, MAX_COUNT),
    ("eval", "ks"): _ints(1, 2**31 - 1),  # K above the catalogue size counts every item: accuracy 1.0
    ("sequence", "max_length"): _ints(1, 100_000),
    ("sequence", "min_rating"): Bound(),
    ("sequence", "min_timeline_length"): _ints(1, MAX_COUNT),
    ("sequence", "train_fraction"): FRACTION_OPEN,
    ("sequence", "hidden_dim"): _ints(1, MAX_WIDTH),
    ("sequence", "num_blocks"): _ints(1, 256),
    ("sequence", "num_heads"): _ints(1, MAX_WIDTH),
    ("sequence", "num_sampled"): _ints(1, 100_000_000),
    ("sequence", "validation_fraction"): Bound(0.0, 1.0, high_open=True),
    ("model", "cross_layers"): _ints(1, 64),
    ("model", "projection_dim"): _ints(1, MAX_WIDTH),
    ("model", "diag_scale"): Bound(0.0),
    ("ranking", "threshold"): Bound(),
    ("ranking", "negatives"): _ints(0, 1000),
    ("ranking", "list_size"): _ints(2, 10_000),
    ("ranking", "lists_per_user"): _ints(1, 100_000),
    ("ranking", "margin"): POSITIVE,
    ("ranking", "rating_min"): Bound(),
    ("ranking", "rating_max"): Bound(),
    ("ranking", "ks"): _ints(1, 2**31 - 1),
    ("ranking", "embedding_l2"): Bound(0.0),
    ("tasks", "retrieval"): Bound(0.0),
    ("tasks", "ranking"): Bound(0.0),
    ("tasks", "rating_layers"): _ints(1, MAX_WIDTH),
}


def _check_values(config: RunConfig) -> None:
    """Every numeric value finite and within :data:`BOUNDS`; raises :class:`ConfigError` naming ``[section] key``."""
    for (section, key), bound in BOUNDS.items():
        value = getattr(getattr(config, section), key)
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        if not values and key == "ks":
            raise ConfigError(f"[{section}] {key} must list at least one K, got []")
        for v in values:
            if not bound.holds(v):
                shown = list(value) if isinstance(value, tuple) else value
                noun = "entries" if isinstance(value, tuple) else ""
                raise ConfigError(f"[{section}] {key}{' ' + noun if noun else ''} must be {_plural(bound.describe(), noun)}"
                                  f", got {_shown(shown)}")
    for key in ("dir", "experiment", "uri"):
        if getattr(config.track, key) == "":
            raise ConfigError(f"[track] {key} must not be empty", hint="leave the key out to take its default")
    d = config.data
    if d.test_fraction + d.validation_fraction >= 1.0:
        raise ConfigError(
            f"[data] test_fraction + validation_fraction must be below 1, got {d.test_fraction} + {d.validation_fraction}",
            hint="leave some interactions for training",
        )
    s = config.sequence
    if config.model.kind == "sequential" and s.protocol == "leave-last-out" and s.validation_fraction:
        raise ConfigError(f"[sequence] validation_fraction = {s.validation_fraction:g} carves validation from the "
                          "tfrs-sequences training examples; leave-last-out already holds out each user's "
                          "second-last item for validation", hint="drop [sequence] validation_fraction")
    m = config.model
    if "item_raters" in m.query_features:
        raise ConfigError("[model] query_features lists item_raters, a candidate feature",
                          hint="move it to [model] candidate_features")
    if "item_raters" in m.candidate_features and m.kind not in RANKING_KINDS:
        raise ConfigError(f"[model] candidate_features lists item_raters, which only ranking models read, got "
                          f"kind = {m.kind!r}", hint='use [model] kind = "ranking" or drop item_raters')
    if config.model.kind in LABELLED_KINDS:
        _check_ranking(config)
    if config.model.kind == MULTI_TASK:
        _check_multi_task(config)


#: Metrics of a ranking evaluation where lower is better (early stopping minimises them).
LOWER_IS_BETTER = ("rmse", "mae")


def ranking_metric_names(r: RankingConfig) -> set[str]:
    """The metrics a ranking run reports per split (``rmse`` and ``mae`` only for a rating loss)."""
    names = {"auc", "mrr", *(f"ndcg@{k}" for k in r.ks)}
    if r.label == "rating" and r.loss == "mse":
        names |= {"rmse", "mae"}
    return names


def _check_ranking(config: RunConfig) -> None:
    """Cross-field checks of a ranking run's settings; each :class:`ConfigError` names the field."""
    r, m = config.ranking, config.model
    if r.rating_min is not None and r.rating_max is not None and r.rating_min >= r.rating_max:
        raise ConfigError(f"[ranking] rating_min must be below rating_max, got {r.rating_min:g} >= {r.rating_max:g}")
    if r.loss == "bce" and r.label != "binary":
        raise ConfigError('[ranking] loss = "bce" needs 0/1 labels: set [ranking] label = "binary"',
                          hint='or use loss = "mse" to regress ratings')
    if r.negatives and r.label != "binary":
        raise ConfigError(f'[ranking] negatives = {r.negatives} needs [ranking] label = "binary" (a sampled '
                          "negative has no rating)")
    if r.negatives and (r.loss not in POINTWISE_LOSSES or r.train_on_lists):
        raise ConfigError(f"[ranking] negatives = {r.negatives} works with a pointwise loss (mse, bce) on single "
                          "examples", hint="lists are drawn from each user's rated items")
    if r.margin != 1.0 and r.loss != "hinge":
        raise ConfigError(f'[ranking] margin = {r.margin:g} applies to loss = "hinge" only, got loss = {r.loss!r}')
    if r.mean_offset and (r.loss != "mse" or r.label != "rating"):
        raise ConfigError('[ranking] mean_offset starts every score at the mean train rating: it needs loss = "mse" '
                          f'and label = "rating", got {r.loss!r} and {r.label!r}')
    if m.projection_dim is not None and m.interaction != "cross":
        raise ConfigError(f'[model] projection_dim = {m.projection_dim} needs [model] interaction = "cross"')
    if "user_history" in m.candidate_features:
        raise ConfigError("[model] candidate_features lists user_history, a query feature",
                          hint="move it to [model] query_features")
    t = config.train
    if (t.early_stopping_patience is not None and m.kind in RANKING_KINDS  # multi-task: the trainer checks
            and t.early_stopping_metric not in ranking_metric_names(r)):
        raise ConfigError(f"[train] early_stopping_metric {t.early_stopping_metric!r} is not a metric of this "
                          f"ranking run; valid: {sorted(ranking_metric_names(r))}")


def _check_multi_task(config: RunConfig) -> None:
    """What a multi-task model cannot do; each :class:`ConfigError` names the field."""
    r, m, t = config.ranking, config.model, config.tasks
    if t.retrieval == 0 and t.ranking == 0:
        raise ConfigError("[tasks] retrieval and ranking are both 0: nothing would be trained",
                          hint="give at least one task a positive weight")
    if r.loss not in POINTWISE_LOSSES or r.train_on_lists or r.negatives:
        raise ConfigError(f'[ranking] a multi-task model rates each training example (loss = "mse" or "bce", no '
                          f"lists, no sampled negatives), got loss = {r.loss!r}, train_on_lists = "
                          f"{str(r.train_on_lists).lower()}, negatives = {r.negatives}",
                          hint="its retrieval task reads one positive candidate per row")
    for key, default in (("user_item_bias", False), ("mean_offset", False), ("embedding_l2", 0.0)):
        if getattr(r, key) != default:
            raise ConfigError(f'[ranking] {key} is read by [model] kind = "ranking" only, not by a multi-task model')
    for key in RANKING_MODEL_FIELDS:
        if getattr(m, key) != getattr(ModelConfig, key):
            raise ConfigError(f'[model] {key} is read by [model] kind = "ranking" only, not by a multi-task model',
                              hint="[tasks] rating_layers sizes the multi-task model's rating head")


def _plural(text: str, noun: str) -> str:
    if not noun:
        return text
    return text.replace("an integer", "integers").replace("a finite number", "finite numbers")


def _shown(value: Any) -> str:
    """A value for a message: nan/inf as TOML spells them, huge integers cut short with their digit count."""
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value[:10]) + (", ..." if len(value) > 10 else "") + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return shorten(value)


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file's table; a missing, unreadable, binary or malformed file is one :class:`ConfigError`."""
    from towerrec.errors import TowerrecError
    from towerrec.fsio import read_text

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        return tomllib.loads(read_text(path))
    except TowerrecError as exc:  # unreadable, or not UTF-8 text
        raise ConfigError(exc.message, exc.hint or f"a {what} is a UTF-8 TOML text file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits, which Python refuses to read
        raise ConfigError(f"{path}: invalid TOML: {shorten_text(str(exc).split(';')[0])}") from exc


def load_config(path: str | Path) -> RunConfig:
    """A :class:`RunConfig` from a TOML file (the format ``towerrec train CONFIG`` reads).

    Raises:
        ConfigError: an unreadable file, a TOML syntax error (with its line), an unknown section or
            key, or an invalid value; each names the file.
    """
    values = read_toml(path)
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", exc.hint) from exc
