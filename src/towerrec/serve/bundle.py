"""A serving bundle: everything needed to answer top-K requests, and nothing that unpickles.

A bundle is a folder written by :func:`towerrec.serve.export.export_bundle`::

    bundle.json              manifest: format version, run, config hash, sizes, id types, index kind,
                             SHA-256 of every other file (checked by load_bundle)
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
from torch import Tensor, nn

from towerrec import fsio
from towerrec.config import RunConfig
from towerrec.errors import RequestError, TowerrecError, first_line, shorten, shorten_text
from towerrec.features import FittedFeatures
from towerrec.features.fitted import DERIVED
from towerrec.index import Index, load_index
from towerrec.metrics.topk import CSR, gather_rows
from towerrec.models.tower import Tower
from towerrec.serve.request_features import INT64, check_feature_value
from towerrec.train.prepared import HISTORY, history_input

if TYPE_CHECKING:
    from towerrec.serve.sequential import SequentialBundle

BUNDLE_FORMAT_VERSION = 2  # 2: SHA-256 of every file in bundle.json
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
        """L, the length of the ``user_history`` feature; None when the model has none."""
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
        """Catalogue positions of the items train user ``row`` saw (internal: positions, not ids)."""
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
        """The seen items of train users ``rows`` as a CSR of catalogue positions (one row per user)."""
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
    """Opens a bundle (two-tower or sequential), refusing one that is damaged, edited or inconsistent.

    Checks, before serving a single request: the manifest's format; ``config.toml``
    against the ``config_hash`` recorded at export; every file readable; every index
    the service will look up within its table (seen-items CSR, history rows, sizes of
    vocabularies, embeddings, index and item table); and every file's SHA-256.

    Raises:
        TowerrecError: one line naming the file and what is wrong, hint "export the bundle again".
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise TowerrecError(f"{folder}: not a serving bundle (no {MANIFEST})", hint="write one with `towerrec export RUN_DIR --out BUNDLE`")
    try:
        manifest = json.loads(fsio.read_text(path, hint=AGAIN))
    except json.JSONDecodeError as error:
        raise TowerrecError(f"{path}: not valid JSON ({error})", hint=AGAIN) from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise TowerrecError(
            f"{path}: bundle format {version!r}, this towerrec reads {BUNDLE_FORMAT_VERSION}", hint="export it again"
        )
    if not isinstance(manifest.get("checksums"), dict):
        raise TowerrecError(f"{path}: lists no file checksums", hint=AGAIN)
    _check_manifest_facts(path, manifest)
    if manifest.get("model_kind") == "sequential":
        from towerrec.serve.sequential import load_sequential_bundle

        bundle: Bundle | SequentialBundle = load_sequential_bundle(folder, manifest)
    else:
        bundle = _load_two_tower_bundle(folder, manifest)
    fsio.verify_checksums(folder, manifest["checksums"], hint=AGAIN)
    return bundle


def _load_two_tower_bundle(folder: Path, manifest: dict[str, Any]) -> Bundle:
    from towerrec.runs import load_run_config, read_features

    for name in FILES:
        if not (folder / name).is_file():
            raise TowerrecError(f"{folder / name}: missing", hint="the bundle is incomplete: export it again")
    config = load_run_config(folder / "config.toml", manifest.get("config_hash"), hint=EDITED)
    features_path = folder / "features.json"
    try:
        raw_features = json.loads(fsio.read_text(features_path, hint=AGAIN))
    except json.JSONDecodeError as error:
        raise TowerrecError(f"{features_path}: not valid JSON ({error})", hint=AGAIN) from None
    features = read_features(features_path, raw_features, hint=AGAIN)
    tower = query_tower_for(config, features)
    weights = _tensors(folder / "query_tower.safetensors")
    try:
        tower.load_state_dict(weights)
    except RuntimeError as error:
        raise TowerrecError(
            f"{folder / 'query_tower.safetensors'}: weights do not fit the bundle's config ({first_line(error)})",
            hint=AGAIN,
        ) from None
    encoder = QueryEncoder(tower.eval(), config.model.similarity)
    candidates = _tensors(folder / "candidates.safetensors")
    users = _tensors(folder / "users.safetensors")
    index = load_index(folder / "index")
    items = fsio.read_parquet(folder / "items.parquet", hint=AGAIN)
    embeddings, item_counts = check_candidates(folder, candidates, index, items, len(features.catalogue_ids),
                                               manifest["dim"])
    num_items = int(embeddings.shape[0])
    seen = check_seen(folder / "users.safetensors", users, num_items)
    if seen.num_rows != len(features.user_ids):
        raise TowerrecError(f"{folder / 'users.safetensors'}: seen items for {seen.num_rows} users, "
                            f"features.json has {len(features.user_ids)} train users", hint=AGAIN)
    history = users.get("history")
    if history is not None:
        check_rows(folder / "users.safetensors", "history", history, seen.num_rows, num_items)
    return Bundle(
        folder=folder,
        manifest=manifest,
        config=config,
        features=features,
        encoder=encoder,
        candidate_embeddings=embeddings,
        item_counts=item_counts,
        seen=seen,
        history=history,
        items=items,
        index=index,
    )


