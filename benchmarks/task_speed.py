"""Task speed: ``towerrec.tasks.Retrieval`` in a plain PyTorch loop versus ``towerrec train``, on W1.

Workload: the ``w1-tutorial`` preset (TFRS basic retrieval) on MovieLens-100K: random 80/20
split (seed 42), user_id embedding as the query tower, movie-title embedding as the candidate
tower, dim 32, uniform(-0.05, 0.05) init, batch 8192, Adagrad lr 0.1 (Keras's initial
accumulator 0.1, eps 1e-7), SUM reduction, no logQ, no accidental-hit removal, 3 epochs, seed 42.

Three ways to train it, interleaved (a and b in alternating order, then c), each repeated
``--repeats`` times (c: ``--bxb-repeats``):

(a) ``plain-loop-fast``: a hand-written PyTorch loop (nn.Embedding towers, torch.optim.Adagrad)
    calling ``Retrieval(...)(query, candidates, candidate_ids=ids)``: the task deduplicates
    the batch and takes the exact unique-candidate path on its own;
(b) ``towerrec-train``: ``towerrec.runs.train_run`` on the preset (what ``towerrec train`` runs);
(c) ``plain-loop-bxb``: loop (a) calling the task without ``candidate_ids`` (the B x B softmax).

Speed is training examples/s: training examples x epochs / seconds spent in training epochs
(evaluation and data preparation excluded; the trainer measures the same way). Each figure is the
median over repeats; the ratio (a)/(b) is the ratio of the two medians of this one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/task_speed.py --repeats 7

Writes benchmarks/results/task_speed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import DEFAULT_DATA, RESULTS, machine, median
from towerrec.data import load_dataset, split_random
from towerrec.presets import preset
from towerrec.runs import train_run
from towerrec.tasks import Retrieval

SEED, DIM, BATCH, EPOCHS, LEARNING_RATE = 42, 32, 8192, 3, 0.1


def plain_loop_data(dataset) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Training split as ([n] user index, [n] title index, number of users, number of titles)."""
    train = split_random(dataset.interactions, test_fraction=0.2, seed=SEED).train
    user_vocabulary = np.unique(train["user_id"].to_numpy())
    titles = dataset.items.select("item_id", "title").sort("item_id")
    title_vocabulary, title_of_item = np.unique(titles["title"].to_numpy(), return_inverse=True)
    item_ids = titles["item_id"].to_numpy()
    users = np.searchsorted(user_vocabulary, train["user_id"].to_numpy())
    items = title_of_item[np.searchsorted(item_ids, train["item_id"].to_numpy())]
    return torch.from_numpy(users), torch.from_numpy(items), len(user_vocabulary), len(title_vocabulary)


def plain_loop(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int, *, with_ids: bool) -> dict:
    """Trains W1 by hand: two nn.Embedding towers, Adagrad, ``towerrec.tasks.Retrieval``."""
    torch.manual_seed(SEED)
    query_tower, candidate_tower = nn.Embedding(num_users, DIM), nn.Embedding(num_items, DIM)
    for tower in (query_tower, candidate_tower):
        nn.init.uniform_(tower.weight, -0.05, 0.05)
    parameters = [*query_tower.parameters(), *candidate_tower.parameters()]
    optimizer = torch.optim.Adagrad(parameters, lr=LEARNING_RATE, initial_accumulator_value=0.1, eps=1e-7)
    task = Retrieval(logq_correction=False, remove_accidental_hits=False, reduction="sum")
    n, seconds, losses = len(users), 0.0, []
    for epoch in range(1, EPOCHS + 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 1_000_003 + epoch))
        started = time.perf_counter()
        total = 0.0
        for start in range(0, n, BATCH):
            index = order[start : start + BATCH]
            query, candidates = query_tower(users[index]), candidate_tower(items[index])
            loss = task(query, candidates, candidate_ids=items[index]) if with_ids else task(query, candidates)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        seconds += time.perf_counter() - started
        losses.append(total / math.ceil(n / BATCH))
    return {"examples_per_s": n * EPOCHS / seconds, "train_seconds": seconds, "epoch_mean_loss": losses}


