"""What every candidate index offers: build from embeddings, search top-K, save, load.

An index maps query embeddings to the k best-scoring candidates of a fixed
catalogue, optionally skipping per-query exclusions (items a user already has).
Exact (brute force) and approximate (FAISS) indexes share this interface and
the on-disk layout: a JSON manifest beside the index's own data files.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from towerrec.arrays import ArrayLike
from towerrec.errors import TowerrecError
from towerrec.ids import IdList, IdLookup
from towerrec.metrics.topk import CSR

FORMAT_VERSION = 2  # 2: SHA-256 of the data files in index.json
MANIFEST = "index.json"

Exclusions = CSR | Sequence[Sequence[int]]
"""Catalogue positions to skip, per query (internal form: towerrec's own callers hold positions)."""

ExcludeIds = Sequence[IdList] | np.ndarray | Tensor
"""Raw item ids to skip, one list per query (the public form)."""


@dataclass(frozen=True)
class SearchResult:
    """The best candidates of each query, best first: ``min(k, items left)`` of them.

    A query keeps ``counts[q]`` results: ``k``, or fewer when its exclusions leave
    fewer than ``k`` candidates (or the catalogue is smaller than ``k``). Rows are
    padded to a common width ``min(k, N)`` with index -1 and score -inf.

    Attributes:
        scores: [Q, width] scores, non-increasing along each row (-inf padding).
        indices: [Q, width] int64 catalogue positions (-1 padding).
        ids: Q lists of candidate ids (int or str, as given to the index), ``counts[q]`` long.
        counts: [Q] int64 results per query.
    """

    scores: Tensor
    indices: Tensor
    ids: list[list[Any]]
    counts: Tensor

    @property
    def short(self) -> list[int]:
        """Queries that got fewer results than the widest row (fewer than ``k`` items were left)."""
        return torch.nonzero(self.counts < self.indices.shape[1]).flatten().tolist()


class Index(ABC):
    """Interface of a top-K candidate index: exact (:class:`BruteForceIndex`) or approximate (:class:`FaissIndex`).

    ``kind`` names the implementation in the saved manifest; ``is_exact`` says
    whether search returns the true top-K (metrics may rely on it).

    Exclusions are raw item ids (``exclude_ids=``, one list per query, as
    TensorFlow Recommenders' ``query_with_exclusions`` takes them). Ids of the
    index's kind (int or str) that the index does not hold are ignored: they could
    never be returned. ``exclude_positions=`` (catalogue row numbers) is towerrec's
    internal form for callers that already hold positions; pass one or the other.
    """

    kind: str
    is_exact: bool
    _ids: np.ndarray

    @abstractmethod
    def build(self, candidate_embeddings: ArrayLike, ids: Sequence[int | str] | np.ndarray) -> Index:
        """(Re)indexes the catalogue: [N, d] embeddings and their N ids. Returns self."""

    @abstractmethod
    def search(
        self,
        queries: ArrayLike,
        k: int,
        *,
        exclude_ids: ExcludeIds | None = None,
        exclude_positions: Exclusions | None = None,
    ) -> SearchResult:
        """Top ``k`` candidates of each of the [Q, d] ``queries``, never one of ``exclude_ids``."""

    def _exclusions(
        self, exclude_ids: ExcludeIds | None, exclude_positions: Exclusions | None, num_queries: int
    ) -> CSR | None:
        """The per-query exclusions as a CSR of catalogue positions, from ids (public) or positions (internal).

        Raises:
            TypeError: both forms given; ids not one list per query; an id of the wrong kind (int vs str).
            ValueError: not one list per query.
        """
        if exclude_ids is not None and exclude_positions is not None:
            raise TypeError("pass exclude_ids (item ids) or exclude_positions (catalogue positions), not both")
        if exclude_ids is None:
            return as_exclusions(exclude_positions, num_queries)
        lookup = getattr(self, "_lookup", None)
        if lookup is None or lookup.ids is not self._ids:  # built lazily, again after a rebuild
            lookup = self._lookup = IdLookup(self._ids)
        indptr, positions = lookup.exclusion_rows(exclude_ids, num_queries)
        return CSR(torch.from_numpy(indptr), torch.from_numpy(positions))

    @abstractmethod
    def save(self, folder: str | Path) -> None:
        """Writes the index to ``folder`` (created if needed); never pickles."""

    @classmethod
    @abstractmethod
    def load(cls, folder: str | Path) -> Index:
        """Reads an index written by :meth:`save`."""


def as_exclusions(exclude: Exclusions | None, num_queries: int) -> CSR | None:
    """Turns per-query lists of catalogue positions into a :class:`CSR` of ``num_queries`` rows."""
    if exclude is None:
        return None
    csr = exclude if isinstance(exclude, CSR) else CSR.from_lists(exclude)
    if csr.num_rows != num_queries:
        raise TowerrecError(f"exclusions have {csr.num_rows} rows but there are {num_queries} queries")
    return csr


def check_k(k: int) -> None:
    """Raises unless ``k`` ≥ 1 (an int)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TowerrecError(f"k must be ≥ 1, got {k}")


def items_left(num_candidates: int, exclude: CSR | None, num_queries: int) -> Tensor:
    """[Q] int64 candidates each query keeps after its exclusions (repeats counted once).

    Raises :class:`TowerrecError` when an excluded position lies outside the catalogue.
    We never raise for a query with fewer than ``k`` candidates left: it gets the ones
    that are left (a power user who has seen most of the catalogue is not an error).
    """
    if exclude is None or exclude.indices.numel() == 0:
        return torch.full((num_queries,), num_candidates, dtype=torch.int64)
    check_exclusions(num_candidates, exclude)
    owner = torch.repeat_interleave(torch.arange(exclude.num_rows), torch.diff(exclude.indptr))
    distinct = torch.unique(owner * num_candidates + exclude.indices) // num_candidates
    return num_candidates - torch.bincount(distinct, minlength=exclude.num_rows)


def check_exclusions(num_candidates: int, exclude: CSR | None) -> None:
    """Raises :class:`TowerrecError` when an excluded position lies outside the catalogue."""
    if exclude is None or exclude.indices.numel() == 0:
        return
    if int(exclude.indices.min()) < 0 or int(exclude.indices.max()) >= num_candidates:
        raise TowerrecError(
            f"excluded positions must lie in [0, {num_candidates})",
            hint="exclusions are catalogue positions, not raw item ids",
        )


def pad_short_rows(scores: Tensor, indices: Tensor, counts: Tensor) -> None:
    """In place: positions at or after ``counts[q]`` of each row become index -1, score -inf."""
    pad = torch.arange(indices.shape[1], device=indices.device).unsqueeze(0) >= counts.to(indices.device).unsqueeze(1)
    if bool(pad.any()):
        indices.masked_fill_(pad, -1)
        scores.masked_fill_(pad.to(scores.device), -torch.inf)


def result_ids(id_array: np.ndarray, indices: np.ndarray, counts: np.ndarray) -> list[list[Any]]:
    """Each row's ids, ``counts[q]`` of them (padding dropped)."""
    if indices.size == 0 or bool((counts == indices.shape[1]).all()):
        return id_array[indices].tolist()
    return [id_array[row[:count]].tolist() for row, count in zip(indices, counts.tolist())]


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Writes ``index.json`` (``format_version`` and the SHA-256 of every other file of ``folder``)
    atomically; call it after the data files."""
    from towerrec import fsio

    folder = Path(folder)
    names = [p.name for p in folder.iterdir()
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(".") and not p.name.endswith(".tmp")]
    payload = {"format_version": FORMAT_VERSION, **manifest, "checksums": fsio.checksums(folder, names)}
    fsio.atomic_write_text(folder / MANIFEST, json.dumps(payload))


def read_manifest(folder: str | Path, kind: str) -> dict[str, Any]:
    """Reads and checks ``index.json``: present, valid JSON, this format version and kind, and every
    data file matching its recorded SHA-256."""
    from towerrec import fsio

    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise TowerrecError(f"{path}: no saved index here (missing {MANIFEST})", hint="save an index into this folder first")
    manifest = fsio.read_json(path, hint=CORRUPT)
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise TowerrecError(
            f"{path}: index format_version {version!r}, this towerrec reads version {FORMAT_VERSION}",
            hint="rebuild the index with this towerrec version",
        )
    if manifest.get("kind") != kind:
        raise TowerrecError(f"{path}: holds a {manifest.get('kind')!r} index, not {kind!r}")
    if not isinstance(manifest.get("checksums"), dict):
        raise TowerrecError(f"{path}: lists no file checksums", hint=CORRUPT)
    fsio.verify_checksums(folder, manifest["checksums"], hint=CORRUPT)
    return manifest


CORRUPT = "the index folder is corrupt: save (or export) it again"
