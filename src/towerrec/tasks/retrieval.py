"""The retrieval task: in-batch softmax over query-candidate pairs, with its tricks.

Row i of a batch pairs a query with the candidate the user chose; every other
candidate in the batch (and any extra sampled ones) serves as a negative. Each
trick that corrects this cheap softmax is a small standalone function below,
tested on its own; :class:`Retrieval` chains them in TFRS's order:
temperature -> logQ correction -> accidental-hit removal -> hard negatives.
When the batch's candidate ids are known it computes the same softmax over the
batch's unique candidates instead (:mod:`towerrec.tasks.unique_softmax`). Large
softmaxes are computed tile by tile, never materialising the [B, N] logits
(:mod:`towerrec.tasks.blocked_softmax`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from towerrec import parallel
from towerrec.tasks.blocked_softmax import blocked_softmax_loss
from towerrec.tasks.unique_softmax import unique_in_batch_softmax_loss

_MIN_PROBABILITY = 1e-6


def in_batch_logits(query: Tensor, candidates: Tensor, temperature: float = 1.0) -> Tensor:
    """Scores every query against every candidate: dot products over a temperature.

    A temperature below 1 sharpens the softmax (hard negatives weigh more),
    above 1 flattens it. With the batch's own positives as ``candidates`` the
    diagonal holds the positive logits.

    Args:
        query: [B, d] query embeddings.
        candidates: [N, d] candidate embeddings.
        temperature: positive divisor of the dot products.
    Returns:
        [B, N] logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = query @ candidates.T
    return logits if temperature == 1.0 else logits / temperature


def logq_correction(logits: Tensor, candidate_sampling_probability: Tensor) -> Tensor:
    """Subtracts each candidate's log sampling probability from its logits (logQ).

    In-batch negatives are drawn by popularity, so a popular item is pushed down
    far more often than a uniform softmax would; subtracting ``log q`` undoes that
    bias. The sign is TFRS's after its 0.5.0 fix; q is clipped to [1e-6, 1].

    Args:
        logits: [B, N] logits.
        candidate_sampling_probability: [N] probability q of each column's candidate
            (see :func:`candidate_sampling_probability`).
    Returns:
        [B, N] corrected logits.
    """
    return logits - sampling_log_q(candidate_sampling_probability).to(logits.dtype)


def sampling_log_q(candidate_sampling_probability: Tensor) -> Tensor:
    """``log(clamp(q, 1e-6, 1))``: the log q that :class:`Retrieval` takes as ``candidate_log_q``.

    Compute it once per epoch for the whole catalogue and gather per batch.
    The clipping keeps a never-seen item (q = 0) from getting an infinite boost.
    It carries no gradient.

    Args:
        candidate_sampling_probability: [N] probabilities.
    Returns:
        [N] log probabilities, each ≤ 0.
    """
    return torch.log(candidate_sampling_probability.detach().clamp(_MIN_PROBABILITY, 1.0))


def remove_accidental_hits(
    logits: Tensor, labels: Tensor, query_candidate_ids: Tensor, candidate_ids: Tensor
) -> Tensor:
    """Masks negatives that are really the row's own positive item.

    When the same item is the positive of two rows of a batch, each row sees the
    other copy as a negative and is told to push its own positive away. Those
    columns get the dtype's most negative value (finite, so no NaN), except the
    positive column itself, which is never masked.

    Args:
        logits: [B, N] logits.
        labels: [B] column of each row's positive.
        query_candidate_ids: [B] item id of each row's positive.
        candidate_ids: [N] item id of each column.
    Returns:
        [B, N] logits with accidental hits masked (a new tensor).
    """
    duplicate = query_candidate_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)
    rows = torch.arange(logits.shape[0], device=logits.device)
    duplicate[rows, labels] = False
    return logits.masked_fill(duplicate, torch.finfo(logits.dtype).min)


