"""Full-catalogue top-K metrics: where does each query's true item rank among ALL items?

Every metric here derives from where each query's target lands among all N
candidates, computed exactly (never against sampled negatives) in chunks of
queries so that a [Q, N] score matrix never exists. Tied scores never count
for the target: metrics are exact expectations over a random order of the
tied items (or, optionally, count ties against it); see :class:`TargetRanks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from towerrec.arrays import ArrayLike, as_index_vector, as_float_matrix
from towerrec.errors import TowerrecError, shorten
from towerrec.ids import IdLookup, normalize_ids

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


Ties = Literal["random", "pessimistic"]
TIES: tuple[str, ...] = ("random", "pessimistic")
SCORE_BUDGET = 1 << 24  # scores held at once by rank_targets: 16M floats = 64 MB per chunk

Scorer = Callable[[int, int], Tensor]
"""``scores(start, stop)`` -> [stop - start, N] scores of queries start..stop-1 against every item."""

ExclusionsFor = Callable[[int, int], "CSR | None"]
"""``exclusions(start, stop)`` -> per-query CSR of the items removed from those queries' rankings."""


def gather_rows(csr: CSR, rows: Tensor) -> CSR:
    """A CSR whose row j is ``csr`` row ``rows[j]`` (empty when ``rows[j]`` is -1 or out of range)."""
    indptr = csr.indptr
    num_rows = indptr.shape[0] - 1
    valid = (rows >= 0) & (rows < num_rows)
    safe = torch.where(valid, rows, torch.zeros_like(rows))
    starts = indptr[safe]
    lengths = torch.where(valid, indptr[safe + 1] - starts, torch.zeros_like(rows))
    new_indptr = torch.zeros(rows.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=new_indptr[1:])
    total = int(new_indptr[-1])
    # position k of the output belongs to row r = searchsorted; its source is starts[r] + offset
    owner = torch.repeat_interleave(torch.arange(rows.shape[0]), lengths)
    offsets = torch.arange(total) - new_indptr[owner]
    indices = csr.indices[starts[owner] + offsets]
    return CSR(new_indptr, indices)


@dataclass(frozen=True, eq=False)
class TargetRanks:
    """Where each query's target lands among all candidates, with ties kept apart.

    The target's rank is not one number when other candidates score exactly as
    high as it does: it is uniform on ``higher + 1 .. higher + tied + 1`` under a
    random order of the tied items. Metrics are exact expectations over that
    order (``ties="random"``), or count every tie against the target
    (``ties="pessimistic"``). Ties never count for the target: a model that
    scores every item equally is worth 1/N top-1 accuracy, not 1.0.

    Args:
        higher: [Q] int64, candidates scoring strictly above the target.
        tied: [Q] int64, other candidates scoring exactly the target's score.
    """

    higher: Tensor
    tied: Tensor

    def __post_init__(self) -> None:
        if self.higher.shape != self.tied.shape or self.higher.dim() != 1:
            raise ValueError(f"higher and tied must be [Q] tensors, got {list(self.higher.shape)} and {list(self.tied.shape)}")

    @classmethod
    def exact(cls, ranks: Tensor) -> TargetRanks:
        """Untied 1-based ranks (e.g. computed by hand)."""
        ranks = torch.as_tensor(ranks, dtype=torch.int64)
        return cls(ranks - 1, torch.zeros_like(ranks))

    def __len__(self) -> int:
        return int(self.higher.shape[0])

    def with_ties(self, ties: Ties) -> TargetRanks:
        """These ranks under a tie rule: ``"random"`` keeps them, ``"pessimistic"`` ranks the target last of its ties."""
        if ties not in TIES:
            raise ValueError(f"ties must be one of {list(TIES)}, got {ties!r}")
        if ties == "pessimistic":
            return TargetRanks(self.higher + self.tied, torch.zeros_like(self.tied))
        return self

    def expected(self) -> Tensor:
        """[Q] float64 expected 1-based rank: 1 + higher + tied / 2."""
        return 1.0 + self.higher.double() + self.tied.double() / 2.0

    def hit_probability(self, k: int) -> Tensor:
        """[Q] float64 P(rank <= k): min(max(k - higher, 0), tied + 1) / (tied + 1); 1 when k >= N."""
        slots = self.tied.double() + 1.0
        return (k - self.higher.double()).clamp(min=0.0).minimum(slots) / slots

    def ndcg(self, k: int) -> Tensor:
        """[Q] float64 E[1 / log2(rank + 1) if rank <= k else 0] (one relevant item: IDCG = 1)."""
        cumulative = _cumulative(lambda r: 1.0 / torch.log2(r + 1.0), self)
        first, last = self.higher, self.higher + self.tied + 1
        return (cumulative[last.clamp(max=k)] - cumulative[first.clamp(max=k)]) / (self.tied.double() + 1.0)

    def reciprocal_rank(self) -> Tensor:
        """[Q] float64 E[1 / rank]: (H(higher + tied + 1) - H(higher)) / (tied + 1), H = harmonic numbers."""
        cumulative = _cumulative(lambda r: 1.0 / r, self)
        return (cumulative[self.higher + self.tied + 1] - cumulative[self.higher]) / (self.tied.double() + 1.0)


