"""The ranking task: pointwise, pairwise and listwise losses over (query, candidate) scores.

A ranking model scores each (query, candidate) pair; the task turns scores and
labels (a rating, a 0/1 click) into one number to minimise. Inputs are either
``[batch]`` (one candidate per row: pointwise losses only) or
``[batch, list_size]`` (a list of candidates per row, optionally padded, with a
``mask`` saying which entries are real). Each loss is a standalone function
below, tested on its own; :class:`Ranking` picks one by name.

Reductions follow the Keras / TF-Ranking ``SUM_OVER_BATCH_SIZE`` convention that
TFRS's ``tfrs.tasks.Ranking`` uses: ``"mean"`` divides the weighted sum by a
count that does NOT depend on the weights (items for pointwise and pairwise
losses, lists for listwise ones), so a weight of 2 counts an example twice;
``"sum"`` is the weighted sum itself. The formulas and the exact denominators are
in each function's docstring.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("mse", "bce", "hinge", "logistic", "softmax", "listmle")
"""The loss names :class:`Ranking` accepts; the first two are pointwise, then two pairwise, then two listwise."""

LIST_LOSSES = ("hinge", "logistic", "softmax", "listmle")
"""Losses that need ``[batch, list_size]`` inputs (they compare candidates within a list)."""

Reduction = Literal["mean", "sum"]


def mse_loss(labels: Tensor, scores: Tensor, *, sample_weight: Tensor | None = None, mask: Tensor | None = None,
             reduction: Reduction = "mean") -> Tensor:
    """Mean squared error between scores and labels (``tf.keras.losses.MeanSquaredError``, as in TFRS's Ranking task).

    ``mean = sum_i w_i (s_i - y_i)^2 / n`` over the n real items (all items without
    a mask); a list's weight applies to each of its items.

    Args:
        labels: [batch] or [batch, list_size] targets, e.g. ratings (label units).
        scores: same shape, predicted labels.
        sample_weight: [batch] non-negative weight of each row (list).
        mask: same shape as ``scores``, bool; False marks padding, ignored.
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        scalar loss in squared label units.
    Raises:
        ValueError: shapes disagree, NaN/inf in real labels or scores, bad weights or reduction.
    """
    labels, scores, weight, mask = _prepare(labels, scores, sample_weight, mask, reduction, pointwise=True)
    return _pointwise(torch.square(scores - labels), weight, mask, reduction)


def binary_cross_entropy_loss(labels: Tensor, scores: Tensor, *, sample_weight: Tensor | None = None,
                              mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """Binary cross-entropy of scores read as logits (``tf.keras.losses.BinaryCrossentropy(from_logits=True)``).

    Per item ``-y log sigmoid(s) - (1 - y) log(1 - sigmoid(s))``, computed stably from
    the logit; labels are clicks in {0, 1} (soft labels in [0, 1] are accepted).
    Reduced like :func:`mse_loss`.

    Args:
        labels: [batch] or [batch, list_size] labels in [0, 1].
        scores: same shape, logits (any real number).
        sample_weight: [batch] non-negative weight of each row (list).
        mask: same shape as ``scores``, bool; False marks padding.
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        scalar loss in nats.
    Raises:
        ValueError: shapes disagree, NaN/inf, labels outside [0, 1], bad weights or reduction.
    """
    labels, scores, weight, mask = _prepare(labels, scores, sample_weight, mask, reduction, pointwise=True)
    real = labels if mask is None else labels[mask]
    if real.numel() and (bool((real < 0).any()) or bool((real > 1).any())):
        raise ValueError("labels for the 'bce' loss must be clicks in [0, 1], got values outside that range")
    losses = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    return _pointwise(losses, weight, mask, reduction)


def pairwise_hinge_loss(labels: Tensor, scores: Tensor, *, margin: float = 1.0, sample_weight: Tensor | None = None,
                        mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """Pairwise hinge loss: ``max(0, margin - (s_i - s_j))`` over every pair of a list with ``y_i > y_j``.

    TF-Ranking's ``PairwiseHingeLoss`` (margin 1). Pairs with equal labels, and pairs
    touching a padded entry, contribute nothing. ``mean`` divides the weighted sum
    over pairs by the number of real items (``batch * list_size`` without a mask),
    which is TF-Ranking's Keras normalisation: ``y=[[1, 0]]``, ``s=[[0.6, 0.8]]`` gives
    1.2 / 2 = 0.6. (TF-Ranking's ragged mode also counts the padding in that
    denominator; here padding never changes the loss.)

    Args:
        labels: [batch, list_size] graded relevance (only its order within a list matters).
        scores: [batch, list_size] scores, higher ranks first.
        margin: the score gap (score units, >= 0) below which a correctly ordered pair still costs.
        sample_weight: [batch] non-negative weight of each list.
        mask: [batch, list_size] bool; False marks padding.
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        scalar loss in score units.
    Raises:
        ValueError: 1-D input (a pairwise loss needs lists), shapes disagree, NaN/inf, bad margin/weights/reduction.
    """
    _check_margin(margin)
    labels, scores, weight, mask = _prepare(labels, scores, sample_weight, mask, reduction, loss="hinge")
    differences, pairs = _pairs(labels, scores, mask)
    return _pairwise(torch.relu(margin - differences), pairs, weight, mask, reduction)


def pairwise_logistic_loss(labels: Tensor, scores: Tensor, *, sample_weight: Tensor | None = None,
                           mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """Pairwise logistic loss (RankNet, Burges et al. 2005): ``log(1 + exp(-(s_i - s_j)))`` over pairs ``y_i > y_j``.

    TF-Ranking's ``PairwiseLogisticLoss``; computed as ``softplus(-(s_i - s_j))``, stable
    for large gaps. Pairs and the ``mean`` denominator as in :func:`pairwise_hinge_loss`.

    Args:
        labels: [batch, list_size] graded relevance.
        scores: [batch, list_size] scores.
        sample_weight: [batch] non-negative weight of each list.
        mask: [batch, list_size] bool; False marks padding.
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        scalar loss in nats.
    Raises:
        ValueError: 1-D input, shapes disagree, NaN/inf, bad weights or reduction.
    """
    labels, scores, weight, mask = _prepare(labels, scores, sample_weight, mask, reduction, loss="logistic")
    differences, pairs = _pairs(labels, scores, mask)
    return _pairwise(F.softplus(-differences), pairs, weight, mask, reduction)


def softmax_loss(labels: Tensor, scores: Tensor, *, sample_weight: Tensor | None = None, mask: Tensor | None = None,
                 reduction: Reduction = "mean") -> Tensor:
    """Listwise softmax cross-entropy, exactly TF-Ranking's ``SoftmaxLoss`` (Cao et al. 2007, ListNet top-1 form).

    Per list: ``-sum_i y_i log softmax(s)_i`` over the real items. TF-Ranking writes
    it as the cross-entropy against the normalised labels ``y_i / sum_j y_j`` with the
    list weighted by ``sum_j y_j``: the same number. A list whose labels are all 0
    costs 0 but still counts in the ``mean`` denominator, which is the number of
    lists (Keras ``SUM_OVER_BATCH_SIZE``).

    Args:
        labels: [batch, list_size] non-negative relevance (e.g. ratings, clicks).
        scores: [batch, list_size] logits.
        sample_weight: [batch] non-negative weight of each list.
        mask: [batch, list_size] bool; False marks padding (outside the softmax).
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        scalar loss in nats (times label units).
    Raises:
        ValueError: 1-D input, negative labels, shapes disagree, NaN/inf, bad weights or reduction.
    """
    labels, scores, weight, mask = _prepare(labels, scores, sample_weight, mask, reduction, loss="softmax")
    real = labels if mask is None else labels[mask]
    if real.numel() and bool((real < 0).any()):
        raise ValueError("labels for the 'softmax' loss must be >= 0 (they weigh each item's log-probability)")
    if mask is None:
        log_probabilities = torch.log_softmax(scores, dim=1)
        per_list = -(labels * log_probabilities).sum(dim=1)
    else:
        log_probabilities = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        terms = torch.where(mask, labels * log_probabilities, torch.zeros_like(scores))
        per_list = -terms.sum(dim=1)
    return _listwise(per_list, weight, reduction)


def listmle_loss(labels: Tensor, scores: Tensor, *, sample_weight: Tensor | None = None, mask: Tensor | None = None,
                 reduction: Reduction = "mean") -> Tensor:
    """ListMLE (Xia et al. 2008): the Plackett-Luce negative log-likelihood of the label-sorted order.

    Sort a list's real items by label, highest first: ``pi``. Then
    ``loss = sum_k [log sum_{m >= k} exp(s_pi(m)) - s_pi(k)]``, the cost of drawing
    that order item by item from softmaxes over the items still left (TF-Ranking's
    ``ListMLELoss``). **Ties in the labels** are broken by position in the list
    (a stable sort: the earlier entry first). TF-Ranking shuffles ties at random
    each step instead; lists from :func:`towerrec.data.sample_lists` are already in
    random order, so this is the same shuffle drawn once, at sampling time, and
    the loss is deterministic. Padded entries are left out of every sum. ``mean``
    divides by the number of lists.

    Args:
        labels: [batch, list_size] graded relevance (only the order matters).
        scores: [batch, list_size] scores.
        sample_weight: [batch] non-negative weight of each list.
        mask: [batch, list_size] bool; False marks padding.
        reduction: ``"mean"`` or ``"sum"``.
    Returns:
        scalar loss in nats.
    Raises:
        ValueError: 1-D input, shapes disagree, NaN/inf, bad weights or reduction.
    """
    labels, scores, weight, mask = _prepare(labels, scores, sample_weight, mask, reduction, loss="listmle")
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    # padding sorts last: a label below every real one
    sort_keys = labels.masked_fill(~valid, float("-inf"))
    order = torch.sort(sort_keys, dim=1, descending=True, stable=True).indices
    sorted_scores = scores.gather(1, order).masked_fill(~valid.gather(1, order), 0.0)
    sorted_valid = valid.gather(1, order)
    size = scores.shape[1]
    # later[k, m]: item m is still left when position k is drawn (m >= k, m real); k always sees itself
    later = torch.ones(size, size, dtype=torch.bool, device=scores.device).triu()
    allowed = (later.unsqueeze(0) & sorted_valid.unsqueeze(1)) | torch.eye(size, dtype=torch.bool,
                                                                          device=scores.device)
    expanded = sorted_scores.unsqueeze(1).expand(-1, size, -1).masked_fill(~allowed, float("-inf"))
    terms = torch.logsumexp(expanded, dim=2) - sorted_scores
    per_list = torch.where(sorted_valid, terms, torch.zeros_like(terms)).sum(dim=1)
    return _listwise(per_list, weight, reduction)


_LOSS_FUNCTIONS = {
    "mse": mse_loss,
    "bce": binary_cross_entropy_loss,
    "hinge": pairwise_hinge_loss,
    "logistic": pairwise_logistic_loss,
    "softmax": softmax_loss,
    "listmle": listmle_loss,
}


class Ranking(nn.Module):
    """The ranking loss of a model that scores (query, candidate) pairs (TFRS's ``tfrs.tasks.Ranking``).

    ``loss`` picks one of: ``"mse"`` (ratings; TFRS's default), ``"bce"`` (clicks,
    scores are logits), the pairwise ``"hinge"`` and ``"logistic"``, and the listwise
    ``"softmax"`` and ``"listmle"`` (the losses of TFRS's listwise tutorial, from
    TF-Ranking). Pointwise losses take ``[batch]`` or ``[batch, list_size]`` inputs;
    the others need lists. See each function (:func:`mse_loss`, ...) for the formula
    and normalisation. The ``mean`` reduction follows Keras: the weighted sum
    divided by a count that ignores the weights.

    Args:
        loss: one of :data:`LOSSES`.
        margin: the hinge margin (score units, >= 0); only ``"hinge"`` takes one other than 1.
        reduction: ``"mean"`` (default, TFRS) or ``"sum"``.
    Raises:
        ValueError: an unknown loss or reduction, a negative/non-finite margin, or a margin
            other than 1 for a loss that has none.
    """

    def __init__(self, loss: str = "mse", *, margin: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        if loss not in _LOSS_FUNCTIONS:
            raise ValueError(f"unknown ranking loss {loss!r}; valid: {', '.join(LOSSES)}")
        _check_reduction(reduction)
        _check_margin(margin)
        if loss != "hinge" and margin != 1.0:
            raise ValueError(f"margin applies to the 'hinge' loss only, got margin={margin} with loss {loss!r}")
        self.loss = loss
        self.margin = float(margin)
        self.reduction = reduction

    @property
    def needs_lists(self) -> bool:
        """Whether the loss compares candidates within a list (pairwise or listwise: ``[batch, list_size]`` input)."""
        return self.loss in LIST_LOSSES

    def get_config(self) -> dict[str, Any]:
        """The task's settings as JSON values: ``Ranking(**task.get_config())`` is an equal task."""
        return {"loss": self.loss, "margin": self.margin, "reduction": self.reduction}

    def forward(self, labels: Tensor, scores: Tensor, *, sample_weight: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """Scalar loss of one batch.

        Args:
            labels: [batch] or [batch, list_size] targets (ratings, clicks, graded relevance).
            scores: same shape, the model's scores (logits for ``"bce"``).
            sample_weight: [batch] non-negative weight per row (per list for list input).
            mask: same shape as ``scores``, bool; False marks padded list entries.
        Returns:
            scalar loss.
        Raises:
            ValueError: a pairwise/listwise loss on 1-D input, mismatched shapes, NaN/inf in
                labels or scores (named), or invalid labels for the loss.
        """
        function = _LOSS_FUNCTIONS[self.loss]
        if self.loss == "hinge":
            return function(labels, scores, margin=self.margin, sample_weight=sample_weight, mask=mask,
                            reduction=self.reduction)
        return function(labels, scores, sample_weight=sample_weight, mask=mask, reduction=self.reduction)

    def extra_repr(self) -> str:
        """``loss=..., reduction=...`` (and the margin for the hinge loss) in the module's repr."""
        margin = f", margin={self.margin}" if self.loss == "hinge" else ""
        return f"loss={self.loss!r}{margin}, reduction={self.reduction!r}"


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _check_margin(margin: float) -> None:
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not (0 <= margin < float("inf")):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")


def _prepare(labels: Tensor, scores: Tensor, sample_weight: Tensor | None, mask: Tensor | None, reduction: str,
             *, pointwise: bool = False, loss: str = "") -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Checks shapes and values; returns (labels in the scores' dtype, scores, weight, mask)."""
    _check_reduction(reduction)
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("labels and scores must be tensors")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating tensor, got {scores.dtype}")
    if scores.dim() not in (1, 2):
        raise ValueError(f"scores must be [batch] or [batch, list_size], got shape {list(scores.shape)}")
    if not pointwise and scores.dim() != 2:
        raise ValueError(f"the {loss!r} loss compares candidates within a list: it needs [batch, list_size] "
                         f"labels and scores, got shape {list(scores.shape)}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {list(labels.shape)} differs from scores shape {list(scores.shape)}")
    labels = labels.to(scores.dtype)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (True: a real list entry)")
        if mask.shape != scores.shape:
            raise ValueError(f"mask shape {list(mask.shape)} differs from scores shape {list(scores.shape)}")
    finite_labels, finite_scores = torch.isfinite(labels), torch.isfinite(scores)
    if mask is not None:
        finite_labels, finite_scores = finite_labels | ~mask, finite_scores | ~mask
    if not bool(finite_labels.all() & finite_scores.all()):  # one device sync in the common case
        raise ValueError(f"{'labels' if not bool(finite_labels.all()) else 'scores'} hold NaN or inf values")
    if mask is not None:  # padding may hold anything: zero it so no NaN reaches a gradient
        labels = torch.where(mask, labels, torch.zeros_like(labels))
        scores = torch.where(mask, scores, torch.zeros_like(scores))
    weight = None
    if sample_weight is not None:
        if not isinstance(sample_weight, Tensor):
            raise TypeError("sample_weight must be a tensor")
        if tuple(sample_weight.shape) != (scores.shape[0],):
            raise ValueError(f"sample_weight must have shape [{scores.shape[0]}], got {list(sample_weight.shape)}")
        weight = sample_weight.to(scores.dtype)
        if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise ValueError("sample_weight must hold finite values >= 0")
    return labels, scores, weight, mask


def _pointwise(losses: Tensor, weight: Tensor | None, mask: Tensor | None, reduction: str) -> Tensor:
    if weight is not None:
        losses = losses * (weight if losses.dim() == 1 else weight.unsqueeze(1))
    if mask is None:
        total = losses.sum()
        return total if reduction == "sum" else total / max(losses.numel(), 1)
    total = torch.where(mask, losses, torch.zeros_like(losses)).sum()
    return total if reduction == "sum" else total / mask.sum().clamp(min=1)


def _pairs(labels: Tensor, scores: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """[batch, L, L] score differences ``s_i - s_j`` and the bool pairs that count (``y_i > y_j``, both real)."""
    differences = scores.unsqueeze(2) - scores.unsqueeze(1)
    pairs = labels.unsqueeze(2) > labels.unsqueeze(1)
    if mask is not None:
        pairs = pairs & mask.unsqueeze(2) & mask.unsqueeze(1)
    return differences, pairs


def _pairwise(pair_losses: Tensor, pairs: Tensor, weight: Tensor | None, mask: Tensor | None,
              reduction: str) -> Tensor:
    per_list = torch.where(pairs, pair_losses, torch.zeros_like(pair_losses)).sum(dim=(1, 2))
    if weight is not None:
        per_list = per_list * weight
    total = per_list.sum()
    if reduction == "sum":
        return total
    return total / (max(pair_losses.shape[0] * pair_losses.shape[1], 1) if mask is None else mask.sum().clamp(min=1))


def _listwise(per_list: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    if weight is not None:
        per_list = per_list * weight
    total = per_list.sum()
    return total if reduction == "sum" else total / max(per_list.shape[0], 1)
