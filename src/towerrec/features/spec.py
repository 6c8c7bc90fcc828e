"""Declarative feature specs: what to read, from which side, and how to encode it.

A :class:`FeatureSpec` says nothing about data; fitting it on the training split
(:meth:`towerrec.features.FeatureSet.fit`) produces the vocabularies and
statistics. Configs name MovieLens features by their built-in names
(``features = ["user_id", "timestamp"]``) or spell a spec out as a table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from towerrec.config import MAX_WIDTH
from towerrec.errors import ConfigError, shorten

Side = Literal["query", "candidate"]
Kind = Literal["id", "hashed", "bucketized", "normalized", "text", "multi"]
SIDES: tuple[str, ...] = ("query", "candidate")
KINDS: tuple[str, ...] = ("id", "hashed", "bucketized", "normalized", "text", "multi")


_OPTION_MAX = {  # sizes of embedding tables and padded widths: beyond these a value is a typo
    "num_buckets": 10_000_000, "max_tokens": 10_000_000, "max_length": 10_000, "oov_buckets": 10_000_000,
    "min_count": 10**9, "embedding_dim": MAX_WIDTH,
}


@dataclass(frozen=True)
class FeatureSpec:
    """One model input.

    kinds: ``id`` (vocabulary lookup), ``hashed`` (stable hash into
    ``num_buckets``, no vocabulary), ``bucketized`` (equal-width buckets over
    the train range), ``normalized`` ((x - mean) / std of train), ``text``
    (lower-cased word tokens), ``multi`` (a list column such as genres).
    Options a kind does not use are ignored (``bucketized`` always has exactly
    one extra row, for nulls; ``max_tokens`` counts learned tokens only).
    """

    name: str
    side: Side
    kind: Kind
    column: str
    num_buckets: int = 1000
    max_tokens: int = 10_000
    max_length: int = 20
    embedding_dim: int | None = None
    oov_buckets: int = 1
    min_count: int = 1

    def __post_init__(self) -> None:
        where = f"feature '{self.name}'"
        if not self.name or not self.column:
            raise ConfigError(f"{where}: name and column must be non-empty")
        if self.side not in SIDES:
            raise ConfigError(f"{where}: side {self.side!r} is not one of {', '.join(SIDES)}")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for key, high in _OPTION_MAX.items():
            value = getattr(self, key)
            if value is None and key == "embedding_dim":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ConfigError(f"{where}: {key} must be an integer in 1..{high}"
                                  f"{' or absent' if key == 'embedding_dim' else ''}, got {shorten(value)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Build from a config table; ``column`` defaults to ``name``."""
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in valid]
        label = d.get("name", "?")
        if unknown:
            raise ConfigError(
                f"feature '{label}': unknown option {unknown[0]!r}; valid options: {', '.join(valid)}"
            )
        missing = [k for k in ("name", "side", "kind") if k not in d]
        if missing:
            raise ConfigError(f"feature '{label}': missing required option(s) {', '.join(missing)}")
        return cls(**{"column": d["name"], **d})

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (what feature tables in TOML and features.json hold)."""
        return asdict(self)


@dataclass(frozen=True)
class InputSpec:
    """What a fitted feature looks like to a model.

    ``cardinality`` is the embedding table size including padding and OOV rows
    (0 for ``normalized``); ``width`` is 1 or ``max_length`` for text/multi.
    """

    name: str
    kind: Kind
    cardinality: int
    width: int
    embedding_dim: int | None = None


# Built-in MovieLens features. ``zip_prefix`` and ``age_group`` are derived from ``zip`` and ``age`` when fitting.
_BUILTINS: dict[str, list[tuple[str, Side, Kind, str, dict[str, Any]]]] = {
    "user_id": [("user_id", "query", "id", "user_id", {})],
    "timestamp": [
        ("timestamp_bucketized", "query", "bucketized", "timestamp", {"num_buckets": 1000}),
        ("timestamp_normalized", "query", "normalized", "timestamp", {}),
    ],
    "user_age": [("user_age", "query", "normalized", "age", {})],
    "user_age_bucket": [("user_age_bucket", "query", "bucketized", "age", {"num_buckets": 10})],
    "user_gender": [("user_gender", "query", "id", "gender", {})],
    "user_occupation": [("user_occupation", "query", "id", "occupation", {})],
    "user_zip_prefix": [("user_zip_prefix", "query", "id", "zip_prefix", {})],
    "user_zip_code": [("user_zip_code", "query", "id", "zip", {})],
    # ML-1M's age groups 1/18/25/35/45/50/56 (TFRS's bucketized_user_age), as ids
    "user_age_group": [("user_age_group", "query", "id", "age_group", {})],
    "item_id": [("item_id", "candidate", "id", "item_id", {})],
    "movie_id": [("movie_id", "candidate", "id", "item_id", {})],
    "movie_title": [("movie_title", "candidate", "id", "title", {})],
    "movie_title_text": [("movie_title_text", "candidate", "text", "title", {})],
    "movie_genres": [("movie_genres", "candidate", "multi", "genres", {"max_length": 10})],
    "movie_year": [("movie_year", "candidate", "normalized", "year", {})],
    # From a user-supplied item table (--item-features FILE --on movie_id; see features.item_table):
    # the length in minutes, normalized, plus the 0/1 flag of items the table lacked.
    "movie_length": [
        ("movie_length", "candidate", "normalized", "length", {}),
        ("movie_length_missing", "candidate", "normalized", "length_missing", {}),
    ],
}
BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)
ITEM_PREFIX = "item:"  # ``item:<column>``: any column of a user-supplied item table


def builtin_feature(name: str, item_schema: dict[str, Any] | None = None) -> list[FeatureSpec]:
    """The spec(s) behind a built-in name; ``timestamp`` gives two (bucket + normalized).

    ``item:<column>`` names a column of the items table (``item_schema``: its
    column -> dtype): numeric columns are normalized (plus the ``<column>_missing``
    flag when the table has one), others are id features.
    """
    if name.startswith(ITEM_PREFIX) and len(name) > len(ITEM_PREFIX):
        return item_column_feature(name[len(ITEM_PREFIX):], item_schema)
    if name not in _BUILTINS:
        raise ConfigError(
            f"unknown feature {name!r}; built-in features: {', '.join(BUILTIN_NAMES)}, "
            f"or {ITEM_PREFIX}<column> for a column of an --item-features table",
            hint="or spell a feature out as a table with name, side, kind and column",
        )
    return [FeatureSpec(n, side, kind, column, **opts) for n, side, kind, column, opts in _BUILTINS[name]]


def item_column_feature(column: str, item_schema: dict[str, Any] | None) -> list[FeatureSpec]:
    name = ITEM_PREFIX + column
    if item_schema is None or column not in item_schema:
        have = "" if item_schema is None else f"; the items table has: {', '.join(item_schema)}"
        raise ConfigError(f"feature {name!r}: no item column {column!r}{have}",
                          hint="supply it with --item-features FILE --on ID_COLUMN")
    dtype = item_schema[column]
    if getattr(dtype, "is_numeric", lambda: False)():
        specs = [FeatureSpec(name, "candidate", "normalized", column)]
        flag = column + "_missing"
        if flag in item_schema:
            specs.append(FeatureSpec(name + "_missing", "candidate", "normalized", flag))
        return specs
    return [FeatureSpec(name, "candidate", "id", column)]


def feature_side(name: str) -> Side:
    """Which tower a built-in (or ``item:``) feature name feeds; unknown names raise with the valid list."""
    if name.startswith(ITEM_PREFIX):
        return "candidate"
    if name == "user_history":
        return "query"
    if name not in _BUILTINS:
        builtin_feature(name)  # raises with the list of valid names
    return _BUILTINS[name][0][1]


def resolve_features(entries: list[str | dict[str, Any] | FeatureSpec]) -> list[FeatureSpec]:
    """Turn a config's feature list (built-in names, tables, specs) into specs."""
    specs: list[FeatureSpec] = []
    for entry in entries:
        if isinstance(entry, FeatureSpec):
            specs.append(entry)
        elif isinstance(entry, str):
            specs.extend(builtin_feature(entry))
        elif isinstance(entry, dict):
            specs.append(FeatureSpec.from_dict(entry))
        else:
            raise ConfigError(f"feature entry {entry!r} is neither a name nor a table")
    return specs
