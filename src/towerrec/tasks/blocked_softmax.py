"""Cache-blocked exact softmax cross-entropy: the [B, U] logits are never materialised.

Row i of a batch scores its query ``q_i`` against a set of U candidates (the
in-batch positives, the batch's unique items, sampled negatives or the whole
catalogue) plus its own positive, and its loss is

    loss_i = logsumexp(s_i+, s_i1, ..., s_iU) - s_i+,
    s_ij = q_i . c_j / T + column_bias_j,   s_i+ = q_i . p_i / T + positive bias_i,

where some cells are left out of row i: the column of its own positive (it is
``s_i+``) and accidental hits (columns whose id equals the row's positive id).
Computing this the plain way writes a [B, U] logits matrix, a [B, U]
probabilities matrix and a [B, U] gradient matrix: at B = 8192 and U = 7,500 that
is ~245 MB each, written and read several times per step, and the step is
memory-bound. Here the work is cut into tiles of ``row_block`` rows x
``column_block`` candidates, small enough to stay in the CPU's L2 cache; each
tile's logits are computed, turned into probabilities and used at once, then
overwritten by the next tile:

* the normaliser of each row is accumulated tile by tile as a running
  log-sum-exp (the online softmax of Milakov & Gimelshein 2018, "Online
  normalizer calculation for softmax"; the tiling is FlashAttention's, Dao et
  al. 2022). The running value starts at the positive logit, so it is finite
  even when every cell of a row is masked.
* the loss is a scalar (mean or sum over rows, with fixed sample weights), so
  its gradient with respect to every logit is known during the forward pass:
  ``coef_i (p_ij - [j = positive])``. The gradients of the query and candidate
  embeddings are therefore accumulated in the forward pass, tile by tile (as
  Liger-Kernel's fused linear cross-entropy does, Hsu et al. 2024), and the
  backward pass only scales them by the incoming gradient. With one column
  block per row (U <= ``column_block``) each tile's matmul runs once; with
  several, a first sweep finds the log-sum-exp and a second recomputes each
  tile to form its gradient. Without a gradient to compute (``no_grad``, or
  inputs that do not require it) only the loss sweep runs.

Memory is O((B + U) d + row_block x column_block) instead of O(B U).
Matmuls run in the inputs' dtype (bfloat16 under autocast); tiles, the
log-sum-exp and every accumulation are float32 (float64 for float64 inputs).
The result equals ``F.cross_entropy`` over the full logits, values and gradients
(tested to 1e-10 in float64).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Tile size on CPUs per thread, in logits: 32 rows x 8,192 candidates of float32 = 1 MiB, about one
#: core's L2 cache (at B = 8192, U = 7,500, one thread: 34 to 68 rows per tile within 3% of each other,
#: 17 rows 13% slower, 136 rows 6% slower). With T threads a tile has T times the rows: each
#: thread's share stays this size.
CPU_TILE_ELEMENTS = 262_144
#: Most candidates per tile on CPUs; more columns than this take several blocks and a second sweep.
CPU_COLUMN_BLOCK = 16_384
#: Tile size on GPUs, in logits: big tiles (256 MiB of float32) keep the number of kernel launches small.
GPU_TILE_ELEMENTS = 1 << 26


def blocked_softmax_loss(
    query: Tensor,
    candidates: Tensor,
    labels: Tensor | None = None,
    *,
    positives: Tensor | None = None,
    column_bias: Tensor | None = None,
    label_bias: Tensor | None = None,
    row_ids: Tensor | None = None,
    column_ids: Tensor | None = None,
    temperature: float = 1.0,
    num_hard_negatives: int | None = None,
    sample_weight: Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
    row_block: int | None = None,
    column_block: int | None = None,
) -> Tensor:
    """Exact softmax cross-entropy of each query's positive against a candidate set, tile by tile.

    Row i's logits are ``query_i . candidates_j / temperature + column_bias_j`` for every
    candidate j, except its own positive's column (with ``labels``) and the columns
    whose ``column_ids`` equal its ``row_ids`` (accidental hits), which are left out;
    its positive logit is ``query_i . positive_i / temperature + column_bias[labels_i]
    + label_bias_i`` (``positive_i = candidates[labels_i]``, or ``positives[i]``, then
    without the column bias). The loss is ``sum_i coef_i (logsumexp(row i) - positive
    logit)`` with ``coef_i = sample_weight_i / B`` ("mean"; Keras semantics) or
    ``sample_weight_i`` ("sum"): equal, with its gradients, to ``F.cross_entropy`` over
    the full [B, U + 1] logits, never materialising them (see the module docstring for
    the method and its sources).

    With ``num_hard_negatives = k`` each row keeps only its k highest-scoring non-masked
    candidates (a running top-k over the tiles), and the loss is the softmax over the
    positive and those k (TFRS's ``num_hard_negatives``).

    Args:
        query: [B, d] query embeddings.
        candidates: [U, d] candidate embeddings shared by all rows.
        labels: [B] int64 index into ``candidates`` of each row's positive; or None with ``positives``.
        positives: [B, d] each row's own positive embedding, when it is not among ``candidates``
            (sampled softmax); not with ``labels``.
        column_bias: [U] added to each candidate's logits (e.g. ``log count - log q``), or None.
        label_bias: [B] added to each row's positive logit (e.g. ``-log count`` to count it once), or None.
        row_ids: [B] id of each row's positive; with ``column_ids`` [U] ids of the candidates,
            masks the accidental hits (both or neither).
        column_ids: [U] ids of the candidates.
        temperature: logits (before the biases) are divided by it (> 0).
        num_hard_negatives: keep only the k hardest candidates per row (None: all).
        sample_weight: [B] fixed per-row weights (no gradient flows to them), or None.
        reduction: ``"mean"`` (sum of weighted row losses / B) or ``"sum"``.
        row_block: rows per tile (default: sized to the cache, see ``CPU_TILE_ELEMENTS``).
        column_block: candidates per tile (default ``CPU_COLUMN_BLOCK`` on CPUs).
    Returns:
        scalar loss (float32 for bfloat16 / float16 inputs), differentiable with respect to
        ``query``, ``candidates`` and ``positives`` (once: no second derivatives).
    Raises:
        ValueError: mismatched shapes, ``labels`` and ``positives`` both or neither given, one
            of ``row_ids`` / ``column_ids`` without the other, temperature ≤ 0, bad block sizes,
            num_hard_negatives < 1 or an unknown reduction.
    """
    batch, dim, num_candidates = _check(query, candidates, labels, positives, column_bias, label_bias, row_ids,
                                        column_ids, temperature, num_hard_negatives, sample_weight, reduction,
                                        row_block, column_block)
    compute_dtype = _compute_dtype(query, candidates if positives is None else positives)
    acc_dtype = _accumulation_dtype(compute_dtype)
    rows, columns = block_sizes(batch, num_candidates, query.device, row_block=row_block, column_block=column_block)
    coef = _row_coefficients(batch, sample_weight, reduction, acc_dtype, query.device)
    if num_hard_negatives is not None:
        return _hard_negative_loss(query, candidates, labels, positives, column_bias, label_bias, row_ids, column_ids,
                                   1.0 / temperature, num_hard_negatives, coef, rows, columns, compute_dtype, acc_dtype)
    plan = _Plan(1.0 / temperature, rows, columns, compute_dtype, acc_dtype)
    return _BlockedSoftmaxLoss.apply(query, candidates, positives, labels, column_bias, label_bias, row_ids,
                                     column_ids, coef, plan)


def block_sizes(
    batch: int, num_candidates: int, device: torch.device | str, *, row_block: int | None = None,
    column_block: int | None = None,
) -> tuple[int, int]:
    """The (rows, candidates) of one tile :func:`blocked_softmax_loss` uses by default.

    On CPUs a tile holds about ``CPU_TILE_ELEMENTS`` logits per intra-op thread (sized for a
    core's L2 cache), at most ``CPU_COLUMN_BLOCK`` candidates wide; on GPUs about ``GPU_TILE_ELEMENTS``
    (a handful of large tiles: the cost there is kernel launches, not cache misses).

    Args:
        batch: B, query rows.
        num_candidates: U, candidates.
        device: where the tiles are computed.
        row_block: rows per tile, or None for the default.
        column_block: candidates per tile, or None for the default.
    Returns:
        (rows per tile ≥ 1, candidates per tile ≥ 1).
    """
    gpu = torch.device(device).type != "cpu"
    budget = GPU_TILE_ELEMENTS if gpu else CPU_TILE_ELEMENTS * torch.get_num_threads()
    if column_block is None:
        column_block = num_candidates if gpu else min(num_candidates, CPU_COLUMN_BLOCK)
    column_block = max(1, min(column_block, max(num_candidates, 1)))
    if row_block is None:
        row_block = max(8, budget // column_block)
    return max(1, min(row_block, max(batch, 1))), column_block


class _Plan:
    """The non-tensor settings of one loss call (scale = 1 / temperature, tile sizes, dtypes)."""

    def __init__(self, scale: float, rows: int, columns: int, compute_dtype: torch.dtype,
                 acc_dtype: torch.dtype) -> None:
        self.scale, self.rows, self.columns = scale, rows, columns
        self.compute_dtype, self.acc_dtype = compute_dtype, acc_dtype


class _BlockedSoftmaxLoss(torch.autograd.Function):
    """Scalar loss with its input gradients accumulated in the forward pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, query, candidates, positives, labels, column_bias, label_bias, row_ids, column_ids, coef,
                plan):  # type: ignore[override]
        need_grad = any(ctx.needs_input_grad[:3])
        with torch.autocast(query.device.type, enabled=False):
            loss, grads = _blocked_forward(query, candidates, positives, labels, column_bias, label_bias, row_ids,
                                           column_ids, coef, plan, need_grad)
        ctx.grads = grads
        ctx.dtypes = (query.dtype, candidates.dtype, None if positives is None else positives.dtype)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[override]
        grad_query, grad_candidates, grad_positives = ctx.grads
        out = []
        for grad, dtype, needed in zip((grad_query, grad_candidates, grad_positives), ctx.dtypes,
                                       ctx.needs_input_grad[:3]):
            out.append((grad * grad_loss.to(grad.dtype)).to(dtype) if needed and grad is not None else None)
        return (*out, None, None, None, None, None, None, None)


def _blocked_forward(
    query: Tensor, candidates: Tensor, positives: Tensor | None, labels: Tensor | None, column_bias: Tensor | None,
    label_bias: Tensor | None, row_ids: Tensor | None, column_ids: Tensor | None, coef: Tensor, plan: _Plan,
    need_grad: bool,
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """The loss, and the gradients of (query, candidates, positives) when ``need_grad``."""
    acc, scale = plan.acc_dtype, plan.scale
    batch = query.shape[0]
    scaled_query = query.detach().to(acc) * scale  # [B, d]: the logits' left factor, temperature folded in
    query_mm = scaled_query.to(plan.compute_dtype)
    candidates_mm = candidates.detach().to(plan.compute_dtype)
    positive_rows = (candidates_mm[labels] if positives is None else positives.detach().to(plan.compute_dtype)).to(acc)
    positive = (query_mm.to(acc) * positive_rows).sum(1)  # [B] positive logits, accumulated in acc
    bias = None if column_bias is None else column_bias.detach().to(acc)
    if bias is not None and labels is not None:
        positive += bias[labels]
    if label_bias is not None:
        positive += label_bias.detach().to(acc)

    tiles = _Tiles(query_mm, candidates_mm, bias, labels, row_ids, column_ids, plan)
    grad_query = torch.zeros_like(scaled_query) if need_grad else None
    grad_candidates = torch.zeros(candidates.shape, dtype=acc, device=query.device) if need_grad else None
    lse = torch.empty_like(positive)
    if tiles.num_column_blocks == 1:
        # one sweep: each tile is a whole row block, its softmax is final once the positive joins it
        for r0, r1 in tiles.row_blocks():
            tile = tiles.softmax(r0, r1, 0)
            block_lse = torch.logaddexp(positive[r0:r1], tiles.tile_lse)
            lse[r0:r1] = block_lse
            if need_grad:
                tile.mul_((coef[r0:r1] * torch.exp(tiles.tile_lse - block_lse)).unsqueeze(1))
                tiles.accumulate(tile, r0, r1, 0, grad_query, grad_candidates)
    else:
        # first sweep: each tile's log-sum-exp; the online combination happens once, over [B, blocks + 1]
        partial = torch.empty(batch, tiles.num_column_blocks + 1, dtype=acc, device=query.device)
        partial[:, 0] = positive
        for r0, r1 in tiles.row_blocks():
            for block in range(tiles.num_column_blocks):
                tiles.softmax(r0, r1, block)
                partial[r0:r1, block + 1] = tiles.tile_lse
        torch.logsumexp(partial, 1, out=lse)
        if need_grad:  # second sweep: recompute each tile's probabilities, rescaled to the full row
            factor = torch.exp(partial[:, 1:] - lse.unsqueeze(1)).mul_(coef.unsqueeze(1))
            for r0, r1 in tiles.row_blocks():
                for block in range(tiles.num_column_blocks):
                    tile = tiles.softmax(r0, r1, block, need_lse=False)
                    tile.mul_(factor[r0:r1, block : block + 1])
                    tiles.accumulate(tile, r0, r1, block, grad_query, grad_candidates)
    loss = (coef * (lse - positive)).sum()
    if not need_grad:
        return loss, (None, None, None)
    # the positive's own cell: d loss / d positive logit = coef (p_positive - 1)
    grad_positive = coef * torch.expm1(positive - lse)
    grad_query.addcmul_(grad_positive.unsqueeze(1), positive_rows).mul_(scale)
    grad_positive_rows = grad_positive.unsqueeze(1) * scaled_query
    if positives is None:
        grad_candidates.index_add_(0, labels, grad_positive_rows)
        return loss, (grad_query, grad_candidates, None)
    return loss, (grad_query, grad_candidates, grad_positive_rows)


class _Tiles:
    """Computes the masked logits of one (row block, column block) tile into a reused buffer."""

    def __init__(self, query: Tensor, candidates: Tensor, bias: Tensor | None, labels: Tensor | None,
                 row_ids: Tensor | None, column_ids: Tensor | None, plan: _Plan) -> None:
        self.query, self.candidates, self.bias = query, candidates, bias
        self.row_ids, self.column_ids = row_ids, column_ids
        self.rows, self.columns = plan.rows, plan.columns
        self.batch, self.num_candidates = query.shape[0], candidates.shape[0]
        self.num_column_blocks = max(1, math.ceil(self.num_candidates / self.columns))
        acc, device = plan.acc_dtype, query.device
        size = self.rows * min(self.columns, max(self.num_candidates, 1))
        self.buffer = torch.empty(size, dtype=acc, device=device)
        self.mixed = plan.compute_dtype != acc
        self.mm_buffer = torch.empty(size, dtype=plan.compute_dtype, device=device) if self.mixed else None
        self.mask = torch.empty(size, dtype=torch.bool, device=device) if row_ids is not None else None
        self.lowest = torch.finfo(acc).min
        self.in_place = device.type == "cpu"  # the CPU softmax kernel may alias its input and output
        self.excluded = _label_cells(labels, self.batch, self.num_candidates, self.rows, self.columns,
                                     self.num_column_blocks) if labels is not None else None
        self.tile_lse: Tensor = torch.empty(0)

    def row_blocks(self):
        for r0 in range(0, self.batch, self.rows):
            yield r0, min(self.batch, r0 + self.rows)

    def logits(self, r0: int, r1: int, block: int) -> Tensor:
        """[r1 - r0, width] logits of the tile, masked cells at the dtype's lowest value."""
        c0 = block * self.columns
        c1 = min(self.num_candidates, c0 + self.columns)
        n, width = r1 - r0, c1 - c0
        tile = self.buffer[: n * width].view(n, width)
        left, right = self.query[r0:r1], self.candidates[c0:c1].t()
        if self.mixed:
            product = torch.mm(left, right, out=self.mm_buffer[: n * width].view(n, width))
            if self.bias is None:
                tile.copy_(product)
            else:
                torch.add(product, self.bias[c0:c1], out=tile)
        elif self.bias is None:
            torch.mm(left, right, out=tile)
        else:
            torch.addmm(self.bias[c0:c1].expand(n, width), left, right, out=tile)
        if self.mask is not None:
            mask = self.mask[: n * width].view(n, width)
            torch.eq(self.row_ids[r0:r1].unsqueeze(1), self.column_ids[c0:c1].unsqueeze(0), out=mask)
            tile.masked_fill_(mask, self.lowest)
        if self.excluded is not None:
            cells = self.excluded(r0 // self.rows, block)
            if cells.numel():
                tile.view(-1).index_fill_(0, cells, self.lowest)
        return tile

    def softmax(self, r0: int, r1: int, block: int, *, need_lse: bool = True) -> Tensor:
        """The tile's row-wise softmax (in its buffer); its [n] log-sum-exp goes to ``self.tile_lse``.

        The log-sum-exp comes from the fused softmax: ``lse = max - log(max probability)``
        (the largest probability is ``1 / sum exp(x - max)``, at least 1 / width: well
        conditioned), two cheap reductions instead of a separate exp pass.
        """
        tile = self.logits(r0, r1, block)
        top = tile.amax(1) if need_lse else None
        if self.in_place:
            torch.ops.aten._softmax.out(tile, 1, False, out=tile)
        else:
            tile = torch.softmax(tile, 1)
        if need_lse:
            self.tile_lse = top - tile.amax(1).log()
        return tile

    def accumulate(self, gradient: Tensor, r0: int, r1: int, block: int, grad_query: Tensor,
                   grad_candidates: Tensor) -> None:
        """Adds a tile of d loss / d logits into the (unscaled) query and the candidate gradients."""
        c0 = block * self.columns
        c1 = min(self.num_candidates, c0 + self.columns)
        candidates, query = self.candidates[c0:c1], self.query[r0:r1]
        if self.mixed:
            low = self.mm_buffer[: gradient.numel()].view_as(gradient).copy_(gradient)
            grad_query[r0:r1] += torch.mm(low, candidates)
            grad_candidates[c0:c1] += torch.mm(low.t(), query)
        else:
            grad_query[r0:r1].addmm_(gradient, candidates)
            grad_candidates[c0:c1].addmm_(gradient.t(), query)


def _label_cells(labels: Tensor, batch: int, num_candidates: int, rows: int, columns: int, num_blocks: int):
    """A function (row block, column block) -> flat positions, within that tile, of the rows' label cells."""
    row = torch.arange(batch, device=labels.device)
    if num_blocks == 1:  # every row's label is in its row block's one tile
        flat_in_order = (row % rows) * num_candidates + labels
        return lambda row_block, _column_block: flat_in_order[row_block * rows : (row_block + 1) * rows]
    block = labels // columns
    key = (row // rows) * num_blocks + block
    order = torch.argsort(key, stable=True)
    label = labels[order]
    width = torch.clamp(num_candidates - (label // columns) * columns, max=columns)
    flat = (order % rows) * width + label % columns
    bounds = torch.searchsorted(key[order], torch.arange(((batch + rows - 1) // rows) * num_blocks + 1,
                                                         device=labels.device)).tolist()

    def cells(row_block: int, column_block: int) -> Tensor:
        k = row_block * num_blocks + column_block
        return flat[bounds[k] : bounds[k + 1]]

    return cells


def _hard_negative_loss(
    query: Tensor, candidates: Tensor, labels: Tensor | None, positives: Tensor | None, column_bias: Tensor | None,
    label_bias: Tensor | None, row_ids: Tensor | None, column_ids: Tensor | None, scale: float, k: int, coef: Tensor,
    rows: int, columns: int, compute_dtype: torch.dtype, acc_dtype: torch.dtype,
) -> Tensor:
    """Softmax over each row's positive and its k highest-scoring candidates (selected tile by tile, no grad)."""
    batch, num_candidates = query.shape[0], candidates.shape[0]
    available = num_candidates - (1 if labels is not None else 0)
    k = min(k, available)
    plan = _Plan(scale, rows, columns, compute_dtype, acc_dtype)
    with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
        query_mm = (query.detach().to(acc_dtype) * scale).to(compute_dtype)
        bias = None if column_bias is None else column_bias.detach().to(acc_dtype)
        tiles = _Tiles(query_mm, candidates.detach().to(compute_dtype), bias, labels, row_ids, column_ids, plan)
        tiles.lowest = -math.inf  # left-out cells rank below every real candidate; picked only when k exceeds those
        chosen = torch.empty(batch, max(k, 0), dtype=torch.int64, device=query.device)
        valid = torch.empty(batch, max(k, 0), dtype=torch.bool, device=query.device)
        for r0, r1 in tiles.row_blocks():
            best_values = best_index = None
            for block in range(tiles.num_column_blocks if k > 0 else 0):
                tile = tiles.logits(r0, r1, block)
                values, index = tile.topk(min(k, tile.shape[1]), dim=1)
                index += block * columns
                if best_values is not None:
                    merged = torch.cat([best_values, values], 1)
                    values, where = merged.topk(min(k, merged.shape[1]), dim=1)
                    index = torch.cat([best_index, index], 1).gather(1, where)
                best_values, best_index = values, index
            if k > 0:
                chosen[r0:r1] = best_index
                valid[r0:r1] = best_values > -math.inf
    # the small [B, k + 1] softmax with autograd
    with torch.autocast(query.device.type, enabled=False):
        query_acc = query.to(compute_dtype).to(acc_dtype) * scale
        cands = candidates.to(compute_dtype).to(acc_dtype)
        own = cands[labels] if positives is None else positives.to(compute_dtype).to(acc_dtype)
        positive = (query_acc * own).sum(1)
        if column_bias is not None and labels is not None:
            positive = positive + column_bias.detach().to(acc_dtype)[labels]
        if label_bias is not None:
            positive = positive + label_bias.detach().to(acc_dtype)
        negative = torch.bmm(cands[chosen], query_acc.unsqueeze(2)).squeeze(2)
        if column_bias is not None:
            negative = negative + column_bias.detach().to(acc_dtype)[chosen]
        negative = negative.masked_fill(~valid, torch.finfo(acc_dtype).min)
        logits = torch.cat([positive.unsqueeze(1), negative], 1)
        per_row = torch.logsumexp(logits, 1) - positive
    return (coef * per_row).sum()


def _row_coefficients(batch: int, sample_weight: Tensor | None, reduction: str, dtype: torch.dtype,
                      device: torch.device) -> Tensor:
    """[B] weight of each row's loss in the scalar: w / B ("mean") or w ("sum")."""
    coef = (torch.ones(batch, dtype=dtype, device=device) if sample_weight is None
            else sample_weight.detach().to(device=device, dtype=dtype).clone())
    return coef.div_(max(batch, 1)) if reduction == "mean" else coef


def _compute_dtype(query: Tensor, candidates: Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's when it is on for the device, else the inputs' promoted dtype."""
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(query.dtype, candidates.dtype)


def _accumulation_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if compute_dtype in (torch.bfloat16, torch.float16) else compute_dtype


def _check(query, candidates, labels, positives, column_bias, label_bias, row_ids, column_ids, temperature,
           num_hard_negatives, sample_weight, reduction, row_block, column_block) -> tuple[int, int, int]:
    if query.dim() != 2:
        raise ValueError(f"query must be a [batch, dim] matrix, got shape {list(query.shape)}")
    batch, dim = query.shape
    if candidates.dim() != 2 or candidates.shape[1] != dim:
        raise ValueError(f"candidates must be a [num_candidates, {dim}] matrix, got shape {list(candidates.shape)}")
    num_candidates = candidates.shape[0]
    if (labels is None) == (positives is None):
        raise ValueError("give labels (positives among the candidates) or positives ([batch, dim]), exactly one")
    if positives is not None and tuple(positives.shape) != (batch, dim):
        raise ValueError(f"positives must have shape [{batch}, {dim}], got {list(positives.shape)}")
    if labels is not None:
        _vector(labels, batch, "labels")
        if labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be an integer tensor of indices, got {labels.dtype}")
    for name, value, size in (("column_bias", column_bias, num_candidates), ("label_bias", label_bias, batch),
                              ("row_ids", row_ids, batch), ("column_ids", column_ids, num_candidates),
                              ("sample_weight", sample_weight, batch)):
        _vector(value, size, name)
    if (row_ids is None) != (column_ids is None):
        raise ValueError("row_ids and column_ids go together (accidental-hit masking needs both)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if num_hard_negatives is not None and num_hard_negatives < 1:
        raise ValueError(f"num_hard_negatives must be ≥ 1 or None, got {num_hard_negatives}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    for name, value in (("row_block", row_block), ("column_block", column_block)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    return batch, dim, num_candidates


def _vector(value: Tensor | None, size: int, name: str) -> None:
    if value is not None and tuple(value.shape) != (size,):
        raise ValueError(f"{name} must have shape [{size}], got {list(value.shape)}")


__all__ = ["CPU_COLUMN_BLOCK", "CPU_TILE_ELEMENTS", "GPU_TILE_ELEMENTS", "blocked_softmax_loss", "block_sizes"]
