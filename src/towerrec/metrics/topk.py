"""Full-catalogue top-K metrics: where does each query's true item rank among ALL items?

Every metric here derives from one number per query, the 1-based rank of its
target among all N candidates, computed exactly (never against sampled
negatives) in chunks of queries so that a [Q, N] score matrix never exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from towerrec.errors import TowerrecError

DEFAULT_KS = (1, 5, 10, 50, 100)


@dataclass(frozen=True, eq=False)
class CSR:
    """Per-row lists of item indices (e.g. the items each user saw in train), compressed.

    Row r holds ``indices[indptr[r]:indptr[r + 1]]``. One flat array instead of
    Q Python lists keeps exclusion vectorised: a chunk of rows becomes one
    flat scatter into its score matrix.

    Args:
        indptr: [Q + 1] int64 row offsets, starting at 0, non-decreasing.
        indices: [nnz] int64 item indices.
    """

    indptr: Tensor
    indices: Tensor

    def __post_init__(self) -> None:
        indptr = torch.as_tensor(self.indptr, dtype=torch.int64)
        indices = torch.as_tensor(self.indices, dtype=torch.int64)
        if indptr.dim() != 1 or indices.dim() != 1 or indptr.numel() == 0:
            raise ValueError("CSR needs a 1-D indptr of length Q + 1 and 1-D indices")
        if indptr[0] != 0 or indptr[-1] != indices.numel() or bool((indptr[1:] < indptr[:-1]).any()):
            raise ValueError("CSR indptr must start at 0, never decrease and end at len(indices)")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> CSR:
        """Builds a CSR from one list (or 1-D array) of item indices per row."""
        rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in lists]
        indptr = torch.zeros(len(rows) + 1, dtype=torch.int64)
        torch.cumsum(torch.tensor([len(row) for row in rows], dtype=torch.int64), 0, out=indptr[1:])
        flat = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        return cls(indptr, torch.from_numpy(flat))

    @classmethod
    def from_pairs(cls, rows: np.ndarray | Tensor, cols: np.ndarray | Tensor, num_rows: int) -> CSR:
        """Builds a CSR from (row, item) pairs in any order, vectorised.

        Args:
            rows: [nnz] row of each pair, in [0, num_rows).
            cols: [nnz] item index of each pair.
            num_rows: Q, so that trailing empty rows exist.
        """
        rows_t = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        cols_t = torch.as_tensor(cols, dtype=torch.int64).reshape(-1)
        if rows_t.numel() != cols_t.numel():
            raise ValueError(f"rows and cols differ in length: {rows_t.numel()} vs {cols_t.numel()}")
        if rows_t.numel() and (int(rows_t.min()) < 0 or int(rows_t.max()) >= num_rows):
            raise ValueError(f"row indices must lie in [0, {num_rows})")
        order = torch.argsort(rows_t, stable=True)
        indptr = torch.zeros(num_rows + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(rows_t, minlength=num_rows), 0, out=indptr[1:])
        return cls(indptr, cols_t[order])

    def rows(self, selection: slice) -> CSR:
        """The CSR of a contiguous range of rows (step 1), offsets rebased to 0."""
        start, stop, step = selection.indices(self.num_rows)
        if step != 1:
            raise ValueError("CSR.rows takes a contiguous slice (step 1)")
        stop = max(stop, start)
        part = self.indptr[start : stop + 1]
        return CSR(part - part[0], self.indices[int(part[0]) : int(part[-1])])

    def masked_fill_(self, scores: Tensor, value: float) -> Tensor:
        """Sets ``scores[r, i] = value`` for every item i of every row r, in place.

        Args:
            scores: [Q, N] contiguous matrix, one row per CSR row.
            value: what to write, e.g. ``-inf`` to exclude items from a ranking.
        Returns:
            ``scores``.
        """
        num_rows, num_cols = scores.shape
        if num_rows != self.num_rows:
            raise ValueError(f"exclusions have {self.num_rows} rows but the scores have {num_rows}")
        if self.indices.numel() == 0:
            return scores
        if int(self.indices.min()) < 0 or int(self.indices.max()) >= num_cols:
            raise TowerrecError(
                f"excluded item indices must lie in [0, {num_cols}), "
                f"got {int(self.indices.min())}..{int(self.indices.max())}",
                hint="exclusions are catalogue positions, not raw item ids",
            )
        owner = torch.repeat_interleave(torch.arange(num_rows), torch.diff(self.indptr))
        flat = (owner * num_cols + self.indices).to(scores.device)
        scores.view(-1).index_fill_(0, flat, value)
        return scores


@torch.no_grad()
def target_ranks(
    query: Tensor,
    candidates: Tensor,
    targets: Tensor,
    *,
    exclude: CSR | None = None,
    chunk_size: int = 4096,
    ties: Literal["optimistic", "pessimistic"] = "optimistic",
) -> Tensor:
    """1-based rank of each query's target among all candidates, by dot-product score.

    rank = 1 + the number of candidates scoring strictly higher (``ties="optimistic"``),
    which is TFRS's score-based FactorizedTopK: ``tf.math.in_top_k`` counts ties in
    the target's favour. (Its id-based path breaks ties by ``top_k`` order instead.)
    ``"pessimistic"`` counts ties against the target, so a collapsed model that
    scores everything equally ranks last instead of first. The target's score is
    read from the same matmul as the others, so it never ties with itself by rounding.

    Args:
        query: [Q, d] query embeddings.
        candidates: [N, d] embeddings of the whole catalogue.
        targets: [Q] catalogue index of each query's true item.
        exclude: per-query item indices removed from the ranking (e.g. items seen in
            train); the target itself is never excluded, even if listed.
        chunk_size: queries scored per matmul, bounding memory to chunk_size × N scores.
        ties: how candidates with exactly the target's score count.
    Returns:
        [Q] int64 ranks in [1, N], on the query's device.
    """
    num_queries, _ = _check_inputs(query, candidates, targets, exclude, chunk_size)
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    candidates_t = candidates.to(query.dtype).T.contiguous()
    targets = targets.to(query.device, torch.int64)
    ranks = torch.empty(num_queries, dtype=torch.int64, device=query.device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = query[start:stop] @ candidates_t
        rows = torch.arange(stop - start, device=query.device)
        chunk_targets = targets[start:stop]
        target_score = scores[rows, chunk_targets].unsqueeze(1)
        if exclude is not None:
            exclude.rows(slice(start, stop)).masked_fill_(scores, -torch.inf)
        scores[rows, chunk_targets] = -torch.inf  # the target is not its own competitor
        beaten = scores >= target_score if ties == "pessimistic" else scores > target_score
        ranks[start:stop] = beaten.sum(dim=1, dtype=torch.int32) + 1  # int32: several times faster than int64
    return ranks


def _check_inputs(
    query: Tensor, candidates: Tensor, targets: Tensor, exclude: CSR | None, chunk_size: int
) -> tuple[int, int]:
    """Validates shapes, target range and finiteness; returns (Q, N)."""
    if query.dim() != 2 or candidates.dim() != 2 or query.shape[1] != candidates.shape[1]:
        raise ValueError(f"need query [Q, d] and candidates [N, d], got {list(query.shape)} and {list(candidates.shape)}")
    num_queries, num_items = query.shape[0], candidates.shape[0]
    if targets.shape != (num_queries,):
        raise ValueError(f"targets must have shape [{num_queries}], got {list(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    if num_queries and (int(targets.min()) < 0 or int(targets.max()) >= num_items):
        raise TowerrecError(f"target indices must lie in [0, {num_items}), the catalogue size")
    if exclude is not None and exclude.num_rows != num_queries:
        raise ValueError(f"exclude has {exclude.num_rows} rows but there are {num_queries} queries")
    if not (bool(torch.isfinite(query).all()) and bool(torch.isfinite(candidates).all())):
        raise TowerrecError(
            "embeddings contain NaN or infinity, so ranks would be meaningless",
            hint="the model diverged: lower the learning rate or check the input features",
        )
    return num_queries, num_items


def topk_metrics(ranks: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Top-K accuracy, NDCG@K and MRR from the targets' ranks, averaged over queries.

    ``top_{k}_accuracy`` is TFRS's factorized top-K categorical accuracy: the
    fraction of queries whose target ranks ≤ K. With one target per query it is
    also recall@K and hit rate@K; NDCG@K is then 1/log2(rank + 1) if rank ≤ K.

    Args:
        ranks: [Q] 1-based ranks (:func:`target_ranks`).
        ks: cut-offs K, each ≥ 1.
    Returns:
        ``{"top_{k}_accuracy": ..., "ndcg@{k}": ..., "mrr": ...}`` as Python floats.
    """
    ranks_f = _check_ranks(ranks, ks).double()
    metrics = {f"top_{k}_accuracy": float((ranks_f <= k).double().mean()) for k in ks}
    gain = 1.0 / torch.log2(ranks_f + 1.0)
    metrics.update({f"ndcg@{k}": float(torch.where(ranks_f <= k, gain, 0.0).mean()) for k in ks})
    metrics["mrr"] = float((1.0 / ranks_f).mean())
    return metrics


