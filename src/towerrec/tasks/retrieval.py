"""The retrieval task: in-batch softmax over query-candidate pairs, with its tricks.

Row i of a batch pairs a query with the candidate the user chose; every other
candidate in the batch (and any extra sampled ones) serves as a negative. Each
trick that corrects this cheap softmax is a small standalone function below,
tested on its own; :class:`RetrievalTask` chains them in TFRS's order:
temperature -> logQ correction -> accidental-hit removal -> hard negatives.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    """``log(clamp(q, 1e-6, 1))``: the log q that :class:`RetrievalTask` takes directly.

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


class RetrievalTask(nn.Module):
    """In-batch softmax cross-entropy loss for two-tower retrieval.

    Query i's positive is candidate i (the diagonal); the other candidates of the
    batch, plus optional extra ones, are its negatives. The tricks switched on
    here run in TFRS's order: temperature, logQ, accidental hits, hard negatives.

    The loss is the MEAN over the batch, unlike TFRS's SUM: then its scale and the
    effective learning rate do not depend on the batch size. SUM has B times the
    gradient: with SGD, "mean" needs the learning rate times B to match. Adagrad
    divides by the root of the summed squared gradients, so it is nearly
    scale-free, except for its initial accumulator (Keras: 0.1) and epsilon,
    which dominate the B-times-smaller "mean" gradients and shrink the early steps. To
    match TFRS with "mean", divide the initial accumulator by B² and epsilon by B,
    or use ``reduction="sum"``, which reproduces TFRS exactly.

    Args:
        temperature: logits are divided by it (> 0).
        logq_correction: subtract ``candidate_log_q`` from the logits when it is given.
        remove_accidental_hits: mask duplicates of each row's positive when
            ``candidate_ids`` are given.
        num_hard_negatives: keep only the k hardest negatives per row (None: all).
        reduction: ``"mean"`` (default) or ``"sum"`` (TFRS).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
        num_hard_negatives: int | None = None,
        reduction: Literal["mean", "sum"] = "mean",
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

    def forward(
        self,
        query_embeddings: Tensor,
        candidate_embeddings: Tensor,
        *,
        candidate_ids: Tensor | None = None,
        candidate_log_q: Tensor | None = None,
        extra_candidate_embeddings: Tensor | None = None,
        extra_candidate_ids: Tensor | None = None,
        extra_candidate_log_q: Tensor | None = None,
        sample_weight: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss of one batch.

        Args:
            query_embeddings: [B, d].
            candidate_embeddings: [B, d], row i the positive of query i.
            candidate_ids: [B] item ids, needed for accidental-hit removal.
            candidate_log_q: [B] log sampling probability (:func:`sampling_log_q`).
            extra_candidate_embeddings: [M, d] extra negatives shared by all rows.
            extra_candidate_ids: [M] their ids (required with ``candidate_ids``).
            extra_candidate_log_q: [M] their log q (required with ``candidate_log_q``),
                from the same mixed distribution (:func:`candidate_sampling_probability`).
            sample_weight: [B] per-row weights (Keras semantics: mean = sum(w·loss) / B).
        Returns:
            scalar loss.
        """
        batch = query_embeddings.shape[0]
        if candidate_embeddings.shape[0] != batch:
            raise ValueError(
                f"query and candidate embeddings need the same batch size, "
                f"got {batch} and {candidate_embeddings.shape[0]}"
            )
        has_extra = extra_candidate_embeddings is not None
        candidates = torch.cat([candidate_embeddings, extra_candidate_embeddings]) if has_extra else candidate_embeddings
        logits = in_batch_logits(query_embeddings, candidates, self.temperature)
        labels = torch.arange(batch, device=logits.device)

        if self.logq_correction and candidate_log_q is not None:
            log_q = _with_extra(candidate_log_q, extra_candidate_log_q, has_extra, "extra_candidate_log_q")
            logits = logits - log_q.detach().to(logits.dtype).unsqueeze(0)
        if self.remove_accidental_hits and candidate_ids is not None:
            ids = _with_extra(candidate_ids, extra_candidate_ids, has_extra, "extra_candidate_ids")
            logits = remove_accidental_hits(logits, labels, candidate_ids, ids)
        if self.num_hard_negatives is not None:
            logits, labels = hard_negative_mining(logits, labels, self.num_hard_negatives)

        per_row = F.cross_entropy(logits, labels, reduction="none")
        if sample_weight is not None:
            per_row = per_row * sample_weight.to(per_row.dtype)
        return per_row.sum() if self.reduction == "sum" else per_row.sum() / batch


def _with_extra(batch_values: Tensor, extra_values: Tensor | None, has_extra: bool, name: str) -> Tensor:
    """Appends the extra negatives' values to the batch's, insisting they are given."""
    if not has_extra:
        return batch_values
    if extra_values is None:
        raise ValueError(f"{name} is required when extra candidates come with their batch counterpart")
    return torch.cat([batch_values, extra_values.to(batch_values.device)])
