"""Exact top-K retrieval: score every candidate, keep the best k.

One matmul per chunk of queries against all N candidate embeddings, then
``topk``; excluded items are set to -inf first. Exact and fast up to millions
of candidates on a GPU; beyond that an approximate index trades recall for speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from towerrec import fsio
from towerrec.arrays import ArrayLike, as_float_matrix
from towerrec.errors import TowerrecError
from towerrec.ids import normalize_ids
from towerrec.index.base import (
    ExcludeIds,
    Exclusions,
    Index,
    SearchResult,
    check_k,
    check_exclusions,
    pad_short_rows,
    read_manifest,
    result_ids,
    write_manifest,
)

EMBEDDINGS_FILE = "embeddings.safetensors"


class BruteForceIndex(Index):
    """Exact dot-product top-K over a catalogue of candidate embeddings.

    Search runs on the device and in the dtype of the candidate embeddings
    (queries are moved there). Saved as safetensors plus a JSON manifest; ids
    keep their type (int or str) through a save/load round trip.

    Args:
        candidate_embeddings: [N, d] one row per candidate (tensor, numpy array or list of lists).
        ids: N unique candidate ids, all int or all str.
        metadata: optional JSON-serialisable facts stored with the index (e.g. run name).
    Raises:
        TowerrecError: no candidates, NaN/inf embeddings, or ids that are not N unique ints or strs.
        TypeError, ValueError: embeddings that are not numbers or not a [N, d] matrix.
    """

    kind = "brute_force"
    is_exact = True

    def __init__(
        self,
        candidate_embeddings: ArrayLike,
        ids: Sequence[int | str] | np.ndarray,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.metadata = dict(metadata or {})
        self.build(candidate_embeddings, ids)

    def build(self, candidate_embeddings: ArrayLike, ids: Sequence[int | str] | np.ndarray) -> BruteForceIndex:
        """Replaces the catalogue: [N, d] embeddings (N ≥ 1, finite) and their N ids. Returns self."""
        candidate_embeddings = as_float_matrix(candidate_embeddings, "candidate_embeddings")
        if candidate_embeddings.shape[0] == 0:
            raise TowerrecError(f"candidate embeddings must be [N, d] with N ≥ 1, got {list(candidate_embeddings.shape)}")
        if not bool(torch.isfinite(candidate_embeddings).all()):
            raise TowerrecError("candidate embeddings contain NaN or infinity", hint="the model diverged; retrain it")
        self._ids = normalize_ids(ids, candidate_embeddings.shape[0])
        self.embeddings = candidate_embeddings.detach()
        return self

    @property
    def num_candidates(self) -> int:
        """N, the number of candidates indexed."""
        return self.embeddings.shape[0]

    @property
    def ids(self) -> list[int | str]:
        """The N candidate ids, in catalogue order (Python ints or strs)."""
        return self._ids.tolist()

    def search(
        self,
        queries: ArrayLike,
        k: int,
        *,
        exclude_ids: ExcludeIds | None = None,
        exclude_positions: Exclusions | None = None,
        chunk_size: int = 4096,
    ) -> SearchResult:
        """Top ``k`` candidates for each query, best first, never returning an excluded one.

        A query with fewer than ``k`` candidates left after its exclusions gets the
        ones left (``counts`` says how many; the rest of its row is padding).
        Equal scores come out in ``torch.topk``'s order.

        Args:
            queries: [Q, d] query embeddings (tensor, numpy array or list of lists).
            k: results per query.
            exclude_ids: item ids to skip, one list (or 1-D array) per query, e.g. ``[[10, 20], []]``;
                ids of the right kind (int or str) that the index does not hold are ignored.
            exclude_positions: internal: catalogue positions to skip (a CSR of Q rows or Q lists),
                for towerrec's own callers that already hold positions. Not with ``exclude_ids``.
            chunk_size: queries scored per matmul (memory: chunk_size × N scores).
        Returns:
            :class:`SearchResult` with [Q, min(k, N)] scores and indices and Q lists of ids.
        Raises:
            TowerrecError: ``k`` < 1, queries of the wrong width or not finite, a position out of range.
            TypeError, ValueError: queries not a [Q, d] matrix of numbers; exclusions not one list per
                query or an id of the wrong kind (a str for integer ids, or the reverse).
        """
        queries = as_float_matrix(queries, "queries")
        if queries.shape[1] != self.embeddings.shape[1]:
            raise TowerrecError(
                f"queries must be [Q, {self.embeddings.shape[1]}], got {list(queries.shape)}",
                hint="the query and candidate towers must produce embeddings of the same size",
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
        if not bool(torch.isfinite(queries).all()):
            raise TowerrecError("query embeddings contain NaN or infinity", hint="the model diverged; retrain it")
        exclusions = self._exclusions(exclude_ids, exclude_positions, queries.shape[0])
        check_k(k)
        check_exclusions(self.num_candidates, exclusions)
        width = min(k, self.num_candidates)
        queries = queries.detach().to(self.embeddings.device, self.embeddings.dtype)
        candidates_t = self.embeddings.T  # a view: matmul reads it transposed, no per-call copy of the catalogue
        scores, indices, counts = [], [], []
        for start in range(0, queries.shape[0], chunk_size):
            stop = min(start + chunk_size, queries.shape[0])
            chunk = queries[start:stop] @ candidates_t
            left = torch.full((stop - start,), self.num_candidates, dtype=torch.int64)
            if exclusions is not None:
                exclusions.rows(slice(start, stop)).masked_fill_(chunk, -torch.inf)
                # scores are finite (checked above), so -inf marks exactly the excluded items, repeats once
                left = self.num_candidates - torch.isneginf(chunk).sum(dim=1).cpu()
            counts.append(left.clamp(max=k))
            best = chunk.topk(width, dim=1)
            scores.append(best.values)
            indices.append(best.indices)
        all_scores = torch.cat(scores) if scores else self.embeddings.new_empty(0, width)
        all_indices = torch.cat(indices) if indices else torch.empty(0, width, dtype=torch.int64)
        counts = torch.cat(counts) if counts else torch.empty(0, dtype=torch.int64)
        pad_short_rows(all_scores, all_indices, counts)
        ids = result_ids(self._ids, all_indices.cpu().numpy(), counts.numpy())
        return SearchResult(all_scores, all_indices, ids, counts)

    def save(self, folder: str | Path) -> None:
        """Writes ``embeddings.safetensors`` then ``index.json`` (ids, metadata, format_version)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": self.embeddings.cpu().contiguous()}
        fsio.atomic_write_file(folder / EMBEDDINGS_FILE, lambda path: save_file(tensors, str(path)))
        write_manifest(
            folder,
            {
                "kind": self.kind,
                "num_candidates": self.num_candidates,
                "dim": self.embeddings.shape[1],
                "ids": self.ids,
                "metadata": self.metadata,
            },
        )

    @classmethod
    def load(cls, folder: str | Path, *, device: torch.device | str = "cpu") -> BruteForceIndex:
        """Reads an index written by :meth:`save`, onto ``device``; never unpickles."""
        manifest = read_manifest(folder, cls.kind)
        path = Path(folder) / EMBEDDINGS_FILE
        if not path.is_file():
            raise TowerrecError(f"{path}: missing", hint="the index folder is incomplete: save it again")
        try:
            embeddings = load_file(str(path), device=str(device)).get("embeddings")
        except SafetensorError as error:
            raise TowerrecError(f"{path}: unreadable ({error})", hint="the index folder is corrupt: save it again") from None
        expected = [manifest.get("num_candidates"), manifest.get("dim")]
        if embeddings is None or list(embeddings.shape) != expected:
            raise TowerrecError(
                f"{path}: embeddings do not match {Path(folder) / 'index.json'} (expected shape {expected})",
                hint="the index folder mixes two saves: save it again",
            )
        return cls(embeddings, manifest.get("ids", []), metadata=manifest.get("metadata"))