def hard_negative_mining(logits: Tensor, labels: Tensor, num_hard_negatives: int) -> tuple[Tensor, Tensor]:
    """Keeps, per row, the positive and only the k highest-scoring negatives.

    Easy negatives contribute almost nothing to the softmax but still cost
    compute and dilute the gradient; TFRS's ``num_hard_negatives`` keeps the
    top k. When fewer than k negatives exist, all of them are kept.

    Args:
        logits: [B, N] logits.
        labels: [B] column of each row's positive.
        num_hard_negatives: k ≥ 1.
    Returns:
        ([B, min(k, N - 1) + 1] logits with the positive in column 0,
        [B] labels, all zeros).
    """
    if num_hard_negatives < 1:
        raise ValueError(f"num_hard_negatives must be ≥ 1, got {num_hard_negatives}")
    rows = torch.arange(logits.shape[0], device=logits.device)
    positive = logits[rows, labels].unsqueeze(1)
    negatives = logits.clone()
    negatives[rows, labels] = -math.inf
    k = min(num_hard_negatives, logits.shape[1] - 1)
    hardest = negatives.topk(k, dim=1).values
    return torch.cat([positive, hardest], dim=1), torch.zeros_like(labels)


def sample_negatives(
    num: int,
    num_items: int,
    *,
    probabilities: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draws extra negative item indices, with replacement, uniformly or from a distribution.

    In-batch negatives are all popular items; mixing in uniform (or
    popularity^0.75) samples shows the model the long tail. Give the same
    distribution to :func:`candidate_sampling_probability` so logQ stays consistent.

    Args:
        num: how many indices to draw.
        num_items: catalogue size N.
        probabilities: [N] non-negative weights (need not sum to 1), or None for uniform.
        generator: random generator, for reproducible draws.
        device: device of the result when ``probabilities`` is None (else its device).
    Returns:
        [num] int64 item indices in [0, N).
    """
    if num < 0 or num_items < 1:
        raise ValueError(f"need num ≥ 0 and num_items ≥ 1, got num={num}, num_items={num_items}")
    if probabilities is None:
        return torch.randint(num_items, (num,), generator=generator, device=device)
    if probabilities.shape != (num_items,):
        raise ValueError(f"probabilities must have shape [{num_items}], got {list(probabilities.shape)}")
    return torch.multinomial(probabilities.float(), num, replacement=True, generator=generator)


def candidate_sampling_probability(
    item_counts: Tensor,
    batch_size: int,
    *,
    extra_probabilities: Tensor | None = None,
    num_extra: int = 0,
) -> Tensor:
    """Probability q that one softmax column holds each item, for :func:`logq_correction`.

    An in-batch column is one draw from the training interactions, so
    q = count / total. Not 1 - (1 - q)^B: duplicates stay separate columns, so the
    unbiased correction is the expected number of copies, B·q, and log B cancels.
    With M extra negatives the B + M columns mix: q = (B·q_batch + M·q_extra) / (B + M).

    Args:
        item_counts: [N] training interactions per item.
        batch_size: B, in-batch columns per softmax.
        extra_probabilities: [N] distribution of the extra negatives (normalised here),
            or None for uniform when ``num_extra`` > 0.
        num_extra: M, extra negatives per softmax.
    Returns:
        [N] probabilities (same dtype as a float ``item_counts``), summing to 1.
    """
    if batch_size < 1 or num_extra < 0:
        raise ValueError(f"need batch_size ≥ 1 and num_extra ≥ 0, got {batch_size}, {num_extra}")
    counts = item_counts.to(torch.promote_types(item_counts.dtype, torch.float32))
    total = counts.sum()
    if total <= 0:
        raise ValueError("item_counts must have a positive total")
    q = counts / total
    if num_extra == 0:
        return q
    if extra_probabilities is None:
        extra = torch.full_like(q, 1.0 / q.shape[0])
    else:
        extra = extra_probabilities.to(q) / extra_probabilities.sum()
    return (batch_size * q + num_extra * extra) / (batch_size + num_extra)


class Retrieval(nn.Module):
    """In-batch softmax cross-entropy loss for two-tower retrieval (TFRS's ``tfrs.tasks.Retrieval``).

    Query i's positive is candidate i (the diagonal); the other candidates of the
    batch, plus optional extra ones, are its negatives. The tricks switched on
    here run in TFRS's order: temperature, logQ (Yi et al. 2019, "Sampling-bias-
    corrected neural modeling for large corpus item recommendations"), accidental
    hits, hard negatives.

    **Fast path.** When ``candidate_ids`` are given and there are no hard negatives
    and no extra candidates, :meth:`forward` deduplicates the batch by id and
    computes the softmax over its U unique candidates (U columns, each carrying
    ``log(count)``; :func:`~towerrec.tasks.unique_softmax.unique_in_batch_softmax_loss`).
    The loss and the gradients reaching the towers' parameters are exactly those
    of the B x B form, provided duplicate ids have identical embeddings (true of a
    candidate tower without dropout): each unique id uses its first row's
    embedding. Models that deduplicate before running the candidate tower call
    :meth:`unique_candidates_loss` directly.

    **Sampling probabilities.** ``candidate_sampling_probability`` takes q in
    [0, 1] (TFRS's convention); ``candidate_log_q`` takes log q ≤ 0 (e.g. from
    :func:`sampling_log_q`, computed once per epoch). Either form is clamped to
    q in [1e-6, 1], so both give the same loss.

    The loss is the MEAN over the batch, unlike TFRS's SUM: then its scale and the
    effective learning rate do not depend on the batch size. SUM has B times the
    gradient: with SGD, "mean" needs the learning rate times B to match. Adagrad
    divides by the root of the summed squared gradients, so it is nearly
    scale-free, except for its initial accumulator (Keras: 0.1) and epsilon,
    which dominate the B-times-smaller "mean" gradients and shrink the early steps. To
    match TFRS with "mean", divide the initial accumulator by B² and epsilon by B,
    or use ``reduction="sum"``, which reproduces TFRS exactly.

    **Data parallelism.** When ``torch.distributed`` is initialised with more than one
    process, each process holds a slice of the global batch. With ``global_negatives``
    (the default) the candidate embeddings (with their ids and log q) are all-gathered
    WITH gradients, deduplicated by id across the processes, and each process's queries
    are scored against the whole global batch's candidates: the negatives are those a
    single process would see with the global batch (TFRS's per-replica negatives, by
    contrast, change the loss). Either way the loss returned is this process's share
    (:func:`towerrec.parallel.loss_share`): the mean over processes is the loss of the
    global batch, so DistributedDataParallel's averaged gradients are exactly the
    single-process gradients of that batch (tested with 2 processes). Extra candidates
    are not gathered: each process appends its own (pass the same ones everywhere to
    match one process). Sharing needs the candidates' ids when accidental hits are
    removed (``candidate_ids``), so that one item on two processes is one column.

    Args:
        temperature: logits are divided by it (> 0).
        logq_correction: subtract log q from the logits when a sampling
            probability (or its log) is given.
        remove_accidental_hits: mask duplicates of each row's positive when
            ``candidate_ids`` are given.
        num_hard_negatives: keep only the k hardest negatives per row (None: all).
        reduction: ``"mean"`` (default) or ``"sum"`` (TFRS).
        global_negatives: under data parallelism, score each query against the candidates of
            every process (the global batch); False: only against its own process's (per-worker
            negatives). No effect in one process.
    Raises:
        ValueError: temperature ≤ 0, num_hard_negatives < 1, or an unknown reduction.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
        num_hard_negatives: int | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        global_negatives: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if num_hard_negatives is not None and num_hard_negatives < 1:
            raise ValueError(f"num_hard_negatives must be ≥ 1 or None, got {num_hard_negatives}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits
        self.num_hard_negatives = num_hard_negatives
        self.reduction = reduction
        self.global_negatives = bool(global_negatives)

    def get_config(self) -> dict[str, Any]:
        """The task's settings as JSON values: ``Retrieval(**task.get_config())`` is an equal task."""
        return {"temperature": self.temperature, "logq_correction": self.logq_correction,
                "remove_accidental_hits": self.remove_accidental_hits,
                "num_hard_negatives": self.num_hard_negatives, "reduction": self.reduction,
                "global_negatives": self.global_negatives}

    def forward(
        self,
        query_embeddings: Tensor,
        candidate_embeddings: Tensor,
        *,
        candidate_ids: Tensor | None = None,
        candidate_sampling_probability: Tensor | None = None,
        candidate_log_q: Tensor | None = None,
        extra_candidate_embeddings: Tensor | None = None,
        extra_candidate_ids: Tensor | None = None,
        extra_candidate_sampling_probability: Tensor | None = None,
        extra_candidate_log_q: Tensor | None = None,
        sample_weight: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss of one batch; takes the unique-candidate fast path when it can (see the class).

        Args:
            query_embeddings: [B, d].
            candidate_embeddings: [B, d], row i the positive of query i.
            candidate_ids: [B] item ids: switch on the fast path and accidental-hit removal.
            candidate_sampling_probability: [B] probability q in [0, 1] of each row's candidate.
            candidate_log_q: [B] log q ≤ 0 instead (:func:`sampling_log_q`); not both.
            extra_candidate_embeddings: [M, d] extra negatives shared by all rows.
            extra_candidate_ids: [M] their ids (required with ``candidate_ids``).
            extra_candidate_sampling_probability: [M] their q (required when the batch
                has one), from the same mixed distribution (:func:`candidate_sampling_probability`).
            extra_candidate_log_q: [M] their log q instead; not both.
            sample_weight: [B] per-row weights (Keras semantics: mean = sum(w·loss) / B).
        Returns:
            scalar loss.
        Raises:
            ValueError: mismatched shapes; both forms of q for the same candidates;
                probabilities outside [0, 1] or not finite; log q > 0 or NaN; extra
                candidates without the ids / q their batch counterpart has.
        """
        batch = _batch_size(query_embeddings, candidate_embeddings, "candidate_embeddings")
        log_q = _resolve_log_q(
            candidate_sampling_probability, candidate_log_q, batch, "candidate_sampling_probability", "candidate_log_q"
        )
        _check_vector(candidate_ids, batch, "candidate_ids")
        _check_vector(sample_weight, batch, "sample_weight")
        has_extra = extra_candidate_embeddings is not None
        num_extra = 0
        if has_extra:
            num_extra = extra_candidate_embeddings.shape[0]
            _batch_size(query_embeddings, extra_candidate_embeddings, "extra_candidate_embeddings", same_rows=False)
        else:
            for name, value in (
                ("extra_candidate_ids", extra_candidate_ids),
                ("extra_candidate_sampling_probability", extra_candidate_sampling_probability),
                ("extra_candidate_log_q", extra_candidate_log_q),
            ):
                if value is not None:
                    raise ValueError(f"{name} was given without extra_candidate_embeddings")
        extra_log_q = _resolve_log_q(
            extra_candidate_sampling_probability, extra_candidate_log_q, num_extra,
            "extra_candidate_sampling_probability", "extra_candidate_log_q",
        )
        _check_vector(extra_candidate_ids, num_extra, "extra_candidate_ids")
        if not self.logq_correction:
            log_q = extra_log_q = None
        if parallel.world_size() > 1:
            extra = None
            if has_extra:
                extra = (extra_candidate_embeddings, extra_candidate_ids, extra_log_q)
            return self._data_parallel_loss(query_embeddings, candidate_embeddings, candidate_ids, log_q,
                                            sample_weight, extra=extra)

        if candidate_ids is not None and self.num_hard_negatives is None and not has_extra:
            unique, labels, counts = torch.unique(candidate_ids, return_inverse=True, return_counts=True)
            first = _first_rows(labels, unique.shape[0])
            return self._unique_loss(
                query_embeddings,
                candidate_embeddings[first],
                labels,
                counts,
                None if log_q is None else log_q[first],
                sample_weight,
            )
        candidates, column_ids = candidate_embeddings, candidate_ids
        if has_extra:
            candidates = torch.cat([candidate_embeddings, extra_candidate_embeddings])
            if candidate_ids is not None:
                column_ids = torch.cat([candidate_ids, _required(extra_candidate_ids, "extra_candidate_ids")])
            if log_q is not None:
                extra = _required(extra_log_q, "extra_candidate_sampling_probability or extra_candidate_log_q")
                log_q = torch.cat([log_q, extra])
        return self._general_loss(query_embeddings, candidates, candidate_ids, column_ids, log_q, sample_weight)

    def unique_candidates_loss(
        self,
        query_embeddings: Tensor,
        unique_candidate_embeddings: Tensor,
        labels: Tensor,
        counts: Tensor,
        *,
        candidate_log_q: Tensor | None = None,
        candidate_sampling_probability: Tensor | None = None,
        sample_weight: Tensor | None = None,
        candidate_ids: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss of a batch whose candidates were deduplicated before the candidate tower ran.

        Equal to :meth:`forward` on the expanded batch (``unique_candidate_embeddings[labels]``
        with ids ``labels``), with this task's temperature, logQ, accidental-hit and
        reduction settings, so a model can run its candidate tower once per unique
        item: ``unique, labels, counts = torch.unique(ids, return_inverse=True,
        return_counts=True)``. With ``num_hard_negatives`` set, it expands the batch
        to B rows and takes the general path (still exact, B x B cost).

        Args:
            query_embeddings: [B, d].
            unique_candidate_embeddings: [U, d], the batch's distinct candidates.
            labels: [B] int64 index into ``unique_candidate_embeddings`` of each row's positive.
            counts: [U] how many rows have each unique candidate as positive
                (``torch.bincount(labels, minlength=U)``).
            candidate_log_q: [U] log q ≤ 0 of each unique candidate, or None.
            candidate_sampling_probability: [U] its q in [0, 1] instead; not both.
            sample_weight: [B] per-row weights (Keras semantics: mean = sum(w·loss) / B).
            candidate_ids: [U] ids of the unique candidates (distinct); under data parallelism
                they merge one item's columns across processes (required there with
                accidental-hit removal); unused in one process.
        Returns:
            scalar loss (under data parallelism this process's share; see the class).
        Raises:
            ValueError: mismatched shapes, labels outside [0, U), counts that do not
                match the labels, or bad q / log q (as in :meth:`forward`).
        """
        batch = _batch_size(query_embeddings, unique_candidate_embeddings, "unique_candidate_embeddings", same_rows=False)
        num_unique = unique_candidate_embeddings.shape[0]
        _check_vector(labels, batch, "labels")
        _check_vector(counts, num_unique, "counts")
        _check_vector(sample_weight, batch, "sample_weight")
        if labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be an integer tensor of indices, got {labels.dtype}")
        if not _counts_match(labels, counts, num_unique):  # one O(B) check; the reason only on failure
            if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_unique):
                raise ValueError(
                    f"labels must index the {num_unique} unique candidates, got values outside [0, {num_unique})"
                )
            raise ValueError("counts must be how often each unique candidate occurs in labels "
                             "(torch.bincount(labels, minlength=U))")
        log_q = _resolve_log_q(
            candidate_sampling_probability, candidate_log_q, num_unique, "candidate_sampling_probability",
            "candidate_log_q",
        )
        if not self.logq_correction:
            log_q = None
        _check_vector(candidate_ids, num_unique, "candidate_ids")
        if parallel.world_size() > 1:
            return self._data_parallel_unique_loss(query_embeddings, unique_candidate_embeddings, labels, counts,
                                                   candidate_ids, log_q, sample_weight)
        if self.num_hard_negatives is not None:
            return self._general_loss(
                query_embeddings, unique_candidate_embeddings[labels], labels, labels,
                None if log_q is None else log_q[labels], sample_weight,
            )
        return self._unique_loss(query_embeddings, unique_candidate_embeddings, labels, counts, log_q, sample_weight)

    # -- data parallelism (torch.distributed, world size > 1) -----------------------------
    def _data_parallel_loss(
        self, query: Tensor, candidates: Tensor, ids: Tensor | None, log_q: Tensor | None,
        sample_weight: Tensor | None, *, extra: tuple[Tensor, Tensor | None, Tensor | None] | None,
    ) -> Tensor:
        """:meth:`forward`'s loss share with global (or per-worker) negatives; [B, d] rows are this process's."""
        if ids is not None and self.num_hard_negatives is None and extra is None:
            unique, labels, counts = torch.unique(ids, return_inverse=True, return_counts=True)
            first = _first_rows(labels, unique.shape[0])
            return self._data_parallel_unique_loss(query, candidates[first], labels, counts, unique,
                                                   None if log_q is None else log_q[first], sample_weight)
        return self._data_parallel_general_loss(query, candidates, ids, log_q, sample_weight, extra=extra)

    def _data_parallel_unique_loss(
        self, query: Tensor, unique: Tensor, labels: Tensor, counts: Tensor, ids: Tensor | None,
        log_q: Tensor | None, sample_weight: Tensor | None,
    ) -> Tensor:
        """The unique-candidate softmax over the GLOBAL batch's unique candidates; this process's share."""
        if ids is None and self.global_negatives and self.remove_accidental_hits:
            raise ValueError("global negatives with accidental-hit removal need the candidates' ids: pass "
                             "candidate_ids (or Retrieval(global_negatives=False))")
        if self.num_hard_negatives is not None:  # the B x N form, as in one process
            row_ids = labels if ids is None else ids[labels]  # labels name items only within one process
            return self._data_parallel_general_loss(
                query, unique[labels], row_ids, None if log_q is None else log_q[labels], sample_weight, extra=None)
        sizes = parallel.gather_sizes(unique.shape[0], query.shape[0], device=query.device)
        unique_rows, rows = sizes[:, 0].tolist(), sizes[:, 1]
        if not self.global_negatives:
            local = self._unique_loss(query, unique, labels, counts, log_q, sample_weight) if query.shape[0] else None
            return self._share(local, query.shape[0], rows, unique)
        me = parallel.rank()
        table = parallel.all_gather_rows(
            _pack(counts, ids if ids is not None else counts, log_q, unique.shape[0]), unique_rows, grad=False)
        gathered = parallel.all_gather_rows(unique, unique_rows, grad=True)
        offset = sum(unique_rows[:me])
        all_counts, all_log_q = table[:, 0], table[:, 2].view(torch.float64)
        if ids is None:  # no hit removal: equal items on two processes may stay two columns (same softmax)
            global_unique, global_labels, global_counts, first = gathered, labels + offset, all_counts, None
        else:
            merged, inverse = torch.unique(table[:, 1], return_inverse=True)
            global_counts = torch.zeros_like(merged).index_add_(0, inverse, all_counts)
            first = _first_rows(inverse, merged.shape[0])
            global_unique, global_labels = gathered[first], inverse[offset + labels]
        global_log_q = None
        if log_q is not None:
            global_log_q = (all_log_q if first is None else all_log_q[first]).to(log_q.dtype)
        local = None
        if query.shape[0]:
            local = self._unique_loss(query, global_unique, global_labels, global_counts, global_log_q, sample_weight)
        return self._share(local, query.shape[0], rows, gathered)

    def _data_parallel_general_loss(
        self, query: Tensor, candidates: Tensor, ids: Tensor | None, log_q: Tensor | None,
        sample_weight: Tensor | None, *, extra: tuple[Tensor, Tensor | None, Tensor | None] | None,
    ) -> Tensor:
        """The B x N form with the global batch's candidates (this process's first, so labels stay 0..B-1);
        ``ids``: [B] the rows' item ids (accidental hits), or None."""
        batch = query.shape[0]
        rows = parallel.gather_sizes(batch, device=query.device)[:, 0]
        column_ids = ids
        if self.global_negatives:
            counts = rows.tolist()
            gathered = parallel.all_gather_rows(candidates, counts, grad=True)
            me, total = parallel.rank(), sum(counts)
            start = sum(counts[:me])
            order = torch.cat([torch.arange(start, start + batch), torch.arange(0, start),
                               torch.arange(start + batch, total)]).to(query.device)
            anchor = gathered
            candidates = gathered[order]
            if ids is not None or log_q is not None:
                filler = torch.zeros(batch, dtype=torch.int64, device=query.device)
                table = parallel.all_gather_rows(
                    _pack(ids if ids is not None else filler, filler, log_q, batch), counts, grad=False)[order]
                column_ids = table[:, 0] if ids is not None else None
                if log_q is not None:
                    log_q = table[:, 2].view(torch.float64).to(log_q.dtype)
        else:
            anchor = candidates
        if extra is not None:
            extra_embeddings, extra_ids, extra_log_q = extra
            candidates = torch.cat([candidates, extra_embeddings])
            if column_ids is not None:
                column_ids = torch.cat([column_ids, _required(extra_ids, "extra_candidate_ids")])
            if log_q is not None:
                log_q = torch.cat([log_q, _required(extra_log_q,
                                                    "extra_candidate_sampling_probability or extra_candidate_log_q")])
        local = self._general_loss(query, candidates, ids, column_ids, log_q, sample_weight) if batch else None
        return self._share(local, batch, rows, anchor)

    def _share(self, local: Tensor | None, batch: int, rows: Tensor, anchor: Tensor) -> Tensor:
        """This process's loss share from its reduced loss (None for an empty slice: a zero on ``anchor``'s graph,
        so the gather's backward, a collective, still runs here)."""
        if local is None:
            return anchor.sum() * 0.0
        local_sum = local * batch if self.reduction == "mean" else local
        return parallel.loss_share(local_sum, rows, self.reduction)

    def _unique_loss(
        self, query: Tensor, unique: Tensor, labels: Tensor, counts: Tensor, log_q: Tensor | None,
        sample_weight: Tensor | None,
    ) -> Tensor:
        return unique_in_batch_softmax_loss(
            query, unique, labels, counts,
            log_q=log_q,
            remove_accidental_hits=self.remove_accidental_hits,
            temperature=self.temperature,
            reduction=self.reduction,
            sample_weight=sample_weight,
        )

    def _general_loss(
        self, query: Tensor, candidates: Tensor, row_ids: Tensor | None, column_ids: Tensor | None,
        log_q: Tensor | None, sample_weight: Tensor | None,
    ) -> Tensor:
        """The B x N form: ``candidates`` [N, d] start with the batch's B positives; computed tile by tile
        (:func:`~towerrec.tasks.blocked_softmax.blocked_softmax_loss`: logQ as a column bias, accidental
        hits masked by id, hard negatives as a running top-k)."""
        labels = torch.arange(query.shape[0], device=query.device)
        masking = self.remove_accidental_hits and row_ids is not None
        return blocked_softmax_loss(
            query, candidates, labels,
            column_bias=None if log_q is None else -log_q,
            row_ids=row_ids if masking else None,
            column_ids=column_ids if masking else None,
            temperature=self.temperature,
            num_hard_negatives=self.num_hard_negatives,
            sample_weight=sample_weight,
            reduction=self.reduction,
        )


_MIN_LOG_PROBABILITY = math.log(_MIN_PROBABILITY)


def _resolve_log_q(
    probability: Tensor | None, log_q: Tensor | None, size: int, probability_name: str, log_q_name: str
) -> Tensor | None:
    """One detached [size] log q from either form, validated and clamped to q in [1e-6, 1]."""
    if probability is not None and log_q is not None:
        raise ValueError(f"give {probability_name} or {log_q_name}, not both")
    if probability is not None:
        _check_vector(probability, size, probability_name)
        q = probability.detach()
        if not bool(((q >= 0) & (q <= 1)).all()):  # NaN fails both comparisons
            raise ValueError(
                f"{probability_name} must hold finite probabilities in [0, 1], "
                f"got values from {q.min().item():g} to {q.max().item():g}"
            )
        return sampling_log_q(q)
    if log_q is not None:
        _check_vector(log_q, size, log_q_name)
        values = log_q.detach()
        if bool((values > 0).any()):
            raise ValueError(
                f"{log_q_name} has values > 0 (up to {values.max().item():g}): log q must be <= 0; "
                f"these look like probabilities: pass {probability_name}= instead"
            )
        if bool(values.isnan().any()):
            raise ValueError(f"{log_q_name} has NaN values")
        return values.clamp(min=_MIN_LOG_PROBABILITY)
    return None


def _batch_size(query: Tensor, other: Tensor, other_name: str, *, same_rows: bool = True) -> int:
    """Checks [B, d] query embeddings against another [rows, d] matrix; returns B."""
    if query.dim() != 2:
        raise ValueError(f"query_embeddings must be a [batch, dim] matrix, got shape {list(query.shape)}")
    if other.dim() != 2 or other.shape[1] != query.shape[1]:
        raise ValueError(
            f"{other_name} must be a [rows, {query.shape[1]}] matrix like the query embeddings, "
            f"got shape {list(other.shape)}"
        )
    if same_rows and query.shape[0] != other.shape[0]:
        raise ValueError(
            f"query and candidate embeddings need the same batch size, got {query.shape[0]} and {other.shape[0]}"
        )
    return query.shape[0]


def _check_vector(values: Tensor | None, size: int, name: str) -> None:
    if values is not None and tuple(values.shape) != (size,):
        raise ValueError(f"{name} must have shape [{size}], got {list(values.shape)}")


def _required(values: Tensor | None, name: str) -> Tensor:
    if values is None:
        raise ValueError(f"{name} is required when extra candidates come with their batch counterpart")
    return values


def _counts_match(labels: Tensor, counts: Tensor, num_unique: int) -> bool:
    """Whether ``counts`` [U] is ``bincount(labels)`` with every label in [0, U)."""
    try:
        observed = torch.bincount(labels, minlength=num_unique)
    except RuntimeError:  # negative labels
        return False
    return observed.shape[0] == num_unique and torch.equal(observed, counts.to(observed.dtype))


def _pack(first: Tensor, second: Tensor, log_q: Tensor | None, rows: int) -> Tensor:
    """[rows, 3] int64: two integer columns and log q's float64 bits (0 without it), for ONE all-gather."""
    bits = torch.zeros(rows, dtype=torch.int64, device=first.device)
    if log_q is not None:
        bits = log_q.detach().to(torch.float64).view(torch.int64)
    return torch.stack([first.to(torch.int64), second.to(torch.int64), bits], dim=1)


def _first_rows(labels: Tensor, num_unique: int) -> Tensor:
    """[U] row of the first occurrence of each unique value, given ``torch.unique``'s inverse [B]."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    # every unique value occurs, so every slot receives a row and the empty start never shows
    return rows.new_empty(num_unique).scatter_reduce_(0, labels, rows, reduce="amin", include_self=False)
