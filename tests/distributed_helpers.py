"""Workers of tests/test_distributed.py: the same losses in one process (the reference) and in 2 gloo processes.

Every case builds its parameters and its global batch from a seed, so the parent (one process, the
reference) and each worker (its slice) see the same numbers. A worker backs its loss share up, averages
the gradients over the processes as DDP does, and rank 0 saves (mean loss, gradients) for the parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from towerrec import parallel
from towerrec.models.sequential import HISTORY, TARGETS, SequentialModel
from towerrec.tasks.retrieval import Retrieval

GLOBAL_BATCH = 16
NUM_ITEMS = 12  # few items: the global batch repeats them, across the two halves too


class _Pairs(nn.Module):
    """A user tower and an item tower (embedding + linear) under a Retrieval task."""

    def __init__(self, task: Retrieval) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.users = nn.Embedding(20, 8)
        self.items = nn.Embedding(NUM_ITEMS, 8)
        self.project = nn.Linear(8, 8)
        self.task = task


def _pairs_batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(11)
    items = torch.randint(NUM_ITEMS, (GLOBAL_BATCH,), generator=g)
    items[0] = items[GLOBAL_BATCH - 1]  # one item in both halves: a cross-process accidental hit
    counts = torch.bincount(items, minlength=NUM_ITEMS).float() + 1
    return {"user": torch.randint(20, (GLOBAL_BATCH,), generator=g), "item": items,
            "log_q": torch.log(counts / counts.sum())[items], "weight": torch.rand(GLOBAL_BATCH, generator=g) + 0.5}


#: name -> (Retrieval settings, how the loss is called)
RETRIEVAL_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "forward-ids": (dict(temperature=0.5), "forward"),
    "hard-negatives": (dict(temperature=0.5, num_hard_negatives=4), "forward"),
    "no-ids": (dict(temperature=2.0, remove_accidental_hits=False), "forward-no-ids"),
    "unique-sum": (dict(temperature=0.5, reduction="sum"), "unique"),
    "unique-hard-negatives": (dict(num_hard_negatives=3), "unique"),
    "per-worker": (dict(temperature=0.5, global_negatives=False), "forward"),
}
#: row counts of the two processes' slices, per split name (the trainer's tensor_split, or uneven by hand)
SPLITS = {"even": (8, 8), "uneven": (11, 5), "empty": (16, 0)}


def retrieval_loss(case: str, rows: Tensor) -> tuple[Tensor, nn.Module]:
    """The case's loss over the global batch's ``rows`` (all of them in one process, a slice in a worker)."""
    settings, call = RETRIEVAL_CASES[case]
    model = _Pairs(Retrieval(**settings))
    batch = {k: v[rows] for k, v in _pairs_batch().items()}
    query = model.project(model.users(batch["user"]))
    if call == "unique":
        unique, labels, counts = torch.unique(batch["item"], return_inverse=True, return_counts=True)
        log_q = torch.log(torch.bincount(_pairs_batch()["item"], minlength=NUM_ITEMS).float() + 1)[unique] - 5.0
        loss = model.task.unique_candidates_loss(query, model.items(unique), labels, counts, candidate_log_q=log_q,
                                                 sample_weight=batch["weight"], candidate_ids=unique)
    else:
        ids = None if call == "forward-no-ids" else batch["item"]
        loss = model.task(query, model.items(batch["item"]), candidate_ids=ids, candidate_log_q=batch["log_q"],
                          sample_weight=batch["weight"])
    return loss, model


SEQUENTIAL_CASES: dict[str, dict[str, Any]] = {
    "in-batch": dict(objective="in-batch"),
    "in-batch-all-positions": dict(objective="in-batch", all_positions=True),
    "full-softmax": dict(objective="full-softmax"),
    "sampled": dict(objective="sampled", num_sampled=6),
    "sasrec-sum": dict(objective="in-batch", encoder="sasrec", task=dict(reduction="sum", temperature=0.5)),
}


def sequential_loss(case: str, rows: Tensor) -> tuple[Tensor, nn.Module]:
    """A GRU (or SASRec) sequential model's loss over the global batch's ``rows``."""
    settings = dict(SEQUENTIAL_CASES[case])
    task = Retrieval(**settings.pop("task", {}))
    torch.manual_seed(5)
    model = SequentialModel(NUM_ITEMS, embedding_dim=8, max_length=4, task=task, **settings)
    g = torch.Generator().manual_seed(13)
    history = torch.randint(1, NUM_ITEMS + 1, (GLOBAL_BATCH, 4), generator=g)
    history[:3, :2] = 0  # left padding
    targets = torch.randint(1, NUM_ITEMS + 1, (GLOBAL_BATCH, 4), generator=g)
    targets[:3, :2] = 0
    model.set_candidate_counts(torch.bincount(targets[:, -1] - 1, minlength=NUM_ITEMS))
    torch.manual_seed(17)  # the sampled negatives: rank 0's draw is everyone's
    return model.compute_loss({HISTORY: history[rows], TARGETS: targets[rows]}), model


LOSSES = {"retrieval": retrieval_loss, "sequential": sequential_loss}


def reference(kind: str, case: str) -> tuple[float, dict[str, Tensor]]:
    """One process, the whole global batch: (loss, gradient of every parameter)."""
    loss, model = LOSSES[kind](case, torch.arange(GLOBAL_BATCH))
    loss.backward()
    return float(loss), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, world: int, init_file: str, out: str, jobs: list[tuple[str, str, str]]) -> None:
    """One of ``world`` gloo processes: each job (kind, case, split) -> its share, DDP-averaged gradients."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {}
        for kind, case, split in jobs:
            sizes = SPLITS[split]
            start = sum(sizes[:rank])
            share, model = LOSSES[kind](case, torch.arange(start, start + sizes[rank]))
            share.backward()
            grads = {}
            for name, p in model.named_parameters():
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                dist.all_reduce(grad)
                grads[name] = grad / world
            total = share.detach().clone()
            dist.all_reduce(total)
            results[f"{kind}/{case}/{split}"] = (float(total) / world, grads)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def run_workers(tmp_path: Path, jobs: list[tuple[str, str, str]], world: int = 2) -> dict:
    """Spawn the workers; rank 0's results."""
    import torch.multiprocessing as mp

    out = tmp_path / "results.pt"
    mp.spawn(worker, args=(world, str(tmp_path / "init"), str(out), jobs), nprocs=world, join=True)
    assert parallel.world_size() == 1  # the parent stays a single process
    return torch.load(out, weights_only=True)


