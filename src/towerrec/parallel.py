"""Collectives the losses need under data parallelism (``torch.distributed``), and nothing else.

A low-level module: the retrieval task and the sequential model import it to share
in-batch negatives across processes; process-group setup, sharding and launching live
in :mod:`towerrec.train.distributed`. Every function here is a no-op (or the identity)
when ``torch.distributed`` is not initialised or has one process.

**Loss shares.** Under data parallelism each process computes the loss of its slice
of the global batch and DistributedDataParallel AVERAGES the gradients over the
processes. A towerrec loss therefore returns its process's *share*: the global-batch
loss is the mean of the shares over the processes, so the averaged gradient is
exactly the single-process gradient of the global batch, even when the slices have
different sizes (:func:`loss_share`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group (1 when it is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group (0 when ``torch.distributed`` is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def gather_sizes(*sizes: int, device: torch.device | str = "cpu") -> Tensor:
    """Every process's ``sizes``: ``[world, len(sizes)]`` int64 (row r = rank r's values); one all-gather.

    Call it on every process with the same number of values.
    """
    local = torch.tensor(sizes, dtype=torch.int64, device=device)
    if world_size() == 1:
        return local.unsqueeze(0)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.stack(out).cpu()


def all_gather_rows(tensor: Tensor, rows: list[int], *, grad: bool) -> Tensor:
    """Concatenate every process's ``tensor`` along dim 0 (rank order); processes may hold different row counts.

    Args:
        tensor: ``[rows[rank], ...]`` this process's rows (same trailing shape and dtype everywhere).
        rows: every process's row count (from :func:`gather_sizes`).
        grad: gather with gradients: the backward
            sends each process the gradient of the loss with respect to its rows, summed over the
            processes' losses; without it the result is detached.
    Returns:
        ``[sum(rows), ...]``.
    """
    if world_size() == 1:
        return tensor
    width = max(rows)
    pad = width - tensor.shape[0]
    padded = tensor if pad == 0 else torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))])
    if grad:
        parts = list(_AllGatherRows.apply(padded.contiguous()))
    else:
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded.detach().contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, rows)])


class _AllGatherRows(torch.autograd.Function):
    """All-gather with gradients: forward gathers every process's [rows, ...] block; backward sums the
    gradient over the processes (each process's loss reads every block) and keeps this process's block
    (as ``torch.distributed.nn.functional.all_gather``, with one all-reduce, which gloo and NCCL both have)."""

    @staticmethod
    def forward(ctx, tensor):  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        total = torch.stack(grads).contiguous()
        dist.all_reduce(total)
        return total[rank()]


def broadcast_(tensor: Tensor, source: int = 0) -> Tensor:
    """``tensor`` overwritten in place by process ``source``'s (same shape everywhere); returned."""
    if world_size() > 1:
        dist.broadcast(tensor, source)
    return tensor


def loss_share(local_sum: Tensor, rows: Tensor, reduction: Literal["mean", "sum"]) -> Tensor:
    """This process's share of a global-batch loss, from the SUM of its per-row losses.

    The global loss is ``sum over all rows / global rows`` ("mean") or ``sum over all rows``
    ("sum"); the share is ``world * local_sum / global_rows`` or ``world * local_sum``, so the
    mean of the shares over the processes is the global loss and DDP's averaged gradient is
    its gradient. With one process the share is the loss itself.

    Args:
        local_sum: scalar, the sum of this process's per-row losses (0 for an empty slice).
        rows: ``[world]`` every process's row count (from :func:`gather_sizes`).
        reduction: ``"mean"`` or ``"sum"``.
    """
    world = rows.shape[0]
    if reduction == "sum":
        return local_sum * world if world > 1 else local_sum
    total = int(rows.sum())
    return local_sum * (world / max(total, 1))
