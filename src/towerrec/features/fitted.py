"""Fitting feature specs on train data and encoding frames into tensors.

:class:`FeatureSet` fits each spec once (query features on the training
interactions, candidate features on the item catalogue, which is metadata and
not leakage). The resulting :class:`FittedFeatures` turns any frame into a
dict of tensors with joins and lookups over whole columns, never per-row
Python, and serialises to JSON so a saved model encodes exactly as it trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from towerrec.errors import ConfigError, DataError
from towerrec.features.numeric import Bucketizer, Normalizer
from towerrec.features.spec import FeatureSpec, InputSpec, Side, resolve_features
from towerrec.features.text import as_lists, flatten, pad_lists, tokenize
from towerrec.features.vocab import Vocabulary, as_keys, value_type

FORMAT_VERSION = 1

# Columns computed from another column when a frame lacks them.
DERIVED: dict[str, tuple[str, pl.Expr]] = {
    "zip_prefix": ("zip", pl.col("zip").cast(pl.String).str.slice(0, 2).alias("zip_prefix")),
    # MovieLens-1M's age groups (1: under 18, 18: 18-24, ..., 56: 56+), which ML-1M ages already are;
    # TFRS's DCN tutorial calls it bucketized_user_age.
    "age_group": ("age", pl.when(pl.col("age") >= 56).then(56).when(pl.col("age") >= 50).then(50)
                  .when(pl.col("age") >= 45).then(45).when(pl.col("age") >= 35).then(35)
                  .when(pl.col("age") >= 25).then(25).when(pl.col("age") >= 18).then(18)
                  .when(pl.col("age").is_not_null()).then(1).cast(pl.Int64).alias("age_group")),
}


@dataclass
class FittedFeature:
    """One spec plus its fitted state (a vocabulary, buckets or mean/std)."""

    spec: FeatureSpec
    vocab: Vocabulary | None = None
    bucketizer: Bucketizer | None = None
    normalizer: Normalizer | None = None

    @classmethod
    def fit(cls, spec: FeatureSpec, column: pl.Series) -> FittedFeature:
        """Fits ``spec`` on the training ``column``: a vocabulary (id, hashed, text, multi), buckets or mean/std.

        Raises:
            DataError: a numeric column with no finite value, or an infinite one.
        """
        kind = spec.kind
        if kind == "id":
            vocab = Vocabulary.fit(column, num_oov=spec.oov_buckets, min_count=spec.min_count)
            return cls(spec, vocab=vocab)
        if kind == "hashed":  # no values: everything hashes into num_buckets "OOV" rows
            return cls(spec, vocab=Vocabulary([], value_type(column.dtype), num_oov=spec.num_buckets))
        if kind in ("text", "multi"):
            lists = tokenize(column) if kind == "text" else as_lists(column)
            vocab = Vocabulary.fit(
                flatten(lists),
                num_oov=spec.oov_buckets,
                padding=True,
                min_count=spec.min_count,
                max_size=spec.max_tokens,
            )
            return cls(spec, vocab=vocab)
        if kind == "bucketized":
            return cls(spec, bucketizer=Bucketizer.fit(column, spec.num_buckets))
        return cls(spec, normalizer=Normalizer.fit(column))

    def encode(self, column: pl.Series) -> tuple[torch.Tensor, int]:
        """The tensor for ``column`` (see the package docstring for shapes) and its OOV count."""
        kind = self.spec.kind
        if kind in ("id", "hashed"):
            idx, n_oov = self.vocab.lookup(column)
            return torch.from_numpy(idx), 0 if kind == "hashed" else n_oov
        if kind in ("text", "multi"):
            lists = tokenize(column) if kind == "text" else as_lists(column)
            matrix, n_oov = pad_lists(lists, self.vocab, self.spec.max_length)
            return torch.from_numpy(matrix), n_oov
        if kind == "bucketized":
            idx, n_null = self.bucketizer.encode(column)
            return torch.from_numpy(idx), n_null
        return torch.from_numpy(self.normalizer.encode(column)), 0

    def input_spec(self) -> InputSpec:
        """What this feature's embedding must accept: kind, vocabulary/bucket size, width."""
        kind = self.spec.kind
        if kind == "normalized":
            cardinality = 0
        elif kind == "bucketized":
            cardinality = self.bucketizer.size
        else:
            cardinality = self.vocab.size
        width = self.spec.max_length if kind in ("text", "multi") else 1
        return InputSpec(self.spec.name, kind, cardinality, width, self.spec.embedding_dim)

    def to_json(self) -> dict[str, Any]:
        """The spec and its fitted state as JSON."""
        d: dict[str, Any] = {"spec": self.spec.to_dict()}
        for key in ("vocab", "bucketizer", "normalizer"):
            part = getattr(self, key)
            if part is not None:
                d[key] = part.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FittedFeature:
        """A fitted feature from :meth:`to_json`'s output."""
        return cls(
            FeatureSpec.from_dict(d["spec"]),
            vocab=Vocabulary.from_json(d["vocab"]) if "vocab" in d else None,
            bucketizer=Bucketizer.from_json(d["bucketizer"]) if "bucketizer" in d else None,
            normalizer=Normalizer.from_json(d["normalizer"]) if "normalizer" in d else None,
        )


