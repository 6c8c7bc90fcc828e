"""A serving bundle: any retrieval model with its catalogue and known users, and nothing that unpickles.

One layout for every :class:`~towerrec.model.RetrievalModel` (two-tower and
sequential runs, Python-built models), written by
:func:`towerrec.serve.export.export_bundle`::

    bundle.json              manifest: format version, source (run or Python), sizes, id types, query
                             builder and its facts, index kind, item aliases, SHA-256 of every other file
    model/                   the whole model, saved by towerrec.save (model.json + model.safetensors)
    candidates.safetensors   embeddings [N, d], item_counts [N] (training interactions: popular fallback)
    users.safetensors        seen items per known user (CSR: seen_indptr, seen_indices) and each known
                             user's query batch (query.<key> [U, ...])
    users.parquet            known user ids (user_id), in row order
    items.parquet            item metadata (item_id, title, ...), catalogue order
    index/                   a saved index over the candidate embeddings (brute force or FAISS)
    config.toml              runs only: the run's configuration (checked against config_hash)
    features.json            two-tower runs only: fitted vocabularies, for new users' features
    ranker/, rules/          exported with a ranker only: the ranking stage (:mod:`towerrec.serve.ranking`)

:func:`load_bundle` opens it (JSON, safetensors, Parquet and FAISS's binary format
only) and :class:`Bundle` answers: ``bundle.recommend(user_id, k)`` for a known
user, ``bundle.recommend(history=[...])`` / ``features={...}`` for a new one. A
request becomes the model's query batch through the bundle's query builder
(:mod:`towerrec.serve.queries`); the model runs on the bundle's device, the index
stays on the CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec import fsio
from towerrec.devices import resolve_device
from towerrec.config import RunConfig
from towerrec.errors import RequestError, TowerrecError, first_line
from towerrec.index import Index, load_index
from towerrec.metrics.topk import CSR
from towerrec.model import RetrievalModel
from towerrec.serve.queries import AGAIN, QUERY_PREFIX, QueryBuilder, TensorQueries, builder_from_manifest, in_range
from towerrec.serve.ranking import RankingStage, load_ranking_stage, split_features

BUNDLE_FORMAT_VERSION = 3  # 3: one layout for every retrieval model (model/ saved by towerrec.save)
MANIFEST = "bundle.json"
MODEL_FOLDER = "model"
FILES = ("candidates.safetensors", "users.safetensors", "users.parquet", "items.parquet")
EDITED = "export the bundle again, or restore the file"
UNKNOWN_ITEMS = ("error", "warn", "ignore")


@dataclass
class Bundle:
    """A loaded serving bundle: turns requests into query batches, embeds them, searches the index.

    Attributes:
        model: the retrieval model (eval mode, on ``device``).
        queries: the query builder (:mod:`towerrec.serve.queries`).
        candidate_embeddings: ``[N, d]`` float32, CPU.
        item_counts: ``[N]`` training interactions per item.
        seen: rows = known users, columns = catalogue positions of their seen items.
        user_queries: each known user's query batch, ``{key: [U, ...]}``.
        user_ids_series: known user ids in row order.
        items: ``item_id``, ``title`` (and more), catalogue order.
        config: the run's configuration (None for a Python-built model).
        ranking: the ranking stage (ranker and rules; :mod:`towerrec.serve.ranking`), None without a ranker.
    """

    folder: Path
    manifest: dict[str, Any]
    model: RetrievalModel
    queries: QueryBuilder
    candidate_embeddings: Tensor
    item_counts: Tensor
    seen: CSR
    user_queries: dict[str, Tensor]
    user_ids_series: pl.Series
    items: pl.DataFrame
    index: Index
    config: RunConfig | None = None
    device: torch.device = torch.device("cpu")
    ranking: RankingStage | None = None

    def __post_init__(self) -> None:
        self._item_ids = self.items["item_id"].to_list()
        self._titles = [str(t) if t is not None else str(i) for i, t in zip(self._item_ids, self.items["title"].to_list())]
        self._item_rows = {_key(i): p for p, i in enumerate(self._item_ids)}
        for twin, canonical in (self.manifest.get("item_aliases") or {}).items():  # merged duplicate titles
            if _key(canonical) in self._item_rows:
                self._item_rows.setdefault(str(twin), self._item_rows[_key(canonical)])
        self._user_rows = {_key(u): r for r, u in enumerate(self.user_ids_series.to_list())}

    # ---------------------------------------------------------------- facts
    @property
    def num_items(self) -> int:
        """N, the catalogue size."""
        return int(self.candidate_embeddings.shape[0])

    @property
    def num_users(self) -> int:
        """U, the number of known users (answered by id)."""
        return self.seen.num_rows

    @property
    def user_id_type(self) -> str:
        """``"int"`` or ``"str"``: how user ids are typed (str spellings of int ids are parsed)."""
        return self.manifest["user_id_type"]

    @property
    def item_id_type(self) -> str:
        """``"int"`` or ``"str"``: how item ids are typed."""
        return self.manifest["item_id_type"]

    @property
    def user_ids(self) -> np.ndarray:
        """Raw ids of the known users, in row order."""
        return self.user_ids_series.to_numpy()

    @property
    def uses_history(self) -> bool:
        """Whether requests may carry an item history (the model reads one)."""
        return self.queries.uses_history

    @property
    def history_length(self) -> int | None:
        """L, the length of the model's history input; None when it reads none."""
        return self.queries.history_length

    def feature_columns(self) -> list[str]:
        """What a new user's ``features`` may give (user columns, or a Python model's query features; with a
        ranker, also the user columns the ranker reads)."""
        columns = self.queries.feature_columns()
        if self.ranking is not None:
            columns += [c for c in self.ranking.feature_columns() if c not in columns]
        return columns

    @property
    def candidates(self) -> int | None:
        """C, how many retrieved items the ranker scores per request; None without a ranker."""
        return None if self.ranking is None else self.ranking.candidates

    # ------------------------------------------------------------------ ids
    def user_rows(self, user_ids: list[Any]) -> np.ndarray:
        """Known-user row of each raw id (str ids of int-typed users are parsed: "042" -> 42); -1 unknown."""
        typed = _typed(user_ids, self.user_id_type).tolist()
        return np.array([self._user_rows.get(_key(v), -1) for v in typed], dtype=np.int64)

    def item_positions(self, item_ids: list[Any]) -> np.ndarray:
        """Catalogue position of each raw item id (merged twins map to their canonical item); -1 unknown."""
        lookup = self._item_rows
        out = np.array([lookup.get(_key(i), -1) for i in item_ids], dtype=np.int64)
        misses = np.flatnonzero(out < 0)
        if misses.size:  # non-canonical spellings ("042") of int ids
            typed = _typed([item_ids[j] for j in misses], self.item_id_type).tolist()
            out[misses] = [lookup.get(_key(v), -1) for v in typed]
        return out

    def seen_positions(self, row: int) -> np.ndarray:
        """Catalogue positions of known user ``row``'s seen items."""
        return self.seen.indices[self.seen.indptr[row] : self.seen.indptr[row + 1]].numpy()

    # -------------------------------------------------------------- queries
    def known_user_queries(self, rows: np.ndarray) -> dict[str, Tensor]:
        """``{key: [len(rows), ...]}`` query batch of known users (by row), as stored at export."""
        index = torch.as_tensor(rows, dtype=torch.int64)
        return {key: value[index] for key, value in self.user_queries.items()}

    def known_with_recent(self, row: int, recent: np.ndarray) -> dict[str, Tensor]:
        """``[1, ...]`` query batch of known user ``row`` with ``recent`` catalogue positions added to their history."""
        return self.queries.with_recent(self.known_user_queries(np.array([row])), recent)

    def new_user_queries(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        """``[1, ...]`` query batch of a user unseen in training: their features and/or history (catalogue
        positions, oldest first; ignored by a model that reads no history). Raises RequestError naming a bad
        field."""
        if self.ranking is not None:  # the ranker's columns are the ranking stage's to encode
            features = split_features(features, self.queries.feature_columns(), self.ranking.feature_columns())
        queries = self.queries.new_user(features, history)
        if isinstance(self.queries, TensorQueries):  # a Python model's own features: values it cannot embed are the request's fault
            try:
                self.embed(queries)
            except (IndexError, RuntimeError, ValueError, TypeError, KeyError) as exc:
                raise RequestError("features", f"the model cannot embed these query features "
                                   f"({type(exc).__name__}: {first_line(exc)})") from None
        return queries

    def history_row(self, positions: np.ndarray) -> Tensor:
        """``[1, L]`` history input of catalogue positions (oldest first), as the model was trained."""
        return self.queries.history_row(positions)

    @torch.no_grad()
    def embed(self, queries: dict[str, Tensor]) -> Tensor:
        """``[n, d]`` float32 query embeddings on the CPU (the model runs on the bundle's device)."""
        device = self.device
        if device.type != "cpu":
            queries = {k: v.to(device, non_blocking=True) for k, v in queries.items()}
        return self.model.query_embeddings(queries).float().cpu()

    def records(self, indices: list[int], scores: list[float]) -> list[dict[str, Any]]:
        """``{"item_id", "title", "score"}`` of catalogue positions, with their scores."""
        ids, titles = self._item_ids, self._titles
        return [{"item_id": ids[i], "title": titles[i], "score": s} for i, s in zip(indices, scores)]

    def ranked_records(self, found: list[tuple[int, float, float, float]]) -> list[dict[str, Any]]:
        """``{"item_id", "title", "score", "retrieval_score", "ranking_score"}`` of a re-ranked list
        (``(position, final, retrieval, ranking)`` tuples)."""
        ids, titles = self._item_ids, self._titles
        return [{"item_id": ids[p], "title": titles[p], "score": final, "retrieval_score": retrieval,
                 "ranking_score": ranking} for p, final, retrieval, ranking in found]

    def popular(self, k: int, exclude: np.ndarray | None = None) -> list[dict[str, Any]]:
        """The ``k`` items with the most training interactions (ties by position), skipping ``exclude``; score = count.

        A bundle with business rules applies them to the most popular ``max(k, candidates)`` items (as to
        a new user without features: rules with a user condition apply only where the condition matches
        a missing value); the list is not ranked.
        """
        counts = self.item_counts.double().clone()
        if exclude is not None and exclude.size:
            counts[torch.as_tensor(exclude, dtype=torch.int64)] = -torch.inf
        order = torch.sort(-counts, stable=True).indices
        rules = None if self.ranking is None else self.ranking.rules
        top = order[torch.isfinite(counts[order])][: k if rules is None else max(k, self.ranking.candidates)]
        if rules is None:
            return self.records(top.tolist(), counts[top].tolist())
        positions = top.numpy()[None, :]
        chosen = rules.select_batch(positions, counts[top].numpy()[None, :], k,
                                    rules.user_matches([self.ranking.rule_user(None, None)]))[0]
        kept = top[torch.as_tensor(chosen[chosen >= 0], dtype=torch.int64)]
        return self.records(kept.tolist(), counts[kept].tolist())

    # ------------------------------------------------------------ recommend
    def recommend(
        self,
        user_id: Any = None,
        k: int = 10,
        *,
        history: list[Any] | None = None,
        features: dict[str, Any] | None = None,
        exclude_seen: bool = True,
        exclude_ids: list[Any] | None = None,
        unknown_items: str | None = None,
        fallback: str | None = None,
    ) -> list[dict[str, Any]]:
        """Top ``k`` items for one user, in one call: ``[{"item_id", "title", "score"}, ...]``, best first.

        - ``recommend(user_id, k)``: a known user (their stored query; their seen items excluded);
          with ``history``, items they interacted with since (added to their history, excluded too).
        - ``recommend(history=[item ids], k=...)`` and/or ``features={...}``: a new user
          (see :meth:`feature_columns`); ``history`` is oldest first.

        With a ranker (:attr:`ranking`): the retriever returns ``max(k, candidates)`` items, the ranker scores
        them, the bundle's rules filter and reorder them, and the best ``k`` are kept; each record also has
        ``retrieval_score`` and ``ranking_score``, and ``score`` is the final one. Rules that remove every
        candidate give fewer items (maybe none), not an error.

        Args:
            exclude_seen: leave out the known user's seen items and the given history.
            exclude_ids: more item ids never to return (unknown ids are ignored).
            unknown_items: history ids not in the catalogue: ``"error"``, ``"warn"`` (dropped with a
                warning) or ``"ignore"`` (dropped); default: a sequential run's ``[sequence] unknown_items``,
                else ``"error"``.
            fallback: ``"popular"``: an unknown user without features or history (or with a history
                of only unknown items) gets the most popular items instead of an error (with a ranker: not
                ranked, but the bundle's rules apply, see :meth:`popular`).
        Returns:
            ``min(k, items left)`` records; scores are dot products (train counts for the fallback; with a
            ranker, the final scores of the ranking stage).
        Raises:
            TowerrecError: unknown user (without fallback), unknown history items (with ``"error"``),
                bad ``k``; RequestError: a bad feature value.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if unknown_items is None:
            sequence = getattr(self.config, "sequence", None) if self.manifest.get("model_kind") == "sequential" else None
            unknown_items = sequence.unknown_items if sequence is not None else "error"
        if unknown_items not in UNKNOWN_ITEMS:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_ITEMS}, got {unknown_items!r}")
        if fallback not in (None, "popular"):
            raise ValueError(f"fallback must be None or 'popular', got {fallback!r}")
        positions = np.empty(0, dtype=np.int64)
        if history:
            positions = self.item_positions(list(history))
            unknown = [i for i, p in zip(history, positions.tolist()) if p < 0]
            if unknown and unknown_items == "error":
                raise TowerrecError(f"history item id(s) {unknown[:10]} are not in the catalogue",
                                    hint="pass unknown_items='ignore' to drop them")
            if unknown and unknown_items == "warn":
                warnings.warn(f"ignoring history item id(s) not in the catalogue: {unknown[:10]}", stacklevel=2)
            positions = positions[positions >= 0]
        extra = self.item_positions(list(exclude_ids)) if exclude_ids else np.empty(0, dtype=np.int64)
        extra = extra[extra >= 0]
        row = -1 if user_id is None else int(self.user_rows([user_id])[0])
        if row >= 0:
            if features:
                raise TowerrecError(f"user {user_id!r} is known: their features come from the training data",
                                    hint="drop features=, or drop the user id to serve them as a new user")
            queries = self.known_with_recent(row, positions)
            exclude = np.concatenate([self.seen_positions(row), positions]) if exclude_seen else positions[:0]
            ranker_queries = self.ranking.known_queries(row) if self.ranking is not None else None
        elif features or positions.size:
            queries = self.new_user_queries(dict(features or {}), positions)
            exclude = positions if exclude_seen else positions[:0]
            ranker_queries = self.ranking.new_user_queries(dict(features or {})) if self.ranking is not None else None
        elif fallback == "popular":
            return self.popular(k, extra)
        elif user_id is not None:
            raise TowerrecError(f"user {user_id!r} is not a known user of this bundle",
                                hint="give the user's history= or features= to serve them as a new user, "
                                     "or fallback='popular'")
        else:
            raise TowerrecError("give a known user id, or a new user's history= and/or features=")
        exclude = np.concatenate([exclude, extra])
        query = self.embed(queries)
        if not torch.isfinite(query).all():
            raise TowerrecError("the query embedding contains NaN or infinity: the model cannot score this request")
        retrieve = k if self.ranking is None else max(k, self.ranking.candidates)
        found = self.index.search(query, retrieve, exclude_positions=[np.unique(exclude)])
        count = int(found.counts[0])
        positions, scores = found.indices[0, :count].tolist(), found.scores[0, :count].tolist()
        if self.ranking is None:
            return self.records(positions, scores)
        user = self.ranking.rule_user(row, features)
        return self.ranked_records(self.ranking.rerank(ranker_queries, positions, scores, k, user))


def _key(value: Any) -> str | None:
    """The canonical spelling of an id (str ids as is, ints as str(int)); None for bools and floats."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.integer):
        return str(int(value))
    return None if isinstance(value, (bool, float)) else str(value)


def _typed(values: list[Any], kind: str) -> np.ndarray:
    """Raw ids as the bundle types them; an int-typed id that does not parse can match nothing."""
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


def load_bundle(folder: str | Path, *, device: str | torch.device = "cpu") -> Bundle:
    """Opens a bundle, refusing one that is damaged, edited or inconsistent.

    Checks, before serving a single request: the manifest's format and facts;
    ``config.toml`` against the ``config_hash`` recorded at export (runs); the saved
    model (class, config, its own checksums); the ranker, its files and the rules, when the
    bundle has them (:func:`~towerrec.serve.ranking.load_ranking_stage`); every file readable; every index the
    service will look up within its table (seen-items CSR, history rows, user
    indices; sizes of embeddings, index, item and user tables); and every file's SHA-256.

    Args:
        folder: a bundle written by :func:`~towerrec.serve.export.export_bundle`.
        device: where the model and query embedding run ("cpu", "cuda", "cuda:1"); the index stays on the CPU.
    Raises:
        TowerrecError: one line naming the file and what is wrong, hint "export the bundle again";
            or the device is not available.
    """
    folder = Path(folder)
    device = resolve_device(device, hint="serve on device 'cpu' (the default)")
    path = folder / MANIFEST
    if not path.is_file():
        raise TowerrecError(f"{folder}: not a serving bundle (no {MANIFEST})",
                            hint="write one with `towerrec export RUN_DIR --out BUNDLE` or towerrec.export_bundle")
    manifest = fsio.read_json(path, hint=AGAIN)
    if not isinstance(manifest, dict) or manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise TowerrecError(
            f"{path}: bundle format {version!r}, this towerrec reads {BUNDLE_FORMAT_VERSION}", hint="export it again"
        )
    if not isinstance(manifest.get("checksums"), dict):
        raise TowerrecError(f"{path}: lists no file checksums", hint=AGAIN)
    _check_manifest_facts(path, manifest)
    for name in FILES:
        if not (folder / name).is_file():
            raise TowerrecError(f"{folder / name}: missing", hint="the bundle is incomplete: export it again")
    config = None
    if manifest.get("config_hash") is not None:
        from towerrec.runs import load_run_config

        config = load_run_config(folder / "config.toml", manifest.get("config_hash"), hint=EDITED)
    queries = builder_from_manifest(folder, manifest)
    model = _load_model(folder / MODEL_FOLDER, device)
    candidates = _tensors(folder / "candidates.safetensors")
    users_path = folder / "users.safetensors"
    users = _tensors(users_path)
    index = load_index(folder / "index")
    items = fsio.read_parquet(folder / "items.parquet", hint=AGAIN)
    embeddings, item_counts = check_candidates(folder, candidates, index, items, manifest["dim"])
    num_items = int(embeddings.shape[0])
    seen = check_seen(users_path, users, num_items)
    user_ids = fsio.read_parquet(folder / "users.parquet", hint=AGAIN)
    if "user_id" not in user_ids.columns or user_ids.height != seen.num_rows:
        raise TowerrecError(f"{folder / 'users.parquet'}: needs a user_id column with one row per known user "
                            f"({seen.num_rows})", hint=AGAIN)
    stored = {k.removeprefix(QUERY_PREFIX): v for k, v in users.items() if k.startswith(QUERY_PREFIX)}
    for key, value in stored.items():
        if value.dim() == 0 or value.shape[0] != seen.num_rows:
            raise TowerrecError(f"{users_path}: {QUERY_PREFIX}{key} must have one row per known user "
                                f"({seen.num_rows}), has shape {list(value.shape)}", hint=AGAIN)
    queries.check(users_path, stored, num_items, model)
    ranking = load_ranking_stage(folder, manifest, items["item_id"].to_list(), user_ids["user_id"].to_list(), device)
    bundle = Bundle(
        folder=folder, manifest=manifest, model=model, queries=queries, candidate_embeddings=embeddings,
        item_counts=item_counts, seen=seen, user_queries=stored, user_ids_series=user_ids["user_id"], items=items,
        index=index, config=config, device=device, ranking=ranking,
    )
    fsio.verify_checksums(folder, manifest["checksums"], hint=AGAIN)
    return bundle


def _load_model(folder: Path, device: torch.device) -> RetrievalModel:
    from towerrec.saving import load

    if not (folder / "model.json").is_file():
        raise TowerrecError(f"{folder / 'model.json'}: missing", hint="the bundle is incomplete: export it again")
    try:
        model = load(folder, map_location=device)
    except TowerrecError as error:  # the remedy is the bundle's, not the saved model's
        raise TowerrecError(error.message, hint=error.hint if "import" in (error.hint or "") else AGAIN) from None
    if not isinstance(model, RetrievalModel):
        raise TowerrecError(f"{folder}: a {type(model).__name__} is not a RetrievalModel: it cannot embed queries",
                            hint=AGAIN)
    return model


def _check_manifest_facts(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest entries requests read: id types and embedding size."""
    for key in ("user_id_type", "item_id_type"):
        if manifest.get(key) not in ("int", "str"):
            raise TowerrecError(f"{path}: {key} must be \"int\" or \"str\"", hint=AGAIN)
    value = manifest.get("dim")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TowerrecError(f"{path}: dim must be a non-negative integer", hint=AGAIN)


def check_candidates(folder: Path, candidates: dict[str, Tensor], index: Index, items: pl.DataFrame,
                     dim: int) -> tuple[Tensor, Tensor]:
    """``embeddings [N, d]`` and ``item_counts [N]`` of ``candidates.safetensors``; the index and item
    table agree on N, the manifest and index on d."""
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
    if not (index.num_candidates == n == items.height):
        raise TowerrecError(
            f"{folder}: index ({index.num_candidates}), embeddings ({n}) and items.parquet ({items.height}) "
            "disagree in size", hint=AGAIN)
    if "item_id" not in items.columns or "title" not in items.columns:
        raise TowerrecError(f"{folder / 'items.parquet'}: needs columns item_id and title", hint=AGAIN)
    return embeddings.float(), counts


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
    in_range(path, "seen_indices", indices, 0, num_items)
    return CSR(indptr, indices)


def bundle_files(folder: Path) -> list[str]:
    """Relative paths of every file of a bundle folder, except its manifest and scratch marks."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, fsio.STAGING_MARK) and not p.name.startswith(".")
    )


def _tensors(path: Path) -> dict[str, Tensor]:
    return fsio.read_tensors(path, hint=AGAIN)