AGAIN = "export the bundle again"
EDITED = "export the bundle again, or restore the file"


def _check_manifest_facts(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest entries requests read: id types, embedding size, latest timestamp (two-tower)."""
    for key in ("user_id_type", "item_id_type"):
        if manifest.get(key) not in ("int", "str"):
            raise TowerrecError(f"{path}: {key} must be \"int\" or \"str\"", hint=AGAIN)
    needed = ["dim"] + ([] if manifest.get("model_kind") == "sequential" else ["latest_timestamp"])
    for key in needed:
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TowerrecError(f"{path}: {key} must be a non-negative integer", hint=AGAIN)


def check_candidates(folder: Path, candidates: dict[str, Tensor], index: Index, items: pl.DataFrame,
                     num_items: int, dim: int) -> tuple[Tensor, Tensor]:
    """``embeddings [N, d]`` and ``item_counts [N]`` of ``candidates.safetensors``; the index, catalogue and
    item table agree on N, the manifest and index on d."""
    path = folder / "candidates.safetensors"
    embeddings, counts = candidates.get("embeddings"), candidates.get("item_counts")
    if embeddings is None or counts is None or embeddings.dim() != 2 or counts.shape != (embeddings.shape[0],):
        raise TowerrecError(f"{path}: needs embeddings [N, d] and item_counts [N]", hint=AGAIN)
    n = int(embeddings.shape[0])
    index_dim = getattr(index, "dim", None)
    if index_dim is None and hasattr(index, "embeddings"):
        index_dim = int(index.embeddings.shape[1])
    dims = {"bundle.json": dim, "embeddings": int(embeddings.shape[1]), "index": index_dim}
    if len({d for d in dims.values() if d is not None}) != 1:
        raise TowerrecError(f"{folder}: embedding sizes disagree ({', '.join(f'{k} {v}' for k, v in dims.items())})",
                            hint=AGAIN)
    if not (index.num_candidates == n == num_items == items.height):
        raise TowerrecError(
            f"{folder}: index ({index.num_candidates}), embeddings ({n}), catalogue ({num_items}) and "
            f"items.parquet ({items.height}) disagree in size", hint=AGAIN)
    if "item_id" not in items.columns or "title" not in items.columns:
        raise TowerrecError(f"{folder / 'items.parquet'}: needs columns item_id and title", hint=AGAIN)
    return embeddings, counts


def check_seen(path: Path, users: dict[str, Tensor], num_items: int) -> CSR:
    """The seen-items CSR of ``users.safetensors``, checked so that every lookup stays in range.

    ``seen_indptr`` must be a 1-D int64 [num_users + 1] running from 0 to
    ``len(seen_indices)`` without decreasing, and ``0 <= seen_indices < num_items``.
    """
    indptr, indices = users.get("seen_indptr"), users.get("seen_indices")
    if indptr is None or indices is None:
        raise TowerrecError(f"{path}: lacks seen_indptr / seen_indices", hint=AGAIN)
    for name, tensor in (("seen_indptr", indptr), ("seen_indices", indices)):
        if tensor.dim() != 1 or tensor.dtype != torch.int64:
            raise TowerrecError(f"{path}: {name} must be a 1-D int64 tensor", hint=AGAIN)
    if indptr.numel() == 0 or int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel():
        raise TowerrecError(f"{path}: seen_indptr must run from 0 to len(seen_indices) = {indices.numel()}",
                            hint=AGAIN)
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise TowerrecError(f"{path}: seen_indptr decreases", hint=AGAIN)
    _in_range(path, "seen_indices", indices, 0, num_items)
    return CSR(indptr, indices)


def check_rows(path: Path, name: str, rows: Tensor, num_rows: int, num_items: int) -> None:
    """A ``[num_rows, L]`` int64 table of catalogue index + 1 (0 = padding)."""
    if rows.dim() != 2 or rows.dtype != torch.int64 or rows.shape[0] != num_rows:
        raise TowerrecError(f"{path}: {name} must be int64 [{num_rows}, L], is {rows.dtype} {list(rows.shape)}",
                            hint=AGAIN)
    _in_range(path, name, rows, 0, num_items + 1)


def _in_range(path: Path, name: str, values: Tensor, low: int, high: int) -> None:
    if values.numel() == 0:
        return
    smallest, largest = int(values.min()), int(values.max())
    if smallest < low:
        raise TowerrecError(f"{path}: {name} out of range ({smallest} < {low})", hint=AGAIN)
    if largest >= high:
        raise TowerrecError(f"{path}: {name} out of range ({largest} >= {high})", hint=AGAIN)


def bundle_files(folder: Path) -> list[str]:
    """Relative paths of every file of a bundle folder, except its manifest and scratch marks."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, fsio.STAGING_MARK) and not p.name.startswith(".")
    )


def _tensors(path: Path) -> dict[str, Tensor]:
    return fsio.read_tensors(path, hint=AGAIN)