def user_recall_at_k(ranks: Tensor, user_ids: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Per-user recall@K: the share of each user's test items ranked ≤ K, averaged over users.

    Each test item is ranked on its own, so the other test items still compete
    (unless excluded); with the same exclusions this equals the usual recall of
    one top-K list per user, |top-K ∩ test| / |test|, up to ties. Every user counts once.

    Args:
        ranks: [Q] 1-based rank of each test interaction's item.
        user_ids: [Q] user of each test interaction (any integer ids).
        ks: cut-offs K, each ≥ 1.
    Returns:
        ``{"recall@{k}": ...}`` as Python floats.
    """
    ranks = _check_ranks(ranks, ks)
    if user_ids.shape != ranks.shape:
        raise ValueError(f"user_ids must have shape {list(ranks.shape)}, got {list(user_ids.shape)}")
    _, user = torch.unique(user_ids.to(ranks.device), return_inverse=True)
    items_per_user = torch.bincount(user).double()
    return {
        f"recall@{k}": float((torch.bincount(user, weights=(ranks <= k).double()) / items_per_user).mean())
        for k in ks
    }


def _check_ranks(ranks: Tensor, ks: Sequence[int]) -> Tensor:
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise TowerrecError("no queries to evaluate", hint="the evaluation split is empty")
    if any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"every K must be a positive integer, got {list(ks)}")
    return ranks


def evaluate_retrieval(
    query: Tensor,
    candidates: Tensor,
    targets: Tensor,
    *,
    exclude: CSR | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 4096,
    user_ids: Tensor | None = None,
    ties: Literal["optimistic", "pessimistic"] = "optimistic",
) -> dict[str, float]:
    """Ranks each query's target among all candidates, then summarises.

    One call per evaluation: :func:`target_ranks` then :func:`topk_metrics`, plus
    :func:`user_recall_at_k` when ``user_ids`` are given. Arguments as in those.

    Returns:
        ``top_{k}_accuracy``, ``ndcg@{k}``, ``mrr`` (and ``recall@{k}``) as Python floats.
    """
    ranks = target_ranks(query, candidates, targets, exclude=exclude, chunk_size=chunk_size, ties=ties)
    metrics = topk_metrics(ranks, ks)
    if user_ids is not None:
        metrics.update(user_recall_at_k(ranks, user_ids, ks))
    return metrics
