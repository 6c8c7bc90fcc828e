"""Data-parallel training: the process group torchrun describes, rank helpers, the epoch's sharding, DDP, the launcher.

``torchrun --nproc-per-node N -m towerrec train CONFIG`` (or ``towerrec train CONFIG --nproc N``) starts N
processes; each reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins one process group (:func:`init_from_env`: gloo on CPU, NCCL on CUDA).

Semantics (tested with 2 gloo processes):

- **Global batch.** ``[train] batch_size`` is the GLOBAL batch. Every process draws the same permutation
  of the training data per epoch (seeded by (seed, epoch), as in one process), cuts it into the same
  global batches, and takes its contiguous slice of each (:func:`local_slice`; sizes differ by at most
  one). N processes therefore see, step by step, exactly the batches one process sees, so the config
  (and its hash, and the run cache) means the same training whatever the process count, and a
  checkpoint resumes with any process count (at epoch boundaries; its state holds nothing per process).
- **Global negatives.** The retrieval losses all-gather candidate embeddings with gradients
  (:mod:`towerrec.parallel`), so each query is scored against the whole global batch's candidates.
- **Gradients.** The model is wrapped in DistributedDataParallel (:func:`wrap`), which averages the
  gradients; each process's loss is its share of the global loss, so the average is the single-process
  gradient of the global batch (to float rounding: the loss curves of 1 and 2 processes agree to ~1e-6).
- **Writes.** Rank 0 alone takes the run's lock and writes the run folder, checkpoints, history and
  tracking, and evaluates; the others wait (:func:`broadcast_object` carries rank 0's decisions).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from towerrec import parallel
from towerrec.errors import TowerrecError

#: torchrun's environment variables that describe this process's place in the group.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_with_torchrun() -> bool:
    """Whether torchrun (or ``--nproc``) started this process as one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Join the process group torchrun's environment describes (gloo on CPU, NCCL on CUDA).

    Returns:
        True when this call initialised the group (then call :func:`teardown` at the end); False
        when there is no multi-process environment or the group already exists.
    Raises:
        TowerrecError: part of torchrun's environment is missing, or the group cannot be formed.
    """
    if not launched_with_torchrun() or dist.is_initialized():
        return False
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise TowerrecError(f"WORLD_SIZE is set but torchrun's {', '.join(missing)} are not",
                            hint="start data-parallel training with torchrun or towerrec train --nproc N")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise TowerrecError(f"cannot join the data-parallel process group: {exc}") from exc
    return True


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) under torchrun; other devices stay."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched_with_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def is_main_process() -> bool:
    """Rank 0, or a process outside any group: the one that writes files and evaluates."""
    return parallel.rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing in one process)."""
    if parallel.world_size() > 1:
        dist.barrier()


def teardown() -> None:
    """Leave the process group (after :func:`init_from_env` returned True)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: Any, source: int = 0) -> Any:
    """``source``'s ``value`` (any picklable Python object) on every process; ``value`` itself in one process.

    Only towerrec's own values travel (run folders, metrics, early-stopping state), between processes of one
    job; nothing is read from disk.
    """
    if parallel.world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def all_reduce_mean(value: Tensor) -> Tensor:
    """The mean of a tensor over the processes (a copy; the tensor itself in one process)."""
    world = parallel.world_size()
    if world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world


def local_slice(index: Tensor, rank: int, world: int) -> Tensor:
    """This process's contiguous slice of a global batch's ``[G]`` example positions.

    ``torch.tensor_split``: the first ``G mod world`` processes take one extra example; a global batch
    smaller than the world leaves some processes an empty slice (their losses are zero shares).
    """
    return torch.tensor_split(index, world)[rank]


class _LossModule(nn.Module):
    """``forward(batch) = model.compute_loss(batch)``: what DistributedDataParallel wraps (it hooks ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model.compute_loss(batch)


def wrap(model: nn.Module, device: torch.device, probe: dict[str, Tensor]) -> nn.Module:
    """``model``'s loss wrapped in DistributedDataParallel: ``wrapped(batch)`` is ``model.compute_loss(batch)``.

    DDP broadcasts rank 0's parameters and buffers once here (so every process starts equal) and averages
    the gradients in backward; buffers are not re-sent before every step (they are the same catalogue on
    every process). One backward of the loss on ``probe`` (a small batch, the same on every process)
    finds whether the model leaves parameters out of its loss (a weight-0 task, an unused table): only
    then does DDP search the graph for unused parameters each step (``find_unused_parameters``).
    """
    from torch.nn.parallel import DistributedDataParallel

    params = [p for p in model.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.compute_loss(probe).backward()
    unused = any(p.grad is None for p in params)
    for p in params:
        p.grad = None
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    # buffers synced once at construction, not before every forward (the option's name since torch 2.12)
    no_resync = ({"forward_sync_buffers": False}
                 if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                 else {"broadcast_buffers": False})
    return DistributedDataParallel(_LossModule(model), device_ids=ids, find_unused_parameters=unused, **no_resync)


def touch_every_parameter(loss: Tensor, model: nn.Module) -> Tensor:
    """``loss`` plus a zero that depends on every trainable parameter: a process with an empty slice still
    hands DDP a (zero) gradient for each, as the others do."""
    zero = sum((p.sum() for p in model.parameters() if p.requires_grad), loss.new_zeros(()))
    return loss + zero * 0.0


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m towerrec <argv>`` as ``nproc`` processes under ``torch.distributed.run`` (torchrun).

    Returns:
        torchrun's exit status (0 when every process succeeded).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    import towerrec

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--standalone", "-m", "towerrec", *argv]
    source = str(Path(towerrec.__file__).resolve().parents[1])  # the processes run this very towerrec
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.call(command, env=env)