def sequence_examples(n: int = 41) -> dict[str, Tensor]:
    """``n`` sequential training examples (history, targets) over NUM_ITEMS items."""
    g = torch.Generator().manual_seed(21)
    history = torch.randint(1, NUM_ITEMS + 1, (n, 4), generator=g)
    return {HISTORY: history, TARGETS: torch.randint(1, NUM_ITEMS + 1, (n, 4), generator=g)}


def fit(folder: Path, epochs: int) -> Any:
    """A sequential model trained by the Trainer (global batch 8: 41 examples end on a batch of 1 row, which
    leaves one of 2 processes an empty slice), checkpointing into ``folder``."""
    from towerrec.train.trainer import Trainer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    model = SequentialModel(NUM_ITEMS, embedding_dim=8, max_length=4)
    model.set_candidate_counts(torch.bincount(sequence_examples()[TARGETS][:, -1] - 1, minlength=NUM_ITEMS))
    trainer = Trainer(model, sequence_examples(), epochs=epochs, batch_size=8, optimizer="adam", learning_rate=0.05,
                      checkpoint_dir=folder / "checkpoints", history_path=folder / "history.jsonl", progress=False)
    result = trainer.fit()
    return result, model


def fit_worker(rank: int, world: int, init_file: str, folder: str, epochs: int) -> None:
    """One of ``world`` processes training with :func:`fit`."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        result, model = fit(Path(folder), epochs)
        if rank == 1:  # every process ends with the same history and weights as rank 0
            torch.save({"history": [r["loss"] for r in result.history], "weights": model.state_dict()},
                       Path(folder) / "rank1.pt")
    finally:
        dist.destroy_process_group()


def fit_processes(tmp_path: Path, folder: Path, epochs: int, world: int = 2) -> None:
    import torch.multiprocessing as mp

    mp.spawn(fit_worker, args=(world, str(tmp_path / "fit-init"), str(folder), epochs), nprocs=world, join=True)
