"""Task speed: the softmax kernels at catalogue scale, and ``towerrec.tasks.Retrieval`` in a plain loop vs ``towerrec train``.

Part 1 — kernels (``--kernels``). One forward + backward of the in-batch softmax over U unique
candidates of a batch of B rows (random embeddings, std 0.3, every candidate the positive of at
least one row, accidental-hit removal on), three ways, interleaved per repeat:

* ``blocked``: :func:`towerrec.tasks.blocked_softmax.blocked_softmax_loss` with its default tiles
  (the cache-blocked kernel; never materialises [B, U]);
* ``materialised``: the fused [B, U] kernel of :mod:`towerrec.tasks.unique_softmax` (the default
  below ``MATERIALISED_MAX_LOGITS``; the only kernel before the blocked one);
* ``bxb``: the plain B x B softmax, ``F.cross_entropy`` over ``q @ c[labels].T`` (float32, dim 32).

Batches 256 to 8192, U from ~200 to 8,000 (ML-100K batches of 8192 hold ~1,500 distinct
movies; a 50k-item catalogue ~7,500), dims 32 and 64, float32 and bfloat16 inputs (the
``materialised`` kernel then runs in bfloat16 throughout), 1 and 2 threads. Figures are
medians of ``--kernel-repeats`` (milliseconds per forward + backward); speed-ups are ratios
of the medians of this one run.

Part 2 — W1 (``--w1``).

Workload: the ``w1-tutorial`` preset (TFRS basic retrieval) on MovieLens-100K: random 80/20
split (seed 42), user_id embedding as the query tower, movie-title embedding as the candidate
tower, dim 32, uniform(-0.05, 0.05) init, batch 8192, Adagrad lr 0.1 (Keras's initial
accumulator 0.1, eps 1e-7), SUM reduction, no logQ, no accidental-hit removal, 3 epochs, seed 42.

Three ways to train W1, interleaved (a and b in alternating order, then c), each repeated
``--repeats`` times (c: ``--bxb-repeats``):

(a) ``plain-loop-fast``: a hand-written PyTorch loop (nn.Embedding towers, torch.optim.Adagrad)
    calling ``Retrieval(...)(query, candidates, candidate_ids=ids)``: the task deduplicates
    the batch and takes the exact unique-candidate path on its own;
(b) ``towerrec-train``: ``towerrec.runs.train_run`` on the preset (what ``towerrec train`` runs);
(c) ``plain-loop-bxb``: loop (a) calling the task without ``candidate_ids`` (the B x B softmax).

Speed is training examples/s: training examples x epochs / seconds spent in training epochs
(evaluation and data preparation excluded; the trainer measures the same way). Each figure is the
median over repeats; the ratio (a)/(b) is the ratio of the two medians of this one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/task_speed.py --kernels --w1 --repeats 7

Writes benchmarks/results/task_speed.json and .md (a part not run keeps its previous results; kernel
rows of settings not run again are kept).
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
import torch.nn.functional as F
from torch import nn

from _common import DEFAULT_DATA, RESULTS, machine, median
from towerrec.data import load_dataset, split_random
from towerrec.presets import preset
from towerrec.runs import train_run
from towerrec.tasks import Retrieval
from towerrec.tasks.blocked_softmax import blocked_softmax_loss, block_sizes
from towerrec.tasks.unique_softmax import MATERIALISED_MAX_LOGITS, _UniqueSoftmaxLoss

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

KERNEL_SHAPES = ((256, 200), (512, 400), (1024, 500), (1024, 1000), (4096, 1500), (4096, 4000), (8192, 1500),
                 (8192, 4000), (8192, 7500))


def kernel_inputs(batch: int, num_unique: int, dim: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Random embeddings, [B] labels with every one of the U candidates used, counts, log counts."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(num_unique), torch.randint(0, num_unique, (batch - num_unique,), generator=gen)])
    labels = labels[torch.randperm(batch, generator=gen)]
    log_counts = torch.bincount(labels, minlength=num_unique).float().log()
    return {"query": (torch.randn(batch, dim, generator=gen) * 0.3).to(dtype).requires_grad_(True),
            "candidates": (torch.randn(num_unique, dim, generator=gen) * 0.3).to(dtype).requires_grad_(True),
            "labels": labels, "log_counts": log_counts}


def kernel_step(method: str, x: dict) -> None:
    """One forward + backward of ``method`` on the inputs of :func:`kernel_inputs`."""
    query, candidates, labels, log_counts = x["query"], x["candidates"], x["labels"], x["log_counts"]
    if method == "blocked":
        loss = blocked_softmax_loss(query, candidates, labels, column_bias=log_counts, label_bias=-log_counts[labels])
    elif method == "materialised":
        dtype = query.dtype
        per_row = _UniqueSoftmaxLoss.apply(query, candidates, labels, log_counts.to(dtype), -log_counts[labels].to(dtype),
                                           1.0)
        loss = per_row.mean()
    else:  # the plain B x B softmax with hits masked
        logits = query @ candidates[labels].T
        hit = labels[:, None] == labels[None, :]
        hit.fill_diagonal_(False)
        loss = F.cross_entropy(logits.masked_fill(hit, torch.finfo(logits.dtype).min), torch.arange(len(labels)))
    loss.backward()
    query.grad = candidates.grad = None


def run_kernels(repeats: int, shapes, configs, threads_list) -> list[dict]:
    """Milliseconds per forward + backward of each kernel, medians over interleaved repeats.

    ``configs``: (dtype name, dim) pairs, e.g. [("float32", 32), ("bfloat16", 32)].
    """
    rows = []
    default_threads = torch.get_num_threads()
    for threads in threads_list:
        torch.set_num_threads(threads)
        for dtype_name, dim in configs:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
            for batch, num_unique in shapes:
                x = kernel_inputs(batch, num_unique, dim, dtype)
                methods = ["blocked", "materialised"] + (["bxb"] if dtype_name == "float32" and dim == 32 else [])
                times: dict[str, list[float]] = {m: [] for m in methods}
                for m in methods:
                    kernel_step(m, x)  # warm-up
                for repeat in range(repeats):
                    for m in (methods if repeat % 2 == 0 else methods[::-1]):
                        started = time.perf_counter()
                        kernel_step(m, x)
                        times[m].append((time.perf_counter() - started) * 1e3)
                ms = {m: round(median(v), 3) for m, v in times.items()}
                row_block, column_block = block_sizes(batch, num_unique, "cpu")
                row = {"threads": threads, "dtype": dtype_name, "dim": dim, "batch": batch, "unique": num_unique,
                       "logits": batch * num_unique, "tile": [row_block, column_block], "ms": ms,
                       "speedup_blocked_vs_materialised": round(ms["materialised"] / ms["blocked"], 2)}
                if "bxb" in ms:
                    row["speedup_blocked_vs_bxb"] = round(ms["bxb"] / ms["blocked"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    torch.set_num_threads(default_threads)
    return rows


def kernels_markdown(part: dict) -> list[str]:
    lines = ["## Softmax kernels: ms per forward + backward (median), B rows x U unique candidates", "",
             part["protocol"], "",
             f"Default: the blocked kernel above {part['materialised_max_logits']:,} logits (B x U), the "
             "materialised one below (bfloat16 inputs upcast to float32 there; the bfloat16 rows below time the "
             "materialised kernel in bfloat16 throughout, softmax included, as it ran before the blocked one).", "",
             "| threads | dtype | dim | B | U | tile (rows x cols) | blocked ms | materialised ms | B x B ms "
             "| blocked speed-up vs materialised | vs B x B |",
             "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in part["rows"]:
        ms = r["ms"]
        bxb = f"{ms['bxb']:.1f}" if "bxb" in ms else "-"
        vs_bxb = f"{r['speedup_blocked_vs_bxb']}x" if "speedup_blocked_vs_bxb" in r else "-"
        lines.append(f"| {r['threads']} | {r['dtype']} | {r['dim']} | {r['batch']} | {r['unique']} | "
                     f"{r['tile'][0]} x {r['tile'][1]} | {ms['blocked']:.1f} | {ms['materialised']:.1f} | {bxb} | "
                     f"{r['speedup_blocked_vs_materialised']}x | {vs_bxb} |")
    return lines + [""]


def w1_markdown(part: dict) -> list[str]:
    speed = part["examples_per_s_median"]
    return ["## W1: plain loop with tasks.Retrieval vs `towerrec train` (examples/s, median)", "", part["protocol"], "",
            "| run | examples/s |", "|---|---:|", *[f"| {k} | {v:,.0f} |" for k, v in speed.items()], "",
            f"plain loop / towerrec train: {part['ratio_plain_loop_fast_over_towerrec_train']}x; "
            f"plain loop / B x B loop: {part['ratio_plain_loop_fast_over_bxb']}x.", ""]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--kernels", action="store_true", help="run part 1 (softmax kernels)")
    parser.add_argument("--w1", action="store_true", help="run part 2 (W1 plain loop vs towerrec train)")
    parser.add_argument("--kernel-repeats", type=int, default=5)
    parser.add_argument("--kernel-threads", default="1,2")
    parser.add_argument("--kernel-configs", default="float32:32,float32:64,bfloat16:32,bfloat16:64",
                        help="dtype:dim pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bxb-repeats", type=int, default=3, help="repeats of (c), the slow B x B loop (0: skip)")
    args = parser.parse_args()
    if not (args.kernels or args.w1):
        parser.error("choose --kernels and/or --w1")
    path = RESULTS / "task_speed.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if "examples_per_s_median" in previous:  # the file from before part 1 existed: all of it is part 2
        previous = {"w1": previous}
    payload = {"machine": machine(), "kernels": previous.get("kernels"), "w1": previous.get("w1")}
    if args.kernels:
        configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.kernel_configs.split(",")]
        rows = run_kernels(args.kernel_repeats, KERNEL_SHAPES, configs, [int(t) for t in args.kernel_threads.split(",")])
        key = ("threads", "dtype", "dim", "batch", "unique")
        fresh = {tuple(r[k] for k in key) for r in rows}
        kept = [r for r in (previous.get("kernels") or {}).get("rows", []) if tuple(r[k] for k in key) not in fresh]
        rows = sorted(kept + rows, key=lambda r: (r["threads"], r["dtype"], r["dim"], r["logits"]))
        payload["kernels"] = {
            "protocol": ("One forward + backward of the in-batch softmax over U unique candidates (hit removal on); "
                         "blocked = tasks.blocked_softmax (default tiles), materialised = the fused [B, U] kernel of "
                         "tasks.unique_softmax, bxb = F.cross_entropy over the B x B logits (float32, dim 32 only). "
                         f"Methods interleaved (order alternating), median of {args.kernel_repeats} after a warm-up; "
                         "2 shared cores with other jobs running, so absolute figures are noisy: compare within a row."),
            "materialised_max_logits": MATERIALISED_MAX_LOGITS, "rows": rows, "machine": machine(),
        }
    if args.w1:
        payload["w1"] = run_w1(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["# Task speed", ""]
    if payload["kernels"]:
        lines += kernels_markdown(payload["kernels"])
    if payload["w1"]:
        lines += w1_markdown(payload["w1"])
    (RESULTS / "task_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


def run_w1(args) -> dict:
    """Part 2: (a) plain loop with candidate ids, (b) towerrec train, (c) plain B x B loop, interleaved."""
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
    return {
        "workload": {
            "preset": "w1-tutorial", "dataset": "movielens-100k", "split": "tfrs-random, test_fraction 0.2, seed 42",
            "train_examples": len(users), "users": num_users, "titles": num_items, "embedding_dim": DIM,
            "batch_size": BATCH, "optimizer": "Adagrad lr 0.1, initial accumulator 0.1, eps 1e-7", "epochs": EPOCHS,
            "seed": SEED, "task": "Retrieval(logq_correction=False, remove_accidental_hits=False, reduction='sum')",
        },
        "protocol": (
            "(a) plain PyTorch loop calling tasks.Retrieval with candidate_ids (automatic unique-candidate path), "
            "(b) towerrec.runs.train_run on the w1-tutorial preset (= `towerrec train`), (c) loop (a) without "
            "candidate_ids (B x B softmax); interleaved per repeat (a then b, b then a in turn, then c; c in the first "
            "--bxb-repeats repeats only). examples/s = train examples x epochs / "
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


if __name__ == "__main__":
    main()