class FeatureSet:
    """An ordered set of feature specs with unique names; ``fit`` learns them from train.

    Specs may be :class:`FeatureSpec` objects, built-in names (``"user_id"``, ``"movie_title"``,
    ``"timestamp"``, ...) or dicts; :meth:`fit` returns :class:`FittedFeatures`.

    Raises:
        ConfigError: an unknown built-in name, a malformed spec, or two specs with the same name.
    """

    def __init__(self, specs: Sequence[FeatureSpec | str | dict[str, Any]]) -> None:
        self.specs = resolve_features(list(specs))
        names = [s.name for s in self.specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"feature name(s) used twice: {', '.join(dupes)}")

    def fit(
        self, train: pl.DataFrame, items: pl.DataFrame | None = None, users: pl.DataFrame | None = None
    ) -> FittedFeatures:
        """Fit query specs on ``train`` (joined with ``users``) and candidate specs on the catalogue.

        Without ``items`` the catalogue is the sorted distinct train item ids,
        so only candidate features on ``item_id`` are possible.
        """
        query = [s for s in self.specs if s.side == "query"]
        cand = [s for s in self.specs if s.side == "candidate"]
        if items is None:
            items = train.select(pl.col("item_id").unique().sort())
        catalogue = _with_columns(items, cand, None, "items").select(
            ["item_id", *_unique([s.column for s in cand if s.column != "item_id"])]
        )
        frame = _with_columns(train, query, users, "training interactions")
        fitted = [FittedFeature.fit(s, frame[s.column]) for s in query]
        fitted += [FittedFeature.fit(s, catalogue[s.column]) for s in cand]
        by_name = {f.spec.name: f for f in fitted}
        return FittedFeatures(
            [by_name[s.name] for s in self.specs],
            catalogue=catalogue,
            user_ids=train["user_id"].unique().sort(),
            users=_user_columns(users, query, train),
        )


