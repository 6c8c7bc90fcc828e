"""Query builders: how a serving bundle turns a request into its model's query batch.

A bundle serves any :class:`~towerrec.model.RetrievalModel`. What differs between
models is only how a request becomes the batch ``model.query_embeddings`` reads:

- known users: their query batch is stored in the bundle at export (``users.safetensors``,
  ``query.<key>`` tensors of ``[num_users, ...]``), for every kind alike;
- new users and known users with recent items: a builder per kind makes the batch:

  ============  ==========================================================================
  kind          new user
  ============  ==========================================================================
  two-tower     user features (encoded by the run's fitted vocabularies, ``features.json``)
                and/or an item history (``user_history``: ``[1, L]`` catalogue index + 1,
                oldest first, 0-padded on the right)
  sequential    an item history (``history``: ``[1, L]`` left-padded, most recent last;
                ``history_ratings`` zeros: ratings unknown; ``user`` 0: no user vector)
  tensors       the model's own query features, one value per batch key
                (a Python-built model exported with ``export_bundle(model=...)``)
  ============  ==========================================================================

Each builder writes its facts into the manifest (:meth:`QueryBuilder.facts`) and
range-checks the stored query tensors it knows at load (:meth:`QueryBuilder.check`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec.errors import RequestError, TowerrecError, shorten, shorten_text
from towerrec.features import FittedFeatures
from towerrec.features.fitted import DERIVED
from towerrec.model import RetrievalModel
from towerrec.serve.request_features import INT64, check_feature_value

QUERY_PREFIX = "query."  # users.safetensors: query.<batch key> -> [num_users, ...]
FEATURES_FILE = "features.json"
AGAIN = "export the bundle again"


class QueryBuilder:
    """Base class: makes the ``[1, ...]`` query batch of a new user, and merges recent items into a known one."""

    kind: ClassVar[str]
    #: The batch key holding the item history (None: the model reads no history).
    history_key: ClassVar[str | None] = None

    def __init__(self, history_length: int | None = None) -> None:
        self.history_length = history_length

    @property
    def uses_history(self) -> bool:
        """Whether requests may carry an item history."""
        return self.history_key is not None and bool(self.history_length)

    def facts(self) -> dict[str, Any]:
        """JSON facts for ``bundle.json`` (read back by :func:`builder_from_manifest`)."""
        return {"query_builder": self.kind, "history_length": self.history_length}

    def save(self, folder: Path) -> None:
        """Write the builder's own files into the bundle folder (none by default)."""

    def feature_columns(self) -> list[str]:
        """Names a new user's ``features`` may give."""
        return []

    def new_user(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        """The ``[1, ...]`` query batch of a user unseen in training.

        Args:
            features: raw values by name (see :meth:`feature_columns`).
            history: ``[h]`` catalogue positions of the user's items, oldest first.
        Raises:
            RequestError: a feature this model does not read, or a bad value (names the field).
        """
        raise NotImplementedError

    def history_row(self, positions: np.ndarray) -> Tensor:
        """``[1, L]`` history input of catalogue positions (oldest first), as the model was trained."""
        raise RequestError("history", "this model reads no item history")

    def with_recent(self, queries: dict[str, Tensor], recent: np.ndarray) -> dict[str, Tensor]:
        """A known user's ``[1, ...]`` query batch with ``recent`` catalogue positions appended to their history."""
        if not recent.size or not self.uses_history:
            return queries
        stored = queries[self.history_key][0]
        merged = np.concatenate([stored[stored > 0].numpy() - 1, recent])
        return {**queries, self.history_key: self.history_row(merged)}

    def check(self, path: Path, queries: dict[str, Tensor], num_items: int, model: RetrievalModel) -> None:
        """Range-check the stored known-user query tensors this builder knows (history rows: ``0 <= v <= N``)."""
        if self.history_key is not None and self.history_key in queries:
            rows = queries[self.history_key]
            if rows.dim() != 2 or rows.dtype != torch.int64:
                raise TowerrecError(f"{path}: {QUERY_PREFIX}{self.history_key} must be int64 [num_users, L], is "
                                    f"{rows.dtype} {list(rows.shape)}", hint=AGAIN)
            in_range(path, QUERY_PREFIX + self.history_key, rows, 0, num_items + 1)


class TwoTowerQueries(QueryBuilder):
    """Queries of a two-tower run: fitted user features (``features.json``) and an optional history."""

    kind = "two-tower"
    history_key = "user_history"

    def __init__(self, features: FittedFeatures, latest_timestamp: int, history_length: int | None) -> None:
        super().__init__(history_length)
        self.features = features
        self.latest_timestamp = latest_timestamp
        self._anonymous: dict[str, Tensor] | None = None

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "latest_timestamp": self.latest_timestamp}

    def save(self, folder: Path) -> None:
        from towerrec.train.checkpoint import save_json

        save_json(self.features.to_json(), folder / FEATURES_FILE)

    def known_users(self, user_ids: pl.Series, history: Tensor | None) -> dict[str, Tensor]:
        """``[U, ...]`` query batch of train users, as the model saw them at the end of training."""
        frame = pl.DataFrame({"user_id": user_ids,
                              "timestamp": pl.Series([self.latest_timestamp] * len(user_ids), dtype=pl.Int64)})
        queries = self.features.encode_queries(frame)
        if history is not None:
            queries[self.history_key] = history
        return queries

    def feature_columns(self) -> list[str]:
        """User-side columns a new user's request may give (e.g. age, gender, timestamp)."""
        columns = []
        for feature in self.features.side("query"):
            column = feature.spec.column
            column = DERIVED[column][0] if column in DERIVED else column
            if column != "user_id" and column not in columns:
                columns.append(column)
        return columns

    def history_row(self, positions: np.ndarray) -> Tensor:
        if not self.uses_history:
            return super().history_row(positions)
        recent = np.asarray(positions, dtype=np.int64)[-self.history_length:] + 1
        row = torch.zeros(1, self.history_length, dtype=torch.int64)
        row[0, : recent.size] = torch.from_numpy(recent)
        return row

    def new_user(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        if features:
            queries = self._encode(features)
        else:  # a history alone: the other query features (OOV id, latest timestamp) never change
            if self._anonymous is None:
                self._anonymous = self._encode({})
            queries = dict(self._anonymous)
        if self.uses_history:
            queries[self.history_key] = self.history_row(history)
        return queries

    def _encode(self, features: dict[str, Any]) -> dict[str, Tensor]:
        allowed = self.feature_columns()
        unknown = sorted(set(features) - set(allowed))
        if unknown:
            raise RequestError("features", f"unknown user feature(s) {shorten_text(str(unknown))}; this model reads "
                               f"{allowed or 'no user features'}")
        fitted = self.features
        columns: dict[str, pl.Series] = {"user_id": pl.Series([None], dtype=fitted._user_ids.dtype)}
        users = fitted._users
        numeric = {f.spec.column for f in fitted.side("query") if f.spec.kind in ("bucketized", "normalized")}
        for name in allowed:
            dtype = users.schema[name] if users is not None and name in users.columns else None
            integer = INT64 if name == "timestamp" else _int_range(dtype)
            value = check_feature_value(name, features.get(name), numeric=name in numeric, integer=integer)
            if name == "timestamp" and value is None:
                value = self.latest_timestamp
            try:
                series = pl.Series(name, [value], dtype=pl.Float64 if isinstance(value, float) else None)
                if dtype is not None and series.dtype != dtype and value is not None:
                    series = series.cast(dtype, strict=True)
            except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
                raise RequestError(f"features.{name}", f"{shorten(value)} is not a valid {dtype}") from None
            columns[name] = series
        return fitted.encode_queries(pl.DataFrame(columns))


class SequentialQueries(QueryBuilder):
    """Queries of a :class:`~towerrec.models.sequential.SequentialModel`: a left-padded item history."""

    kind = "sequential"
    history_key = "history"

    def known_users(self, timelines: list[np.ndarray], user_index: Tensor | None) -> dict[str, Tensor]:
        """``[U, ...]`` query batch of users by their timelines (catalogue positions, oldest first) and
        user-embedding index + 1 (0 = none); ratings unknown (zeros), as ``towerrec recommend`` encodes them."""
        history = left_padded(timelines, self.history_length)
        users = torch.zeros(len(timelines), dtype=torch.int64) if user_index is None else user_index.to(torch.int64)
        return {"history": history, "history_ratings": torch.zeros_like(history), "user": users.contiguous()}

    def history_row(self, positions: np.ndarray) -> Tensor:
        return left_padded([np.asarray(positions, dtype=np.int64)], self.history_length)

    def new_user(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        if features:
            raise RequestError("features", f"unknown user feature(s) {shorten_text(str(sorted(features)))}; this "
                               "sequential model reads only 'history'")
        row = self.history_row(history)
        return {"history": row, "history_ratings": torch.zeros_like(row), "user": torch.zeros(1, dtype=torch.int64)}

    def check(self, path: Path, queries: dict[str, Tensor], num_items: int, model: RetrievalModel) -> None:
        super().check(path, queries, num_items, model)
        users = queries.get("user")
        if users is not None:
            in_range(path, QUERY_PREFIX + "user", users, 0, int(getattr(model, "num_users", 0)) + 1)


class TensorQueries(QueryBuilder):
    """Queries of a Python-built model: a new user's ``features`` ARE the model's query features.

    ``keys`` (from the known users' stored batch, if any) fix the batch keys, dtypes and
    trailing shapes; a request must give every key. Without known users any keys are taken.
    """

    kind = "tensors"

    def __init__(self, keys: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(None)
        self.keys = keys or {}

    @classmethod
    def like(cls, queries: dict[str, Tensor]) -> TensorQueries:
        """The builder of batches shaped like the known users' ``[U, ...]`` ``queries``."""
        return cls({k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape[1:])}
                    for k, v in queries.items()})

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "query_keys": self.keys}

    def feature_columns(self) -> list[str]:
        return list(self.keys)

    def new_user(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        if not features:
            raise RequestError("features", f"this model reads no item history: give its query features "
                               f"{self.feature_columns() or ''}")
        if self.keys:
            unknown, missing = sorted(set(features) - set(self.keys)), sorted(set(self.keys) - set(features))
            if unknown or missing:
                raise RequestError("features", f"this model reads query features {list(self.keys)}"
                                   + (f"; unknown {shorten_text(str(unknown))}" if unknown else "")
                                   + (f"; missing {missing}" if missing else ""))
        return {name: self._tensor(name, value).unsqueeze(0) for name, value in features.items()}

    def _tensor(self, name: str, value: Any) -> Tensor:
        """``value`` as a tensor of the key's dtype and shape: numbers only, whole numbers for integer keys."""
        spec = self.keys.get(name)
        dtype = getattr(torch, spec["dtype"]) if spec else None
        field = f"features.{name}"
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            array = np.asarray(None, dtype=object)
        if array.dtype.kind not in "iuf":
            raise RequestError(field, f"{shorten(value)} is not a number (or list of numbers)")
        if not np.isfinite(array).all():
            raise RequestError(field, f"{shorten(value)} is not finite")
        integer = dtype is not None and not dtype.is_floating_point
        if integer and array.dtype.kind == "f" and not (array == np.round(array)).all():
            raise RequestError(field, f"{shorten(value)} is not a whole number ({spec['dtype']})")
        try:
            tensor = torch.as_tensor(array, dtype=dtype)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise RequestError(field, f"{shorten(value)} is not a valid {spec['dtype'] if spec else 'value'}") from None
        if spec and list(tensor.shape) != spec["shape"]:
            raise RequestError(field, f"shape {list(tensor.shape)}, the model reads {spec['shape']}")
        return tensor


BUILDERS = {"two-tower": TwoTowerQueries, "sequential": SequentialQueries, "tensors": TensorQueries}


def builder_from_manifest(folder: Path, manifest: dict[str, Any]) -> QueryBuilder:
    """The query builder a bundle's manifest names, with its files read.

    Raises:
        TowerrecError: an unknown builder, bad facts or an unreadable ``features.json`` (named).
    """
    path = folder / "bundle.json"
    kind = manifest.get("query_builder")
    if kind not in BUILDERS:
        raise TowerrecError(f"{path}: query_builder {kind!r} is not one of {', '.join(BUILDERS)}", hint=AGAIN)
    length = manifest.get("history_length")
    if length is not None and not _natural(length):
        raise TowerrecError(f"{path}: history_length must be a non-negative integer or null", hint=AGAIN)
    if kind == "sequential":
        if not length:
            raise TowerrecError(f"{path}: a sequential bundle needs a history_length", hint=AGAIN)
        return SequentialQueries(length)
    if kind == "tensors":
        keys = manifest.get("query_keys")
        if not isinstance(keys, dict) or not all(
                isinstance(v, dict) and isinstance(getattr(torch, str(v.get("dtype")), None), torch.dtype)
                and isinstance(v.get("shape"), list) for v in keys.values()):
            raise TowerrecError(f"{path}: query_keys must map batch keys to {{dtype, shape}}", hint=AGAIN)
        return TensorQueries(keys)
    if not _natural(manifest.get("latest_timestamp")):
        raise TowerrecError(f"{path}: latest_timestamp must be a non-negative integer", hint=AGAIN)

    from towerrec import fsio
    from towerrec.runs import read_features

    features_path = folder / FEATURES_FILE
    if not features_path.is_file():
        raise TowerrecError(f"{features_path}: missing", hint="the bundle is incomplete: export it again")
    raw = fsio.read_json(features_path, hint=AGAIN)
    features = read_features(features_path, raw, hint=AGAIN)
    return TwoTowerQueries(features, manifest["latest_timestamp"], length)


def left_padded(rows: list[np.ndarray], width: int) -> Tensor:
    """``[len(rows), width]`` the last ``width`` positions of each row (+1), right-aligned, 0 before."""
    out = torch.zeros(len(rows), width, dtype=torch.int64)
    for r, positions in enumerate(rows):
        recent = np.asarray(positions, dtype=np.int64)[-width:] + 1
        if recent.size:
            out[r, width - recent.size :] = torch.from_numpy(recent)
    return out


def in_range(path: Path, name: str, values: Tensor, low: int, high: int) -> None:
    """Raise a TowerrecError naming ``path`` and ``name`` unless ``low <= values < high``."""
    if values.numel() == 0:
        return
    smallest, largest = int(values.min()), int(values.max())
    if smallest < low:
        raise TowerrecError(f"{path}: {name} out of range ({smallest} < {low})", hint=AGAIN)
    if largest >= high:
        raise TowerrecError(f"{path}: {name} out of range ({largest} >= {high})", hint=AGAIN)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int_range(dtype: pl.DataType | None) -> tuple[int, int] | None:
    """(low, high) of an integer polars dtype; None for any other."""
    if dtype is None or not dtype.is_integer():
        return None
    info = np.iinfo(pl.Series([], dtype=dtype).to_numpy().dtype)
    return int(info.min), int(info.max)
