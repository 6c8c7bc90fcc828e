"""A serving bundle: everything needed to answer top-K requests, and nothing that unpickles.

A bundle is a folder written by :func:`towerrec.serve.export.export_bundle`::

    bundle.json              manifest: format version, run, sizes, id types, index kind
    config.toml              the run's configuration
    features.json            fitted vocabularies / buckets / stats, catalogue ids, train users
    query_tower.safetensors  query tower weights
    candidates.safetensors   [N, d] candidate embeddings, [N] train counts per item
    users.safetensors        seen items per train user (CSR) and, for history models, their history rows
    items.parquet            item metadata (item_id, title, ...), catalogue order
    index/                   a saved index (brute force or FAISS)

:class:`Bundle` loads it (safetensors, JSON, Parquet and FAISS's binary format
only) and turns requests into query embeddings: known users by their id, new
users from user features and/or a history of item ids. Sequential runs export a
different layout (:mod:`towerrec.serve.sequential`); :func:`load_bundle` opens both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from towerrec import fsio
from towerrec.config import RunConfig, load_config
from towerrec.errors import RequestError, TowerrecError, shorten, shorten_text
from towerrec.features import FittedFeatures
from towerrec.features.fitted import DERIVED
from towerrec.index import Index, load_index
from towerrec.metrics.topk import CSR
from towerrec.models.tower import Tower
from towerrec.serve.request_features import INT64, check_feature_value
from towerrec.train.prepared import HISTORY, gather_rows, history_input

if TYPE_CHECKING:
    from towerrec.serve.sequential import SequentialBundle

BUNDLE_FORMAT_VERSION = 1
MANIFEST = "bundle.json"
FILES = (
    "config.toml",
    "features.json",
    "query_tower.safetensors",
    "candidates.safetensors",
    "users.safetensors",
    "items.parquet",
)


class QueryEncoder(nn.Module):
    """The query tower plus the model's final normalisation (cosine similarity)."""

    def __init__(self, tower: Tower, similarity: str) -> None:
        super().__init__()
        self.tower = tower
        self.similarity = similarity

    @torch.no_grad()
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = self.tower(features)
        return F.normalize(x, dim=-1) if self.similarity == "cosine" else x


def query_tower_for(config: RunConfig, features: FittedFeatures) -> Tower:
    """The untrained query tower of a two-tower config (same layout as training built)."""
    m = config.model
    inputs = list(features.inputs("query")) + history_input(config, len(features.catalogue_ids))
    return Tower(inputs, m.embedding_dim, m.layer_sizes, m.dropout, m.init)


class BundleFacts:
    """Facts every bundle kind answers from its manifest, candidates and seen-items table."""

    manifest: dict[str, Any]
    candidate_embeddings: Tensor
    seen: CSR

    @property
    def num_items(self) -> int:
        return int(self.candidate_embeddings.shape[0])

    @property
    def num_users(self) -> int:
        return self.seen.num_rows

    @property
    def user_id_type(self) -> str:
        return self.manifest["user_id_type"]

    @property
    def item_id_type(self) -> str:
        return self.manifest["item_id_type"]