def _cumulative(gain: Callable[[Tensor], Tensor], ranks: TargetRanks) -> Tensor:
    """[R + 1] float64 table, entry n = sum of gain(r) for r = 1..n, R = the largest possible rank."""
    largest = int((ranks.higher + ranks.tied).max()) + 1 if len(ranks) else 1
    table = torch.zeros(largest + 1, dtype=torch.float64, device=ranks.higher.device)
    table[1:] = torch.cumsum(gain(torch.arange(1, largest + 1, dtype=torch.float64, device=table.device)), 0)
    return table


@torch.no_grad()
def rank_targets(
    scores: Scorer,
    targets: Tensor,
    num_items: int,
    *,
    protocols: Mapping[str, ExclusionsFor | None],
    chunk_size: int = 4096,
    score_budget: int = SCORE_BUDGET,
) -> dict[str, TargetRanks]:
    """Ranks every query's target under several exclusion protocols from ONE scoring pass (internal engine).

    Works on catalogue positions (columns of the score matrix): towerrec's own
    evaluation calls it with positions it holds. From Python, use
    :func:`evaluate_retrieval` or :func:`target_ranks`, which take item ids.

    Queries are scored in chunks of ``min(chunk_size, score_budget // N)`` rows, so
    memory is bounded by one [chunk, N] score matrix (plus a comparison mask) no
    matter how many queries there are; each protocol's exclusions are built for
    the chunk only. The target's score is read from the same chunk as the others,
    so it never ties with itself by rounding; the target is never excluded.

    Args:
        scores: ``scores(start, stop)`` -> [stop - start, N] float scores.
        targets: [Q] catalogue index of each query's true item.
        num_items: N, the catalogue size.
        protocols: name -> ``exclusions(start, stop)`` (CSR of items removed per query) or None.
        chunk_size: most queries per chunk.
        score_budget: most scores per chunk (rows * N), at least one row.
    Returns:
        name -> :class:`TargetRanks` of all Q queries.
    Raises:
        TowerrecError: a target outside [0, N), an excluded index outside it, or a NaN/inf score.
    """
    if chunk_size < 1 or score_budget < 1:
        raise ValueError(f"chunk_size and score_budget must be >= 1, got {chunk_size} and {score_budget}")
    num_queries = int(targets.shape[0])
    if targets.dim() != 1:
        raise ValueError(f"targets must have shape [Q], got {list(targets.shape)}")
    if num_queries and (int(targets.min()) < 0 or int(targets.max()) >= num_items):
        raise TowerrecError(f"target indices must lie in [0, {num_items}), the catalogue size")
    rows_per_chunk = max(1, min(chunk_size, score_budget // max(num_items, 1)))
    targets = targets.to(torch.int64)
    # protocols without exclusions read the scores first; the last excluding one may modify them in place
    order = sorted(protocols, key=lambda name: protocols[name] is not None)
    excluding = [name for name in order if protocols[name] is not None]
    higher = {name: torch.empty(num_queries, dtype=torch.int64) for name in order}
    tied = {name: torch.empty(num_queries, dtype=torch.int64) for name in order}
    for start in range(0, num_queries, rows_per_chunk):
        stop = min(start + rows_per_chunk, num_queries)
        chunk = scores(start, stop)
        if chunk.shape != (stop - start, num_items):
            raise ValueError(f"scores({start}, {stop}) must be [{stop - start}, {num_items}], got {list(chunk.shape)}")
        if not bool(torch.isfinite(chunk).all()):
            raise TowerrecError(
                "scores contain NaN or infinity, so ranks would be meaningless",
                hint="the model diverged: lower the learning rate or check the input features",
            )
        rows = torch.arange(stop - start, device=chunk.device)
        chunk_targets = targets[start:stop].to(chunk.device)
        target_score = chunk[rows, chunk_targets].unsqueeze(1)
        chunk[rows, chunk_targets] = -torch.inf  # the target is not its own competitor
        for name in order:
            exclusions_for = protocols[name]
            view = chunk
            if exclusions_for is not None:
                view = chunk if name == excluding[-1] else chunk.clone()
                exclusions = exclusions_for(start, stop)
                if exclusions is not None:
                    exclusions.masked_fill_(view, -torch.inf)
            # int32 sums: several times faster than int64
            higher[name][start:stop] = (view > target_score).sum(dim=1, dtype=torch.int32).cpu()
            tied[name][start:stop] = (view == target_score).sum(dim=1, dtype=torch.int32).cpu()
    return {name: TargetRanks(higher[name], tied[name]) for name in protocols}


@torch.no_grad()
def target_ranks(
    query: ArrayLike,
    candidates: ArrayLike,
    targets: ArrayLike | Sequence[Any],
    *,
    candidate_ids: Sequence[Any] | np.ndarray | Tensor | None = None,
    exclude_ids: Sequence[Any] | np.ndarray | Tensor | None = None,
    chunk_size: int = 4096,
    score_budget: int = SCORE_BUDGET,
) -> TargetRanks:
    """Where each query's target ranks among all candidates, by dot-product score.

    Items are named by id: ``candidate_ids`` (all int or all str, unique) when given,
    else each candidate's row number 0..N-1 is its id. Arrays may be tensors, numpy
    arrays or lists (of lists).

    Args:
        query: [Q, d] query embeddings.
        candidates: [N, d] embeddings of the whole catalogue.
        targets: [Q] id of each query's true item.
        candidate_ids: N ids of the candidates, in row order (default: 0..N-1).
        exclude_ids: per-query item ids removed from the ranking (e.g. items seen in train),
            one list per query; ids not among the candidates are ignored; the target itself
            is never excluded, even if listed.
        chunk_size, score_budget: bound each chunk to chunk_size rows and score_budget scores.
    Returns:
        :class:`TargetRanks` (strictly higher and tied counts per query), on the CPU.
    Raises:
        TowerrecError: a target that is not a candidate id; NaN or infinite embeddings; bad candidate ids.
        TypeError, ValueError: inputs that are not numbers, of the wrong shape, or ids of the wrong kind.
    """
    query, candidates, positions, exclude = _retrieval_inputs(query, candidates, targets, candidate_ids, exclude_ids)
    candidates_t = candidates.to(query.dtype).T.contiguous()

    def scores(start: int, stop: int) -> Tensor:
        return query[start:stop] @ candidates_t

    exclusions = None if exclude is None else (lambda start, stop: exclude.rows(slice(start, stop)))
    return rank_targets(scores, positions, candidates.shape[0], protocols={"ranks": exclusions},
                        chunk_size=chunk_size, score_budget=score_budget)["ranks"]


def _retrieval_inputs(query, candidates, targets, candidate_ids, exclude_ids) -> tuple[Tensor, Tensor, Tensor, CSR | None]:
    """Converts and checks the public inputs: [Q, d] and [N, d] float tensors, [Q] target positions, exclusions."""
    query = as_float_matrix(query, "query")
    candidates = as_float_matrix(candidates, "candidates")
    if query.shape[1] != candidates.shape[1]:
        raise ValueError(f"need query [Q, d] and candidates [N, d], got {list(query.shape)} and {list(candidates.shape)}")
    num_queries, num_items = query.shape[0], candidates.shape[0]
    ids = np.arange(num_items, dtype=np.int64) if candidate_ids is None else normalize_ids(candidate_ids, num_items)
    lookup = IdLookup(ids)
    if candidate_ids is None:
        positions = as_index_vector(targets, "targets")
    else:
        positions = torch.from_numpy(lookup.positions(targets, "targets"))
    if positions.shape != (num_queries,):
        raise ValueError(f"targets must have shape [{num_queries}] (one per query), got {list(positions.shape)}")
    outside = (positions < 0) | (positions >= num_items)
    if bool(outside.any()):
        row = int(torch.nonzero(outside)[0])
        given = targets[row].item() if isinstance(targets, (Tensor, np.ndarray)) else targets[row]
        known = "candidate_ids" if candidate_ids is not None else f"catalogue positions [0, {num_items})"
        raise TowerrecError(f"targets[{row}] = {shorten(given)} is not one of the {known}",
                            hint="targets name each query's true item by its id among the candidates")
    exclude = None
    if exclude_ids is not None:
        indptr, excluded = lookup.exclusion_rows(exclude_ids, num_queries)
        exclude = CSR(torch.from_numpy(indptr), torch.from_numpy(excluded))
    if not (bool(torch.isfinite(query).all()) and bool(torch.isfinite(candidates).all())):
        raise TowerrecError(
            "embeddings contain NaN or infinity, so ranks would be meaningless",
            hint="the model diverged: lower the learning rate or check the input features",
        )
    return query, candidates, positions, exclude


def topk_metrics(ranks: TargetRanks | ArrayLike, ks: Sequence[int] = DEFAULT_KS, *, ties: Ties = "random") -> dict[str, float]:
    """Top-K accuracy, NDCG@K and MRR from the targets' ranks, averaged over queries.

    ``top_{k}_accuracy`` is TFRS's factorized top-K categorical accuracy: the
    fraction of queries whose target ranks <= K. With one target per query it is
    also recall@K and hit rate@K; NDCG@K is then 1/log2(rank + 1) if rank <= K.
    With tied scores every metric is its exact expectation over a random order
    of the tied items (``ties="random"``) or counts ties against the target
    (``"pessimistic"``). K at or above the catalogue size gives top-K accuracy 1.

    Args:
        ranks: :class:`TargetRanks` (:func:`target_ranks`), or [Q] untied 1-based ranks
            (tensor, numpy array or list).
        ks: cut-offs K, each >= 1.
        ties: ``"random"`` (default) or ``"pessimistic"``.
    Returns:
        ``{"top_{k}_accuracy": ..., "ndcg@{k}": ..., "mrr": ...}`` as Python floats.
    Raises:
        TowerrecError: no queries.
        ValueError: ranks below 1 or not [Q]; a K that is not a positive integer.

    Source: TensorFlow Recommenders' ``FactorizedTopK`` (top-K categorical accuracy);
    NDCG after Järvelin & Kekäläinen (2002).
    """
    ranks = _check_ranks(ranks, ks).with_ties(ties)
    metrics = {f"top_{k}_accuracy": float(ranks.hit_probability(k).mean()) for k in ks}
    metrics.update({f"ndcg@{k}": float(ranks.ndcg(k).mean()) for k in ks})
    metrics["mrr"] = float(ranks.reciprocal_rank().mean())
    return metrics


def user_recall_at_k(
    ranks: TargetRanks | ArrayLike, user_ids: ArrayLike | Sequence[Any], ks: Sequence[int] = DEFAULT_KS, *, ties: Ties = "random"
) -> dict[str, float]:
    """Per-user recall@K: the share of each user's test items ranked <= K, averaged over users.

    Each test item is ranked on its own, so the other test items still compete
    (unless excluded); with the same exclusions this equals the usual recall of
    one top-K list per user, |top-K ∩ test| / |test|, in expectation over tie orders.
    Every user counts once.

    Args:
        ranks: :class:`TargetRanks` of each test interaction's item, or [Q] untied ranks.
        user_ids: [Q] user of each test interaction (int or str ids; tensor, numpy array or list).
        ks: cut-offs K, each >= 1.
        ties: as in :func:`topk_metrics`.
    Returns:
        ``{"recall@{k}": ...}`` as Python floats.
    Raises:
        ValueError: ``user_ids`` not [Q]; as :func:`topk_metrics`.
    """
    ranks = _check_ranks(ranks, ks).with_ties(ties)
    user = _groups(user_ids, len(ranks)).to(ranks.higher.device)
    items_per_user = torch.bincount(user).double()
    return {
        f"recall@{k}": float((torch.bincount(user, weights=ranks.hit_probability(k)) / items_per_user).mean())
        for k in ks
    }


def _groups(user_ids: ArrayLike | Sequence[Any], num_queries: int) -> Tensor:
    """[Q] int64 group number 0..U-1 of each query's user."""
    if isinstance(user_ids, Tensor):
        values = user_ids
    else:
        values = np.asarray(user_ids.tolist() if isinstance(user_ids, np.ndarray) else list(user_ids))
    if values.shape != (num_queries,):
        raise ValueError(f"user_ids must have shape [{num_queries}], got {list(values.shape)}")
    if isinstance(values, Tensor):
        return torch.unique(values, return_inverse=True)[1]
    return torch.from_numpy(np.unique(values, return_inverse=True)[1].astype(np.int64).reshape(-1))


def _check_ranks(ranks: TargetRanks | ArrayLike, ks: Sequence[int]) -> TargetRanks:
    if not isinstance(ranks, TargetRanks):
        ranks = as_index_vector(ranks, "ranks")
        if ranks.numel() and int(ranks.min()) < 1:
            raise ValueError("ranks are 1-based")
        ranks = TargetRanks.exact(ranks)
    if len(ranks) == 0:
        raise TowerrecError("no queries to evaluate", hint="the evaluation split is empty")
    if any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"every K must be a positive integer, got {list(ks)}")
    return ranks


def summarize(ranks: TargetRanks | ArrayLike, ks: Sequence[int] = DEFAULT_KS, *,
              user_ids: ArrayLike | Sequence[Any] | None = None, ties: Ties = "random") -> dict[str, float]:
    """:func:`topk_metrics`, plus :func:`user_recall_at_k` when ``user_ids`` ([Q] user of each query) are given.

    Raises:
        As :func:`topk_metrics` and :func:`user_recall_at_k`.
    """
    metrics = topk_metrics(ranks, ks, ties=ties)
    if user_ids is not None:
        metrics.update(user_recall_at_k(ranks, user_ids, ks, ties=ties))
    return metrics


def evaluate_retrieval(
    query: ArrayLike,
    candidates: ArrayLike,
    targets: ArrayLike | Sequence[Any],
    *,
    candidate_ids: Sequence[Any] | np.ndarray | Tensor | None = None,
    exclude_ids: Sequence[Any] | np.ndarray | Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 4096,
    user_ids: ArrayLike | Sequence[Any] | None = None,
    ties: Ties = "random",
) -> dict[str, float]:
    """Ranks each query's target among all candidates, then summarises (TFRS's ``FactorizedTopK``, exact).

    One call per evaluation: :func:`target_ranks` then :func:`summarize`; arguments as in those.
    Example: ``evaluate_retrieval(q, items, [20, 10], candidate_ids=[10, 20, 30], exclude_ids=[[30], []])``.

    Returns:
        ``top_{k}_accuracy``, ``ndcg@{k}``, ``mrr`` (and ``recall@{k}`` with ``user_ids``) as Python floats.
    Raises:
        As :func:`target_ranks` and :func:`topk_metrics`.
    """
    ranks = target_ranks(query, candidates, targets, candidate_ids=candidate_ids, exclude_ids=exclude_ids,
                         chunk_size=chunk_size)
    return summarize(ranks, ks, user_ids=user_ids, ties=ties)
