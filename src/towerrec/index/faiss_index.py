"""Approximate top-K retrieval with FAISS: HNSW graphs and inverted files (IVF, IVF-PQ).

Brute force scores all N candidates per query; an approximate index looks at
a small part of the catalogue (the graph neighbourhood of the query, or the
``nprobe`` closest of ``nlist`` clusters) and returns nearly the same top-K
far faster. Recall against brute force is measurable: :func:`recall_against`.

Seen-item exclusion works by over-fetching: each query asks FAISS for
``k + (its number of exclusions)`` results (rounded up to a power of two),
drops the excluded ones and keeps the best ``k``; a query still short (an IVF
probe that reached too few items) is searched again with twice as many results
and, for IVF, twice the ``nprobe``, and only when FAISS has seen the whole
catalogue and is still short is it scored exactly. So results never contain an
excluded item and always have ``min(k, items left)`` rows. When most queries
need such a second pass, the index warns once with the fix (raise ``nprobe`` or
``ef_search``).

The index is saved with FAISS's own binary format (``faiss.write_index``: raw
arrays, no pickling) beside the JSON manifest every index writes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from towerrec import fsio
from towerrec.arrays import ArrayLike, as_float_matrix
from towerrec.errors import TowerrecError, first_line
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

INDEX_FILE = "index.faiss"
Variant = Literal["hnsw", "ivf", "ivfpq"]
VARIANTS: tuple[str, ...] = ("hnsw", "ivf", "ivfpq")
DEFAULTS: dict[str, Any] = {
    "hnsw_m": 32,
    "ef_construction": 128,
    "ef_search": 256,
    "nlist": None,  # None: about 4·sqrt(N), at least 39 training points per list
    "nprobe": None,  # None: nlist / 16 (at least 8)
    "pq_m": None,  # None: d / 4 sub-quantizers (each a byte)
    "pq_bits": 8,
    "refine": 4,  # ivfpq: re-score refine·k PQ candidates exactly (0 = off)
    "seed": 1234,
}


MIN_QUERIES_TO_WARN = 16  # a slow-search warning needs this many queries behind it


class SlowSearchWarning(UserWarning):
    """Most queries of an approximate index needed a wider second search (the index's knobs are too tight)."""


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise TowerrecError("the FAISS index needs faiss-cpu", hint="pip install faiss-cpu") from error
    return faiss


class FaissIndex(Index):
    """Approximate inner-product top-K over a catalogue, with the :class:`Index` interface.

    Variants: ``"hnsw"`` (graph; ``hnsw_m`` links per node, ``ef_construction``
    build beam, ``ef_search`` query beam: larger = better recall, slower),
    ``"ivf"`` (k-means into ``nlist`` lists, search the ``nprobe`` nearest;
    exact vectors) and ``"ivfpq"`` (IVF with vectors compressed to ``pq_m``
    bytes, then the best ``refine``·k re-scored exactly). With ``ef_search ≥ N``
    or ``nprobe = nlist`` (and ``refine`` ≥ N/k for ivfpq) the answer is exact.

    Search runs on CPU in float32. Scores are inner products (cosine models
    already return unit vectors).

    Args:
        candidate_embeddings: [N, d] one row per candidate (tensor, numpy array or list of lists);
            None builds nothing yet (call :meth:`build`).
        ids: N unique candidate ids, all int or all str.
        variant: ``"hnsw"``, ``"ivf"`` or ``"ivfpq"``.
        metadata: JSON-serialisable facts stored with the index (e.g. run name).
        **params: the knobs above; see ``DEFAULTS``.
    Raises:
        TowerrecError: an unknown variant or option, a negative option, embeddings without ids.

    Source: FAISS (Johnson, Douze, Jégou, "Billion-scale similarity search with GPUs", 2017);
    HNSW (Malkov & Yashunin, 2018); IVF-PQ (Jégou, Douze, Schmid, "Product quantization for
    nearest neighbor search", 2011).
    """

    kind = "faiss"
    is_exact = False

    def __init__(
        self,
        candidate_embeddings: ArrayLike | None = None,
        ids: Sequence[int | str] | np.ndarray | None = None,
        *,
        variant: Variant = "hnsw",
        metadata: dict[str, Any] | None = None,
        **params: Any,
    ) -> None:
        if variant not in VARIANTS:
            raise TowerrecError(f"FAISS index variant {variant!r} is not one of {', '.join(VARIANTS)}")
        unknown = sorted(set(params) - set(DEFAULTS))
        if unknown:
            raise TowerrecError(f"unknown FAISS index option(s) {unknown}; valid: {sorted(DEFAULTS)}")
        self.variant = variant
        self.params = {**DEFAULTS, **{k: int(v) if isinstance(v, np.integer) else v for k, v in params.items()}}
        for key, value in self.params.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise TowerrecError(f"FAISS option {key} must be a non-negative integer, got {value!r}")
        self.metadata = dict(metadata or {})
        self._slow_stats = [0, 0]  # queries searched, queries that needed a wider search
        self._warned = False
        self._index = None
        self._vectors: np.ndarray | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self.dim = 0
        if candidate_embeddings is not None:
            if ids is None:
                raise TowerrecError("FaissIndex needs the ids of its candidate embeddings")
            self.build(candidate_embeddings, ids)

    # ------------------------------------------------------------------ build
    def build(self, candidate_embeddings: ArrayLike, ids: Sequence[int | str] | np.ndarray) -> FaissIndex:
        """(Re)builds the index over [N, d] embeddings (N ≥ 1, finite) and their N ids. Returns self."""
        faiss = _faiss()
        x = _as_float32(candidate_embeddings, "candidate_embeddings")
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise TowerrecError(f"candidate embeddings must be [N, d] with N ≥ 1, got {list(x.shape)}")
        if not np.isfinite(x).all():
            raise TowerrecError("candidate embeddings contain NaN or infinity", hint="the model diverged; retrain it")
        self._ids = normalize_ids(ids, x.shape[0])
        n, d = x.shape
        self.dim = d
        p = self.params
        if self.variant == "hnsw":
            index = faiss.IndexHNSWFlat(d, max(2, p["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(1, p["ef_construction"])
        else:
            nlist = p["nlist"] or default_nlist(n)
            if nlist > n:
                raise TowerrecError(f"nlist = {nlist} is larger than the catalogue ({n} candidates)", hint="lower --nlist")
            p["nlist"] = nlist
            p["nprobe"] = min(nlist, p["nprobe"] or max(8, nlist // 16))
            quantizer = faiss.IndexFlatIP(d)
            if self.variant == "ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                pq_m = p["pq_m"] or _default_pq_m(d)
                if d % pq_m:
                    raise TowerrecError(f"pq_m = {pq_m} must divide the embedding size {d}")
                p["pq_m"] = pq_m
                # each of the 2^bits PQ centroids needs ~39 training points: fewer bits on tiny catalogues
                p["pq_bits"] = max(1, min(p["pq_bits"] or 8, int(math.log2(max(2, n // 39)))))
                index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, p["pq_bits"], faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = p["seed"]
            index.own_fields = True
            quantizer.this.disown()  # owned by the IVF index from here on
            sample = _training_sample(x, max(nlist * 64, 4096 if self.variant == "ivfpq" else 0), p["seed"])
            index.train(sample)
            if self.variant == "ivfpq" and p["refine"]:
                index = faiss.IndexRefineFlat(index)
        index.add(x)
        self._index = index
        self._vectors = None
        return self

    @property
    def num_candidates(self) -> int:
        """N, the number of candidates indexed (0 before :meth:`build`)."""
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def ids(self) -> list[int | str]:
        """The N candidate ids, in catalogue order (Python ints or strs)."""
        return self._ids.tolist()

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries: ArrayLike,
        k: int,
        *,
        exclude_ids: ExcludeIds | None = None,
        exclude_positions: Exclusions | None = None,
        batch_size: int = 4096,
    ) -> SearchResult:
        """Approximate top ``k`` of each query, best first, never returning an excluded one.

        Same contract as :meth:`BruteForceIndex.search`: a query with fewer than ``k``
        candidates left gets those left. Warns (:class:`SlowSearchWarning`, once per
        index) when most queries had to be searched again with a wider probe.

        Args:
            queries: [Q, d] query embeddings (tensor, numpy array or list of lists).
            k: results per query.
            exclude_ids: item ids to skip, one list (or 1-D array) per query, e.g. ``[[10, 20], []]``;
                ids of the right kind (int or str) that the index does not hold are ignored.
            exclude_positions: internal: catalogue positions to skip (a CSR of Q rows or Q lists),
                for towerrec's own callers that already hold positions. Not with ``exclude_ids``.
            batch_size: queries handed to FAISS per call.
        Returns:
            :class:`SearchResult` with [Q, min(k, N)] float32 scores and int64 indices and Q lists of ids.
        Raises:
            TowerrecError: an empty index, ``k`` < 1, queries of the wrong width or not finite.
            TypeError, ValueError: as :meth:`BruteForceIndex.search`.
        """
        if self._index is None:
            raise TowerrecError("the FAISS index is empty", hint="build it first")
        q = _as_float32(queries, "queries")
        if q.shape[1] != self.dim:
            raise TowerrecError(
                f"queries must be [Q, {self.dim}], got {list(q.shape)}",
                hint="the query and candidate towers must produce embeddings of the same size",
            )
        if not np.isfinite(q).all():
            raise TowerrecError("query embeddings contain NaN or infinity", hint="the model diverged; retrain it")
        exclusions = self._exclusions(exclude_ids, exclude_positions, q.shape[0])
        check_k(k)
        n = self.num_candidates
        num_queries = q.shape[0]
        excluded = _ExclusionKeys(exclusions, num_queries, n)
        need = np.minimum(n - excluded.distinct, k)
        width = min(k, n)
        scores = np.full((num_queries, width), -np.inf, dtype=np.float32)
        indices = np.full((num_queries, width), -1, dtype=np.int64)
        counts = np.zeros(num_queries, dtype=np.int64) if exclusions is None else np.diff(exclusions.indptr.numpy())
        # Over-fetch: each row asks for k + its exclusions, rounded up to a power of two so rows group.
        fetch = np.minimum(n, 2 ** np.ceil(np.log2(np.maximum(width + counts, 1))).astype(np.int64))
        widen = np.zeros(num_queries, dtype=np.int64)  # times a row was searched again, wider
        pending = np.flatnonzero(need > 0)
        exact = 0
        while pending.size:
            short: list[np.ndarray] = []
            groups = np.unique(np.stack([fetch[pending], widen[pending]]), axis=1)
            for size, level in groups.T.tolist():
                rows = pending[(fetch[pending] == size) & (widen[pending] == level)]
                for start in range(0, rows.size, batch_size):
                    chunk = rows[start : start + batch_size]
                    found_scores, found = self._faiss_search(q[chunk], int(size), int(level))
                    done = self._take(chunk, found_scores, found, need, excluded, scores, indices)
                    short.append(chunk[~done])
            pending = np.concatenate(short) if short else np.empty(0, dtype=np.int64)
            exhausted = pending[(fetch[pending] >= n) & (self._nprobe(widen[pending]) >= self._full_probe())]
            if exhausted.size:  # FAISS saw every candidate it could reach and is still short
                self._exact(q, exhausted, width, need, exclusions, scores, indices)
                exact += exhausted.size
            pending = np.setdiff1d(pending, exhausted, assume_unique=True)
            fetch[pending] = np.minimum(n, fetch[pending] * 2)
            widen[pending] += 1
        self._note_slow_queries(num_queries, int((widen > 0).sum()), exact, widen, k)
        ids = result_ids(self._ids, indices, need)
        return SearchResult(torch.from_numpy(scores), torch.from_numpy(indices), ids, torch.from_numpy(need))

    def _nprobe(self, level):
        """IVF lists probed on the ``level``-th widening of a short query (nprobe doubled each time)."""
        if self.variant == "hnsw":
            return np.zeros_like(level) if isinstance(level, np.ndarray) else 0
        return np.minimum(self.params["nlist"], self.params["nprobe"] * 2 ** level)

    def _full_probe(self) -> int:
        return 0 if self.variant == "hnsw" else self.params["nlist"]

    def _note_slow_queries(self, num_queries: int, widened: int, exact: int, widen: np.ndarray, k: int) -> None:
        """Warns once per index when most queries needed a wider second search (or exact scoring)."""
        stats = self._slow_stats
        stats[0] += num_queries
        stats[1] += widened
        if self._warned or stats[0] < MIN_QUERIES_TO_WARN or stats[1] * 2 <= stats[0]:
            return
        self._warned = True
        share = f"{stats[1]} of {stats[0]} queries"
        if self.variant == "hnsw":
            fix = f"raise ef_search (now {self.params['ef_search']}) above k + the excluded items"
        else:
            typical = int(np.median(widen[widen > 0])) if widened else 1
            suggested = int(min(self.params["nlist"], self.params["nprobe"] * 2 ** typical))
            fix = (f"raise nprobe from {self.params['nprobe']} to about {suggested} (of nlist = {self.params['nlist']}), "
                   f"e.g. --nprobe {suggested}")
        tail = f"; {exact} scored exactly" if exact else ""
        warnings.warn(
            f"{self.variant} index: {share} reached fewer than k = {k} results after excluding seen items and "
            f"were searched again, wider{tail} (slower than one pass): {fix}",
            SlowSearchWarning,
            stacklevel=3,
        )

    def _search_params(self, fetch: int, level: int = 0):
        faiss = _faiss()
        p = self.params
        if self.variant == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(p["ef_search"], fetch))
        ivf = faiss.SearchParametersIVF(nprobe=int(self._nprobe(level)))
        if isinstance(self._index, faiss.IndexRefine):
            return faiss.IndexRefineSearchParameters(k_factor=float(max(1, p["refine"])), base_index_params=ivf)
        return ivf

    def _faiss_search(self, q: np.ndarray, fetch: int, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(np.ascontiguousarray(q), fetch, params=self._search_params(fetch, level))

    @staticmethod
    def _take(
        rows: np.ndarray,
        found_scores: np.ndarray,
        found: np.ndarray,
        need: np.ndarray,
        excluded: _ExclusionKeys,
        scores: np.ndarray,
        indices: np.ndarray,
    ) -> np.ndarray:
        """Writes the first ``need[row]`` valid results of each row; returns which rows had that many."""
        valid = (found >= 0) & ~excluded.contains(rows, found)
        rank = np.cumsum(valid, axis=1) - 1  # position of each valid result among its row's valid ones
        done = rank[:, -1] + 1 >= need[rows]
        if done.any():
            keep = valid[done] & (rank[done] < need[rows[done]][:, None])
            r, c = np.nonzero(keep)
            out_rows = rows[done][r]
            scores[rows[done]] = -np.inf  # rows keep their padding past need[row]
            indices[rows[done]] = -1
            scores[out_rows, rank[done][r, c]] = found_scores[done][r, c]
            indices[out_rows, rank[done][r, c]] = found[done][r, c]
        return done

    def _exact(self, q, rows, width, need, exclusions, scores, indices) -> None:
        vectors = torch.from_numpy(self.vectors())
        chunk = torch.from_numpy(q[rows]) @ vectors.T
        if exclusions is not None:
            from towerrec.metrics.topk import gather_rows

            gather_rows(exclusions, torch.from_numpy(rows)).masked_fill_(chunk, -torch.inf)
        best = chunk.topk(width, dim=1)
        best_scores, best_indices = best.values, best.indices
        pad_short_rows(best_scores, best_indices, torch.from_numpy(need[rows]))
        scores[rows], indices[rows] = best_scores.numpy(), best_indices.numpy()

    def vectors(self) -> np.ndarray:
        """[N, d] float32 stored vectors (reconstructed; approximate for ivfpq without refine)."""
        if self._vectors is None:
            faiss = _faiss()
            index = self._index
            if isinstance(index, faiss.IndexRefine):
                index = faiss.downcast_index(index.refine_index)
            elif isinstance(index, faiss.IndexIVF):
                index.make_direct_map()
            self._vectors = index.reconstruct_n(0, index.ntotal)
        return self._vectors

    # ------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> None:
        """Writes ``index.faiss`` (FAISS binary format) then ``index.json``."""
        if self._index is None:
            raise TowerrecError("the FAISS index is empty", hint="build it before saving")
        faiss = _faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fsio.atomic_write_file(folder / INDEX_FILE, lambda path: faiss.write_index(self._index, str(path)))
        write_manifest(
            folder,
            {
                "kind": self.kind,
                "variant": self.variant,
                "params": self.params,
                "num_candidates": self.num_candidates,
                "dim": self.dim,
                "ids": self.ids,
                "metadata": self.metadata,
                "faiss_version": faiss.__version__,
            },
        )

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = False) -> FaissIndex:
        """Reads an index written by :meth:`save`; ``mmap`` maps the file instead of reading it."""
        faiss = _faiss()
        manifest = read_manifest(folder, cls.kind)
        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise TowerrecError(f"{path}: missing", hint="the index folder is incomplete: save it again")
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
        except RuntimeError as error:
            raise TowerrecError(f"{path}: unreadable ({first_line(error)})", hint="the index folder is corrupt: save it again") from None
        params = manifest.get("params") or {}
        self = cls(variant=manifest.get("variant", "hnsw"), metadata=manifest.get("metadata"),
                   **{k: v for k, v in params.items() if k in DEFAULTS})
        expected = (manifest.get("num_candidates"), manifest.get("dim"))
        if (index.ntotal, index.d) != expected:
            raise TowerrecError(
                f"{path}: holds {index.ntotal} vectors of size {index.d}, {Path(folder) / 'index.json'} says {expected}",
                hint="the index folder mixes two saves: save it again",
            )
        self._index, self.dim = index, index.d
        self._ids = normalize_ids(manifest.get("ids", []), index.ntotal)
        return self


def default_nlist(num_candidates: int) -> int:
    """About 4·sqrt(N) lists, with at least 39 training points each (FAISS's minimum)."""
    return max(1, min(int(4 * math.sqrt(num_candidates)), num_candidates // 39))


def _default_pq_m(dim: int) -> int:
    for m in (dim // 4, dim // 2, dim):
        if m >= 1 and dim % m == 0:
            return m
    return dim


def _training_sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    if x.shape[0] <= size:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size, replace=False))
    return x[rows]


def _as_float32(x: ArrayLike, name: str) -> np.ndarray:
    """[rows, cols] contiguous float32 numpy copy (or view) of a tensor, array or list of lists."""
    return np.ascontiguousarray(as_float_matrix(x, name).to("cpu", torch.float32).numpy())


class _ExclusionKeys:
    """Every (query, excluded position) pair as one sorted int64 key ``query * N + position``.

    Sorted once per search; membership of a [rows, fetch] block of FAISS results is then
    one ``searchsorted`` (no per-call set building), and distinct exclusions per query
    fall out of the same sort.
    """

    def __init__(self, exclusions, num_queries: int, num_candidates: int) -> None:
        self.n = num_candidates
        if exclusions is None or exclusions.indices.numel() == 0:
            self.keys = np.empty(0, dtype=np.int64)
            self.distinct = np.zeros(num_queries, dtype=np.int64)
            return
        check_exclusions(num_candidates, exclusions)
        indptr = exclusions.indptr.numpy()
        owner = np.repeat(np.arange(num_queries, dtype=np.int64), np.diff(indptr))
        keys = np.sort(owner * num_candidates + exclusions.indices.numpy())
        first = np.ones(keys.size, dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        self.keys = keys[first]
        self.distinct = np.bincount(self.keys // num_candidates, minlength=num_queries)

    def contains(self, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
        """[len(rows), fetch] bool: is ``found[i, j]`` (≥ 0) excluded for query ``rows[i]``?"""
        if not self.keys.size:
            return np.zeros(found.shape, dtype=bool)
        wanted = rows[:, None] * self.n + np.maximum(found, 0)
        at = np.minimum(np.searchsorted(self.keys, wanted), self.keys.size - 1)
        return (self.keys[at] == wanted) & (found >= 0)


def recall_against(
    approximate: Index, exact: Index, queries: ArrayLike, k: int, *, exclude_ids: ExcludeIds | None = None
) -> float:
    """Recall@k of an approximate index against an exact one: mean |approximate top-k ∩ exact top-k| / k.

    1.0 means the same answers. Both indexes must hold the same catalogue (same ids in the
    same order); a query with fewer than k items left counts the items it can have.

    Args:
        approximate: the index to measure (e.g. a :class:`FaissIndex`).
        exact: the reference (a :class:`~towerrec.index.BruteForceIndex` over the same catalogue).
        queries: [Q, d] query embeddings (tensor, numpy array or list of lists).
        k: results compared per query.
        exclude_ids: item ids skipped by both searches, one list per query.
    Returns:
        The recall as a Python float in [0, 1].
    Raises:
        TowerrecError: the two indexes hold different catalogues; anything either search raises.
    """
    if not np.array_equal(approximate._ids, exact._ids):
        raise TowerrecError("recall_against needs two indexes over the same catalogue (same ids, same order)")
    a = approximate.search(queries, k, exclude_ids=exclude_ids).indices.cpu().numpy()
    e = exact.search(queries, k, exclude_ids=exclude_ids).indices.cpu().numpy()
    rows = np.arange(a.shape[0])[:, None] * (1 << 40)
    hits = (np.isin(rows + a, rows + e) & (a >= 0)).sum()
    return float(hits / max(1, int((e >= 0).sum())))
