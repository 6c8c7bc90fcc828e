"""In-batch softmax computed over the batch's *unique* candidates: exact, and far cheaper.

In a batch of B positives, the in-batch softmax scores every query against all
B candidates, but popular items repeat: a batch of 8192 MovieLens ratings holds
only ~1500 distinct movies. Identical candidates have identical logits, so the
B x B softmax equals a B x U softmax where each unique column carries
``log(count)``, its multiplicity. With accidental-hit removal the row's own
positive counts once (its duplicates are the "accidental hits"). The result,
loss and gradients, is the same as the B x B computation (tested), at U/B of
the cost, and the candidate tower runs once per unique item.

Two implementations, chosen by size: above ``MATERIALISED_MAX_LOGITS`` logits
(B x U) the cache-blocked softmax of :mod:`towerrec.tasks.blocked_softmax`, which
never materialises [B, U]; below it, a fused autograd function that keeps one
[B, U] buffer of probabilities for the backward pass (no tiling overhead: faster
for small batches, see benchmarks/results/task_speed.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from towerrec.tasks.blocked_softmax import blocked_softmax_loss

#: Largest B x U computed by the materialised kernel; larger products take the blocked one. Measured
#: (benchmarks/results/task_speed.md, float32, one thread): at 1M logits (1024 x 1000) the two tie
#: (0.99x at dim 32, 1.15x at dim 64), below it the materialised one is up to 2x faster (the [B, U]
#: buffer fits in cache), from 6M logits (4096 x 1500) up the blocked one is 1.4x-2.2x faster.
MATERIALISED_MAX_LOGITS = 2_097_152

# -log p beyond this means p is within a few orders of float32's smallest normal.
_UNDERFLOW_LOSS = 80.0


class _UniqueSoftmaxLoss(torch.autograd.Function):
    """Per-row loss ``logsumexp(scale * q c^T + bias) - positive`` with a fused backward."""

    @staticmethod
    def forward(ctx, query, candidates, labels, column_bias, label_bias, scale):  # type: ignore[override]
        rows = torch.arange(query.shape[0], device=query.device)
        logits = torch.addmm(column_bias.unsqueeze(0).expand(query.shape[0], -1), query, candidates.t(), alpha=scale)
        logits[rows, labels] += label_bias
        # softmax is one fused pass (about 4x faster on CPU than logsumexp then
        # exp); the loss is -log p[label], exact unless p underflows, and those
        # rare rows are recomputed from the logits as logsumexp - positive.
        probabilities = torch.softmax(logits, dim=1)
        per_row = probabilities[rows, labels].log().neg_()
        underflow = ~torch.isfinite(per_row) | (per_row > _UNDERFLOW_LOSS)
        if bool(underflow.any()):
            stable = logits[underflow]
            per_row[underflow] = torch.logsumexp(stable, dim=1) - stable[rows[: stable.shape[0]], labels[underflow]]
        ctx.save_for_backward(query, candidates, labels, probabilities)
        ctx.scale = scale
        return per_row

    @staticmethod
    def backward(ctx, grad_rows):  # type: ignore[override]
        query, candidates, labels, probabilities = ctx.saved_tensors
        rows = torch.arange(query.shape[0], device=query.device)
        probabilities[rows, labels] -= 1.0
        grad_logits = probabilities.mul_(grad_rows.unsqueeze(1) * ctx.scale)
        grad_query = grad_logits @ candidates
        grad_candidates = grad_logits.t() @ query
        return grad_query, grad_candidates, None, None, None, None


def unique_in_batch_softmax_loss(
    query: Tensor,
    unique_candidates: Tensor,
    labels: Tensor,
    counts: Tensor,
    *,
    log_q: Tensor | None = None,
    remove_accidental_hits: bool = True,
    temperature: float = 1.0,
    reduction: Literal["mean", "sum"] = "mean",
    sample_weight: Tensor | None = None,
    row_block: int | None = None,
    column_block: int | None = None,
) -> Tensor:
    """In-batch softmax cross-entropy over unique candidates (the B x B softmax's loss and gradients, exactly).

    Column u of the [B, U] logits carries ``log(counts[u])``, standing for its
    copies; the logQ correction (Yi et al. 2019) subtracts ``log_q``. Gradients
    flow to ``query`` and ``unique_candidates``; :class:`~towerrec.tasks.Retrieval`
    calls this for its fast path.

    Args:
        query: [B, d] query embeddings, one per positive pair.
        unique_candidates: [U, d] embeddings of the distinct candidates in the batch.
        labels: [B] index into ``unique_candidates`` of each row's positive.
        counts: [U] how often each unique candidate occurs in the batch.
        log_q: [U] log sampling probability of each candidate (logQ correction), or None.
        remove_accidental_hits: drop the row positive's duplicates from its negatives.
        temperature: logits are divided by it.
        reduction: "mean" (towerrec's default) or "sum" (TFRS's).
        sample_weight: [B] per-row weights, or None (Keras semantics: mean = sum(w·loss) / B).
        row_block: rows per tile of the blocked kernel (None: sized to the cache); setting it or
            ``column_block`` always takes the blocked kernel.
        column_block: candidates per tile of the blocked kernel (None: its default).
    Returns:
        scalar loss (float32 for bfloat16 inputs or under autocast: below the threshold the inputs are
        upcast to float32; above it the blocked kernel's matmuls run in bfloat16, the rest in float32).
    """
    explicit_tiles = row_block is not None or column_block is not None
    if explicit_tiles or query.shape[0] * unique_candidates.shape[0] > MATERIALISED_MAX_LOGITS:
        return _blocked_loss(query, unique_candidates, labels, counts, log_q, remove_accidental_hits, temperature,
                             reduction, sample_weight, row_block, column_block)
    dtype = torch.promote_types(query.dtype, unique_candidates.dtype)
    if torch.is_autocast_enabled(query.device.type) or dtype not in (torch.float32, torch.float64):
        # low precision (bfloat16 inputs or autocast): the small kernel runs in float32, as the blocked one accumulates
        with torch.autocast(query.device.type, enabled=False):
            return unique_in_batch_softmax_loss(
                query.float(), unique_candidates.float(), labels, counts, log_q=log_q,
                remove_accidental_hits=remove_accidental_hits, temperature=temperature, reduction=reduction,
                sample_weight=sample_weight)
    log_counts = counts.to(query.dtype).log()
    column_bias = log_counts if log_q is None else log_counts - log_q.to(query.dtype)
    label_log_count = log_counts[labels]
    # With hit removal the row's positive appears once in its denominator, so its
    # column loses log(count) on that row. Without removal the denominator keeps
    # every copy, and only the numerator (read from the same cell) must lose it:
    # a constant per row, added back after the fused op.
    label_bias = -label_log_count if remove_accidental_hits else torch.zeros_like(label_log_count)
    per_row = _UniqueSoftmaxLoss.apply(
        query, unique_candidates, labels, column_bias, label_bias, 1.0 / temperature
    )
    if not remove_accidental_hits:
        per_row = per_row + label_log_count
    if sample_weight is not None:
        per_row = per_row * sample_weight.to(per_row.dtype)
    return per_row.mean() if reduction == "mean" else per_row.sum()


def _blocked_loss(query: Tensor, candidates: Tensor, labels: Tensor, counts: Tensor, log_q: Tensor | None,
                  remove_accidental_hits: bool, temperature: float, reduction: Literal["mean", "sum"],
                  sample_weight: Tensor | None, row_block: int | None, column_block: int | None) -> Tensor:
    """The same loss through :func:`~towerrec.tasks.blocked_softmax.blocked_softmax_loss`."""
    log_counts = counts.to(torch.float32 if query.dtype != torch.float64 else torch.float64).log()
    column_bias = log_counts if log_q is None else log_counts - log_q.to(log_counts.dtype)
    label_log_count = log_counts[labels]
    # the positive counts once in its row's denominator (hit removal) or with all its copies (a constant per row)
    loss = blocked_softmax_loss(
        query, candidates, labels, column_bias=column_bias,
        label_bias=-label_log_count if remove_accidental_hits else None, temperature=temperature,
        sample_weight=sample_weight, reduction=reduction, row_block=row_block, column_block=column_block,
    )
    if remove_accidental_hits:
        return loss
    weight = label_log_count if sample_weight is None else label_log_count * sample_weight.to(label_log_count.dtype)
    extra = weight.sum()
    return loss + (extra / max(labels.shape[0], 1) if reduction == "mean" else extra)


def unique_candidates(candidate_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The inputs :func:`unique_in_batch_softmax_loss` needs, from a batch's candidate ids.

    Args:
        candidate_index: [B] item ids (or catalogue positions) of the batch's positives.
    Returns:
        ([U] sorted distinct ids, [B] int64 index of each row's id among them,
        [U] int64 count of each distinct id).
    """
    unique, labels, counts = torch.unique(candidate_index, return_inverse=True, return_counts=True)
    return unique, labels, counts