@dataclass
class Bundle(BundleFacts):
    """A loaded serving bundle. Build queries, embed them, search the index."""

    folder: Path
    manifest: dict[str, Any]
    config: RunConfig
    features: FittedFeatures
    encoder: QueryEncoder
    candidate_embeddings: Tensor  # [N, d]
    item_counts: Tensor  # [N]
    seen: CSR  # rows = train users
    history: Tensor | None  # [num_users, L] catalogue index + 1, 0-padded
    items: pl.DataFrame
    index: Index

    # ---------------------------------------------------------------- facts
    @property
    def history_length(self) -> int | None:
        return None if self.history is None else int(self.history.shape[1])

    @property
    def user_ids(self) -> np.ndarray:
        """Raw ids of the train users, in row order."""
        return self.features.user_ids

    def feature_columns(self) -> list[str]:
        """User-side columns a new user's request may give (e.g. age, gender, timestamp)."""
        columns = []
        for feature in self.features.side("query"):
            column = feature.spec.column
            column = DERIVED[column][0] if column in DERIVED else column
            if column != "user_id" and column not in columns:
                columns.append(column)
        return columns

    # ------------------------------------------------------------------ ids
    def user_rows(self, user_ids: list[Any]) -> np.ndarray:
        """Train-user row of each raw id (str ids of int-typed users are parsed); -1 unknown."""
        return self.features.user_index(_typed(user_ids, self.user_id_type))

    def item_positions(self, item_ids: list[Any]) -> np.ndarray:
        """Catalogue position of each raw item id; -1 unknown."""
        return self.features.item_index(_typed(item_ids, self.item_id_type))

    def seen_positions(self, row: int) -> np.ndarray:
        return self.seen.indices[self.seen.indptr[row] : self.seen.indptr[row + 1]].numpy()

    # -------------------------------------------------------------- queries
    def known_user_queries(self, rows: np.ndarray) -> dict[str, Tensor]:
        """Query features of train users (by row), as the model saw them at the end of training."""
        ids = self.features.user_ids[rows]
        frame = pl.DataFrame(
            {
                "user_id": pl.Series(ids.tolist(), dtype=self.features._user_ids.dtype),
                "timestamp": pl.Series([self.manifest["latest_timestamp"]] * len(rows), dtype=pl.Int64),
            }
        )
        queries = self.features.encode_queries(frame)
        if self.history is not None:
            queries[HISTORY] = self.history[torch.as_tensor(rows, dtype=torch.int64)]
        return queries

    def new_user_queries(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        """Query features of one user unseen in training: their features (id -> OOV) and item history.

        Args:
            features: raw user columns (see :meth:`feature_columns`); missing ones are unknown.
            history: catalogue positions of the user's items, oldest first.
        """
        if features:
            queries = self._encode_new_user(features)
        else:  # a history alone: the other query features (OOV id, latest timestamp) never change
            if self._anonymous is None:
                self._anonymous = self._encode_new_user({})
            queries = dict(self._anonymous)
        if self.history is not None:
            queries[HISTORY] = history_row(history, self.history_length)
        return queries

    def _encode_new_user(self, features: dict[str, Any]) -> dict[str, Tensor]:
        allowed = self.feature_columns()
        unknown = sorted(set(features) - set(allowed))
        if unknown:
            raise RequestError(
                "features", f"unknown user feature(s) {shorten_text(str(unknown))}; this model reads "
                f"{allowed or 'no user features'}"
            )
        columns: dict[str, pl.Series] = {"user_id": pl.Series([None], dtype=self.features._user_ids.dtype)}
        users = self.features._users
        numeric = {f.spec.column for f in self.features.side("query") if f.spec.kind in ("bucketized", "normalized")}
        for name in allowed:
            dtype = users.schema[name] if users is not None and name in users.columns else None
            integer = INT64 if name == "timestamp" else _int_range(dtype)
            value = check_feature_value(name, features.get(name), numeric=name in numeric, integer=integer)
            if name == "timestamp" and value is None:
                value = self.manifest["latest_timestamp"]
            try:
                series = pl.Series(name, [value], dtype=pl.Float64 if isinstance(value, float) else None)
                if dtype is not None and series.dtype != dtype and value is not None:
                    series = series.cast(dtype, strict=True)
            except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
                raise RequestError(f"features.{name}", f"{shorten(value)} is not a valid {dtype}") from None
            columns[name] = series
        return self.features.encode_queries(pl.DataFrame(columns))

    def history_row(self, positions: np.ndarray) -> Tensor:
        """[1, L] history input of catalogue positions (oldest first), as the tower was trained."""
        return history_row(positions, self.history_length)

    def embed(self, queries: dict[str, Tensor]) -> Tensor:
        """[n, d] query embeddings."""
        return self.encoder(queries)

    def exclusions(self, rows: np.ndarray) -> CSR:
        return gather_rows(self.seen, torch.as_tensor(rows, dtype=torch.int64))

    def records(self, indices: list[int], scores: list[float]) -> list[dict[str, Any]]:
        """Item metadata for catalogue positions, with scores."""
        ids = self._item_ids
        titles = self._titles
        return [{"item_id": ids[i], "title": titles[i], "score": s} for i, s in zip(indices, scores)]

    def __post_init__(self) -> None:
        self._anonymous: dict[str, Tensor] | None = None
        self._item_ids = self.items["item_id"].to_list()
        self._titles = [str(t) if t is not None else str(i) for i, t in zip(self._item_ids, self.items["title"].to_list())]


def history_row(positions: np.ndarray, length: int) -> Tensor:
    """[1, length] history row: the last ``length`` positions (+1), oldest first, 0-padded."""
    recent = np.asarray(positions, dtype=np.int64)[-length:] + 1
    row = torch.zeros(1, length, dtype=torch.int64)
    row[0, : recent.size] = torch.from_numpy(recent)
    return row


def _int_range(dtype: pl.DataType | None) -> tuple[int, int] | None:
    """(low, high) of an integer polars dtype; None for any other."""
    if dtype is None or not dtype.is_integer():
        return None
    info = np.iinfo(pl.Series([], dtype=dtype).to_numpy().dtype)
    return int(info.min), int(info.max)


def _typed(values: list[Any], kind: str) -> np.ndarray:
    """Raw ids as the dataset types them; an int-typed id that does not parse can match no user."""
    if kind == "int":
        out = np.full(len(values), _NO_ID, dtype=np.int64)
        for i, value in enumerate(values):
            try:
                number = int(value) if not isinstance(value, (bool, float)) else None
            except (TypeError, ValueError, OverflowError):
                number = None
            if number is not None and abs(number) < -_NO_ID:
                out[i] = number
        return out
    array = np.empty(len(values), dtype=object)
    array[:] = [str(v) for v in values]
    return array


_NO_ID = -(2**62)


def load_bundle(folder: str | Path) -> Bundle | SequentialBundle:
    """Opens a bundle (two-tower or sequential); each missing or foreign file is a :class:`TowerrecError` naming it."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise TowerrecError(f"{folder}: not a serving bundle (no {MANIFEST})", hint="write one with `towerrec export RUN_DIR --out BUNDLE`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TowerrecError(f"{path}: not valid JSON ({error})", hint="export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise TowerrecError(
            f"{path}: bundle format {version!r}, this towerrec reads {BUNDLE_FORMAT_VERSION}", hint="export it again"
        )
    if manifest.get("model_kind") == "sequential":
        from towerrec.serve.sequential import load_sequential_bundle

        return load_sequential_bundle(folder, manifest)
    for name in FILES:
        if not (folder / name).is_file():
            raise TowerrecError(f"{folder / name}: missing", hint="the bundle is incomplete: export it again")
    config = load_config(folder / "config.toml")
    try:
        features = FittedFeatures.from_json(json.loads((folder / "features.json").read_text()))
    except (json.JSONDecodeError, KeyError) as error:
        raise TowerrecError(f"{folder / 'features.json'}: unreadable ({error})", hint="export the bundle again") from None
    tower = query_tower_for(config, features)
    weights = _tensors(folder / "query_tower.safetensors")
    try:
        tower.load_state_dict(weights)
    except RuntimeError as error:
        raise TowerrecError(
            f"{folder / 'query_tower.safetensors'}: weights do not fit the bundle's config ({str(error).splitlines()[0]})",
            hint="export the bundle again",
        ) from None
    encoder = QueryEncoder(tower.eval(), config.model.similarity)
    candidates = _tensors(folder / "candidates.safetensors")
    users = _tensors(folder / "users.safetensors")
    index = load_index(folder / "index")
    embeddings = candidates["embeddings"]
    if index.num_candidates != embeddings.shape[0] or embeddings.shape[0] != len(features.catalogue_ids):
        raise TowerrecError(f"{folder}: index, embeddings and catalogue disagree in size", hint="export the bundle again")
    return Bundle(
        folder=folder,
        manifest=manifest,
        config=config,
        features=features,
        encoder=encoder,
        candidate_embeddings=embeddings,
        item_counts=candidates["item_counts"],
        seen=CSR(users["seen_indptr"], users["seen_indices"]),
        history=users.get("history"),
        items=fsio.read_parquet(folder / "items.parquet", hint="export the bundle again"),
        index=index,
    )


def _tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise TowerrecError(f"{path}: unreadable ({error})", hint="export the bundle again") from None