def towerrec_train(dataset, data_dir: Path) -> dict:
    """``towerrec train`` on the w1-tutorial preset (through its Python entry point)."""
    config = preset("w1-tutorial").replace(data={"data_dir": str(data_dir)})
    with tempfile.TemporaryDirectory() as runs:
        metrics = train_run(config, runs_root=Path(runs), retrain=True, progress=False, dataset=dataset,
                            log=lambda *_: None).metrics
    return {"examples_per_s": metrics["examples_per_s"], "train_seconds": metrics["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bxb-repeats", type=int, default=3, help="repeats of (c), the slow B x B loop (0: skip)")
    args = parser.parse_args()

    dataset = load_dataset("movielens-100k", args.data_dir, progress=False)
    users, items, num_users, num_items = plain_loop_data(dataset)
    runs: dict[str, list[dict]] = {"plain-loop-fast": [], "towerrec-train": [], "plain-loop-bxb": []}
    for repeat in range(args.repeats):
        fast_first = repeat % 2 == 0  # alternate the order of (a) and (b): neither always runs after (c)
        if fast_first:
            runs["plain-loop-fast"].append(plain_loop(users, items, num_users, num_items, with_ids=True))
        runs["towerrec-train"].append(towerrec_train(dataset, args.data_dir))
        if not fast_first:
            runs["plain-loop-fast"].append(plain_loop(users, items, num_users, num_items, with_ids=True))
        if repeat < args.bxb_repeats:
            runs["plain-loop-bxb"].append(plain_loop(users, items, num_users, num_items, with_ids=False))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]['examples_per_s']:,.0f}/s" for k, v in runs.items()
                                                  if len(v) == repeat + 1))

    speed = {k: median([r["examples_per_s"] for r in v]) for k, v in runs.items() if v}
    fast, bxb = runs["plain-loop-fast"][0]["epoch_mean_loss"], (runs["plain-loop-bxb"] or [{}])[0].get("epoch_mean_loss")
    payload = {
        "workload": {
            "preset": "w1-tutorial", "dataset": "movielens-100k", "split": "tfrs-random, test_fraction 0.2, seed 42",
            "train_examples": len(users), "users": num_users, "titles": num_items, "embedding_dim": DIM,
            "batch_size": BATCH, "optimizer": "Adagrad lr 0.1, initial accumulator 0.1, eps 1e-7", "epochs": EPOCHS,
            "seed": SEED, "task": "Retrieval(logq_correction=False, remove_accidental_hits=False, reduction='sum')",
        },
        "protocol": (
            "(a) plain PyTorch loop calling tasks.Retrieval with candidate_ids (automatic unique-candidate path), "
            "(b) towerrec.runs.train_run on the w1-tutorial preset (= `towerrec train`), (c) loop (a) without "
            "candidate_ids (B x B softmax); interleaved per repeat (a then b, b then a in turn, then c; c in the first --bxb-repeats repeats only). examples/s = train examples x epochs / "
            "seconds in training epochs (evaluation and data preparation excluded). Figures are medians over repeats; "
            "ratios are ratios of the medians of this one run."
        ),
        "repeats": {k: len(v) for k, v in runs.items()},
        "machine": machine(),
        "examples_per_s_median": {k: round(v, 1) for k, v in speed.items()},
        "ratio_plain_loop_fast_over_towerrec_train": round(speed["plain-loop-fast"] / speed["towerrec-train"], 3),
        "ratio_plain_loop_fast_over_bxb": round(speed["plain-loop-fast"] / speed["plain-loop-bxb"], 2) if bxb else None,
        "epoch_mean_loss_first_repeat": {"plain-loop-fast": [round(x, 4) for x in fast],
                                         "plain-loop-bxb": None if bxb is None else [round(x, 4) for x in bxb]},
        "runs": {k: [{key: round(val, 3) if isinstance(val, float) else val for key, val in r.items()
                      if key != "epoch_mean_loss"} for r in v] for k, v in runs.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "task_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: payload[k] for k in ("examples_per_s_median", "ratio_plain_loop_fast_over_towerrec_train",
                                                "ratio_plain_loop_fast_over_bxb", "epoch_mean_loss_first_repeat")},
                     indent=2))


if __name__ == "__main__":
    main()
