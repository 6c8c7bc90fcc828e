"""Run configuration: frozen dataclasses loadable from TOML.

A configuration's hash together with the data fingerprint names the run
directory, so a cached model is reused only when both match. Unknown keys are
errors that list the valid ones: a typo never silently trains another model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w

from towerrec.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is split. ``candidate_key = "title"`` merges items
    sharing a title, as the TFRS tutorials (which use titles as candidates) do."""

    dataset: str = "movielens-100k"
    data_dir: str | None = None
    split: Literal["tfrs-random", "temporal", "leave-last-out"] = "tfrs-random"
    test_fraction: float = 0.2
    validation_fraction: float = 0.0
    seed: int = 42
    candidate_key: Literal["item_id", "title"] = "item_id"
    # Extra item columns from a user-supplied CSV/Parquet table joined on ``item_features_on``
    # (that file's id column; default "item_id"). See towerrec.features.item_table.
    item_features: str | None = None
    item_features_on: str | None = None
    item_feature_defaults: tuple[str, ...] | None = None  # e.g. ["length=90"]: value for items the table lacks


@dataclass(frozen=True)
class ModelConfig:
    """The model: a two-tower network or one of the baselines.

    The query feature ``user_history`` is the user's most recent ``history_length``
    train items (mean of their embeddings); in training the example's own target
    is masked out of it, so the model learns to predict, not to copy.
    """

    kind: Literal["two-tower", "popularity", "ease", "sequential"] = "two-tower"
    query_features: tuple[str, ...] = ("user_id",)
    candidate_features: tuple[str, ...] = ("item_id",)
    embedding_dim: int = 32
    layer_sizes: tuple[int, ...] = ()
    similarity: Literal["dot", "cosine"] = "dot"
    dropout: float = 0.0
    init: Literal["keras-uniform", "normal"] = "normal"
    history_length: int = 100
    ease_l2: float = 300.0


@dataclass(frozen=True)
class TaskConfig:
    """The retrieval loss: in-batch softmax with the corrections TFRS leaves optional."""

    temperature: float = 1.0
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: int | None = None
    reduction: Literal["mean", "sum"] = "mean"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 8192
    optimizer: Literal["adagrad", "adam", "adamw"] = "adagrad"
    learning_rate: float = 0.1
    weight_decay: float = 0.0
    seed: int = 42
    eval_every: int = 1
    early_stopping_patience: int | None = None
    early_stopping_metric: str = "top_100_accuracy"


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 50, 100)
    exclude_seen: bool = True


@dataclass(frozen=True)
class SequenceConfig:
    """Sequential retrieval (``[model] kind = "sequential"``; see towerrec.train.sequential).

    ``protocol``: ``tfrs-sequences`` is the TFRS tutorial's (ratings >= min_rating,
    timelines >= min_timeline_length, one example per position with the previous
    ``max_length`` items, all shuffled, ``train_fraction`` / rest); ``leave-last-out``
    trains on each user's full history (up to ``max_length`` most recent items) with
    the last item held out for test and the second-last for validation.
    ``objective``: ``in-batch`` softmax (the tutorial), ``full-softmax`` over the whole
    catalogue, or ``sampled`` softmax with ``num_sampled`` popularity-drawn negatives
    and logQ correction. ``all_positions``: every step of a context predicts its next
    item (always on for leave-last-out; under ``tfrs-sequences`` a step whose target is
    a test example's label, same user and position, is not trained). ``user_embedding``:
    add a learned vector per training user to the query (unknown users get zero:
    history only). ``step_features``: any of rating, genre, year.
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


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def hash(self) -> str:
        """Hash of everything that changes the trained model (the name does not)."""
        payload = self.to_dict()
        payload.pop("name")
        payload["data"].pop("data_dir", None)  # where the files are is not what they are
        payload["data"].pop("item_features", None)  # ditto: its content is in the data fingerprint
        if self.model.kind != "sequential":
            payload.pop("sequence", None)  # only sequential runs read it: other hashes stay as they were
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
    if isinstance(value, tuple):
        return list(value)
    return value


def _coerce(section: str, name: str, annotation: Any, value: Any) -> Any:
    where = f"[{section}] {name}" if section else name
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} = {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(section, name, args[0], v) for v in value)
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(section, name, inner, value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {annotation.__name__}, got {value!r}")
    return value


def _section_from_dict(cls: type, section: str, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {values!r}")
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
            "sequence": SequenceConfig}


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    unknown = sorted(set(values) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid: {['name', *SECTIONS]}")
    kwargs: dict[str, Any] = {"name": str(values.get("name", "run"))}
    for section, cls in SECTIONS.items():
        kwargs[section] = _section_from_dict(cls, section, values.get(section, {}))
    config = RunConfig(**kwargs)
    _check_values(config)
    return config


def _check_values(config: RunConfig) -> None:
    t = config.train
    for key, value in (("epochs", t.epochs), ("batch_size", t.batch_size), ("eval_every", t.eval_every)):
        if value < 1:
            raise ConfigError(f"[train] {key} must be >= 1, got {value}")
    if t.learning_rate <= 0:
        raise ConfigError(f"[train] learning_rate must be > 0, got {t.learning_rate}")
    if config.model.embedding_dim < 1:
        raise ConfigError(f"[model] embedding_dim must be >= 1, got {config.model.embedding_dim}")
    if config.task.temperature <= 0:
        raise ConfigError(f"[task] temperature must be > 0, got {config.task.temperature}")
    if any(k < 1 for k in config.eval.ks):
        raise ConfigError(f"[eval] ks must be positive, got {list(config.eval.ks)}")


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML file; errors name the file and, for syntax errors, the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", exc.hint) from exc