class FittedFeatures:
    """Fitted features: frames in, dicts of tensors out.

    Tensor shapes: id / hashed / bucketized -> int64 ``[n]``; normalized ->
    float32 ``[n, 1]``; text / multi -> int64 ``[n, max_length]`` padded with 0.
    ``oov_counts`` holds, per feature, how many values of the last encode call
    were unknown (nulls included), so callers can warn.
    """

    def __init__(
        self,
        features: list[FittedFeature],
        catalogue: pl.DataFrame,
        user_ids: pl.Series,
        users: pl.DataFrame | None = None,
    ) -> None:
        self.features = features
        self._catalogue = catalogue
        self._user_ids = user_ids.rename("user_id")
        self._users = users
        self.oov_counts: dict[str, int] = {}

    @property
    def specs(self) -> list[FeatureSpec]:
        """The specs of every fitted feature, query and candidate, in order."""
        return [f.spec for f in self.features]

    @property
    def catalogue_ids(self) -> np.ndarray:
        """Raw item ids in candidate-index order."""
        return self._catalogue["item_id"].to_numpy()

    @property
    def user_ids(self) -> np.ndarray:
        """Raw ids of the train users in user-index order (sorted)."""
        return self._user_ids.to_numpy()

    @property
    def num_items(self) -> int:
        """N, the catalogue size (candidate indices 0..N-1)."""
        return self._catalogue.height

    @property
    def num_users(self) -> int:
        """Users seen in train (user indices 0..U-1)."""
        return len(self._user_ids)

    def item_index(self, raw_ids: Any) -> np.ndarray:
        """Candidate index of each raw item id; -1 where the id is not in the catalogue."""
        return _positions(self._catalogue["item_id"], raw_ids)

    def user_index(self, raw_ids: Any) -> np.ndarray:
        """Index of each raw user id among the train users; -1 where unknown."""
        return _positions(self._user_ids, raw_ids)

    def side(self, side: Side) -> list[FittedFeature]:
        """The fitted features of one tower (``"query"`` or ``"candidate"``), in spec order."""
        return [f for f in self.features if f.spec.side == side]

    def inputs(self, side: Side) -> list[InputSpec]:
        """What the ``side`` tower's embeddings must accept, in spec order."""
        return [f.input_spec() for f in self.side(side)]

    def encode_queries(self, df: pl.DataFrame, users: pl.DataFrame | None = None) -> dict[str, torch.Tensor]:
        """One row per row of ``df`` (needs user_id and any column the query features read).

        User columns missing from ``df`` come from ``users`` or, by default, the
        user table kept at fit time. Unknown values map to OOV.
        """
        specs = [f.spec for f in self.side("query")]
        frame = _with_columns(df, specs, self._users if users is None else users, "queries")
        return self._encode(self.side("query"), frame)

    def encode_candidates(self, items: pl.DataFrame | None = None) -> dict[str, torch.Tensor]:
        """One row per catalogue item in index order (or per row of ``items``, e.g. new items)."""
        feats = self.side("candidate")
        frame = self._catalogue if items is None else _with_columns(items, [f.spec for f in feats], None, "items")
        return self._encode(feats, frame)

    def _encode(self, feats: list[FittedFeature], frame: pl.DataFrame) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        self.oov_counts = {}
        for f in feats:
            out[f.spec.name], self.oov_counts[f.spec.name] = f.encode(frame[f.spec.column])
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything needed to encode again: specs, fitted state, catalogue, train users."""
        return {
            "format_version": FORMAT_VERSION,
            "features": [f.to_json() for f in self.features],
            "catalogue": _frame_to_json(self._catalogue),
            "user_ids": _frame_to_json(self._user_ids.to_frame()),
            "users": None if self._users is None else _frame_to_json(self._users),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FittedFeatures:
        """Fitted features from :meth:`to_json`'s output.

        Raises:
            ConfigError: a file of another ``format_version``.
        """
        if d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"feature file has format_version {d.get('format_version')!r}; this towerrec reads {FORMAT_VERSION}",
                hint="retrain the model with this version",
            )
        return cls(
            [FittedFeature.from_json(f) for f in d["features"]],
            catalogue=_frame_from_json(d["catalogue"]),
            user_ids=_frame_from_json(d["user_ids"])["user_id"],
            users=None if d["users"] is None else _frame_from_json(d["users"]),
        )


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _with_columns(
    df: pl.DataFrame, specs: list[FeatureSpec], users: pl.DataFrame | None, what: str
) -> pl.DataFrame:
    """``df`` plus every column ``specs`` read: joined from ``users`` on user_id or derived."""
    needed = _unique([s.column for s in specs])
    raw = _unique([DERIVED[c][0] if c in DERIVED and c not in df.columns else c for c in needed])
    from_users = [c for c in raw if c not in df.columns and users is not None and c in users.columns]
    if from_users and "user_id" in df.columns:
        side = users.select(["user_id", *from_users])
        if side.schema["user_id"] != df.schema["user_id"]:
            side = side.with_columns(pl.col("user_id").cast(df.schema["user_id"], strict=False))
        rows = df.height
        df = df.join(side, on="user_id", how="left", maintain_order="left")
        if df.height != rows:
            raise DataError("the users table repeats a user_id, so user features are ambiguous", field="user_id")
    derive = [DERIVED[c][1] for c in needed if c in DERIVED and c not in df.columns and DERIVED[c][0] in df.columns]
    if derive:
        df = df.with_columns(derive)
    for spec in specs:
        if spec.column not in df.columns:
            source = "" if users is None else " or the users table"
            raise DataError(
                f"feature '{spec.name}' reads column '{spec.column}', which the {what}{source} lack;"
                f" available: {', '.join(df.columns)}",
                field=spec.column,
                hint="drop the feature or supply the column (extra item/user columns can be imported)",
            )
    return df


def _user_columns(users: pl.DataFrame | None, query: list[FeatureSpec], train: pl.DataFrame) -> pl.DataFrame | None:
    """The slice of the users table query features read, kept for encoding later queries."""
    if users is None:
        return None
    raw = {DERIVED[s.column][0] if s.column in DERIVED else s.column for s in query}
    cols = [c for c in users.columns if c in raw and c != "user_id" and c not in train.columns]
    return users.select(["user_id", *cols]) if cols else None


def _positions(keys: pl.Series, raw_ids: Any) -> np.ndarray:
    s = raw_ids if isinstance(raw_ids, pl.Series) else pl.Series(np.asarray(raw_ids).ravel())
    s = as_keys(s, value_type(keys.dtype))
    idx = s.replace_strict(keys, pl.int_range(0, len(keys), eager=True), default=-1, return_dtype=pl.Int64)
    return idx.to_numpy(writable=True).astype(np.int64, copy=False)


_DTYPES: dict[str, pl.DataType] = {
    str(d): d
    for d in (
        pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
        pl.Float32, pl.Float64, pl.String, pl.Boolean,
        pl.List(pl.String), pl.List(pl.Int64), pl.List(pl.Int32), pl.List(pl.Float64),
    )
}  # fmt: skip


def _frame_to_json(df: pl.DataFrame) -> dict[str, Any]:
    return {"schema": {c: str(t) for c, t in df.schema.items()}, "columns": {c: df[c].to_list() for c in df.columns}}


def _frame_from_json(d: dict[str, Any]) -> pl.DataFrame:
    """Columns with their saved dtype; an unusual dtype is re-inferred from the values."""
    return pl.DataFrame(
        [pl.Series(c, d["columns"][c], dtype=_DTYPES.get(t), strict=False) for c, t in d["schema"].items()]
    )
