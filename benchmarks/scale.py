"""Scale benchmark: approximate (FAISS) vs exact retrieval over a large catalogue, and a big training run.

Part 1 — index. A synthetic catalogue of N items x d dims (default 1M x 64),
shaped like trained two-tower embeddings: unit vectors around 2,000 cluster
centres (a mixture, as real item embeddings are; isotropic Gaussian noise in
64-d is the worst case for any ANN index and is available with
``--catalogue gaussian``). Queries are held out: fresh draws from the same
mixture, never catalogue rows. For brute force (torch), HNSW and IVF (FAISS):
build time, index memory (RSS growth while building and size on disk),
single-query QPS with 1 and 8 concurrent client threads, and recall@100 of
each index against brute force over the held-out queries.

Part 2 — training. A synthetic MovieLens-shaped dataset of 10M interactions
(towerrec.data.synthetic), one epoch of the default two-tower trainer in a
fresh process: examples/s and the process's peak RSS.

    .venv/bin/python benchmarks/scale.py                 # 1M x 64 and 10M interactions (~15 min on 2 cores)
    .venv/bin/python benchmarks/scale.py --items 100000 --interactions 1000000   # quick look

Writes benchmarks/results/scale.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from _common import machine, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from towerrec.index import BruteForceIndex, FaissIndex  # noqa: E402

K = 100


def catalogue(kind: str, n: int, d: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[n, d] unit item vectors and [queries, d] held-out unit query vectors."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        items = rng.standard_normal((n, d), dtype=np.float32)
        query = rng.standard_normal((queries, d), dtype=np.float32)
    else:
        centres = rng.standard_normal((2000, d), dtype=np.float32)
        items = np.empty((n, d), dtype=np.float32)
        for start in range(0, n, 200_000):
            stop = min(n, start + 200_000)
            items[start:stop] = centres[rng.integers(0, len(centres), stop - start)]
            items[start:stop] += 0.6 * rng.standard_normal((stop - start, d), dtype=np.float32)
        query = centres[rng.integers(0, len(centres), queries)] + 0.6 * rng.standard_normal((queries, d), dtype=np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return items, query.astype(np.float32)


def rss() -> int:
    return psutil.Process().memory_info().rss


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def qps(index, queries: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    """Single-query searches from ``clients`` threads for ``seconds``: queries/s and latency."""
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop:
            q = torch.from_numpy(queries[i % len(queries)][None])
            t = time.perf_counter()
            index.search(q, K)
            latencies[c].append(time.perf_counter() - t)
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = np.array([x for lat in latencies for x in lat])
    return {"qps": round(len(flat) / elapsed, 1), "p50_ms": round(float(np.percentile(flat, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(flat, 99)) * 1e3, 3), "queries": int(len(flat))}


class FlatExact:
    """Exact inner-product search with FAISS's flat index: the strongest CPU brute-force baseline."""

    def __init__(self, items: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(items.shape[1])
        self.index.add(items)

    def search(self, queries: torch.Tensor, k: int):
        _, found = self.index.search(np.ascontiguousarray(queries.numpy()), k)

        class Result:
            indices = torch.from_numpy(found)

        return Result()


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    rows = torch.arange(found.shape[0]).unsqueeze(1) * (1 << 40)
    return float(torch.isin(rows + found, rows + truth).double().mean())


def bench_indexes(args) -> dict:
    import faiss

    items, queries = catalogue(args.catalogue, args.items, args.dim, args.queries)
    ids = np.arange(len(items))
    results: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="towerrec-scale-"))
    configs = [
        ("brute_force", None, {}),
        ("exact_faiss_flat", "flat", {}),
        ("hnsw", "hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}),
        ("ivf", "ivf", {"nlist": args.nlist, "nprobe": args.nprobe}),
    ]
    truth = None
    for name, variant, params in configs:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        torch.set_num_threads(os.cpu_count() or 1)
        gc.collect()
        before = rss()
        started = time.perf_counter()
        if variant is None:
            index = BruteForceIndex(torch.from_numpy(items), ids)
        elif variant == "flat":
            index = FlatExact(items)
        else:
            index = FaissIndex(items, ids, variant=variant, **params)
        build = time.perf_counter() - started
        grown = rss() - before
        if hasattr(index, "save"):
            index.save(tmp / name)
        disk = folder_bytes(tmp / name) if (tmp / name).exists() else items.nbytes
        started = time.perf_counter()
        found = index.search(torch.from_numpy(queries), K).indices
        batch_qps = len(queries) / (time.perf_counter() - started)
        if truth is None:
            truth = found
        entry = {"params": params, "build_s": round(build, 2), "rss_growth_mb": round(grown / 2**20, 1),
                 "disk_mb": round(disk / 2**20, 1), "recall_at_100": round(recall(found, truth), 4),
                 "batch_qps": round(batch_qps, 1)}
        # single-query serving: one thread per request, no intra-op threading
        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)
        entry["clients_1"] = qps(index, queries, 1, args.seconds)
        entry["clients_8"] = qps(index, queries, 8, args.seconds)
        results[name] = entry
        print(name, json.dumps(entry), flush=True)
        del index
    for base in ("brute_force", "exact_faiss_flat"):
        base1, base8 = results[base]["clients_1"]["qps"], results[base]["clients_8"]["qps"]
        for entry in results.values():
            entry[f"speedup_vs_{base}"] = [round(entry["clients_1"]["qps"] / base1, 1),
                                            round(entry["clients_8"]["qps"] / base8, 1)]
    return {"items": args.items, "dim": args.dim, "catalogue": args.catalogue, "queries": args.queries, "k": K,
            "indexes": results}


TRAIN_CHILD = r"""
import json, resource, sys, time
import torch
from towerrec.config import config_from_dict
from towerrec.data.synthetic import make_synthetic
from towerrec.train.models import build_model
from towerrec.train.prepared import prepare
from towerrec.train.trainer import Trainer
users, items, interactions, epochs, batch = (int(x) for x in sys.argv[1:6])
t = time.perf_counter()
dataset = make_synthetic(users, items, interactions, seed=0)
generate = time.perf_counter() - t
config = config_from_dict({
    "name": "scale", "data": {"dataset": "synthetic", "split": "tfrs-random", "test_fraction": 0.01, "seed": 0},
    "model": {"query_features": ["user_id"], "candidate_features": ["item_id"], "embedding_dim": 32, "layer_sizes": [],
              "similarity": "dot"},
    "task": {"temperature": 0.1},
    "train": {"epochs": epochs, "batch_size": batch, "optimizer": "adam", "learning_rate": 0.005, "eval_every": epochs},
    "eval": {"ks": [10, 100]},
})
t = time.perf_counter()
data = prepare(config, dataset, progress=False)
prep = time.perf_counter() - t
model = build_model(config, data)
result = Trainer.from_config(config, data, model, progress=False).fit()
print(json.dumps({
    "generate_s": round(generate, 1), "prepare_s": round(prep, 1), "train_examples": len(data.train),
    "train_s": round(result.train_seconds, 1), "examples_per_s": round(result.examples_per_s, 0),
    "last_epoch": result.history[-1], "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
}))
"""


def bench_training(args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-c", TRAIN_CHILD, str(args.users), str(args.train_items), str(args.interactions),
           str(args.epochs), str(args.batch_size)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update({"users": args.users, "items": args.train_items, "interactions": args.interactions,
                "epochs": args.epochs, "batch_size": args.batch_size, "wall_s": round(time.perf_counter() - started, 1),
                "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 1)})
    print("training", json.dumps(out), flush=True)
    return out


def markdown(payload: dict) -> str:
    lines = ["# Scale benchmark", "", f"Machine: {payload['machine']}", ""]
    if "index" in payload:
        ix = payload["index"]
        lines += [
            f"## Index: {ix['items']:,} items x {ix['dim']} dims ({ix['catalogue']} catalogue), "
            f"{ix['queries']:,} held-out queries, k = {ix['k']}",
            "",
            "| index | params | build s | RSS growth MB | disk MB | recall@100 | QPS 1 client | p50 ms | QPS 8 clients | "
            "speed-up vs BruteForceIndex (1 / 8 clients) | vs FAISS flat (1 / 8) | batched QPS |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e in ix["indexes"].items():
            params = ", ".join(f"{k}={v}" for k, v in e["params"].items() if v is not None) or "-"
            lines.append(
                f"| {name} | {params} | {e['build_s']} | {e['rss_growth_mb']} | {e['disk_mb']} | {e['recall_at_100']:.4f} | "
                f"{e['clients_1']['qps']:,.0f} | {e['clients_1']['p50_ms']} | {e['clients_8']['qps']:,.0f} | "
                f"{e['speedup_vs_brute_force'][0]}x / {e['speedup_vs_brute_force'][1]}x | "
                f"{e['speedup_vs_exact_faiss_flat'][0]}x / {e['speedup_vs_exact_faiss_flat'][1]}x | {e['batch_qps']:,.0f} |"
            )
        lines.append("")
    if "training" in payload:
        t = payload["training"]
        lines += [
            f"## Training: {t['interactions']:,} synthetic interactions ({t['users']:,} users, {t['items']:,} items)",
            "",
            f"Two-tower (user_id / item_id, dim 32), in-batch softmax, batch {t['batch_size']}, {t['epochs']} epoch(s), "
            f"{t['train_examples']:,} train examples: **{t['examples_per_s']:,.0f} examples/s**, "
            f"peak RSS **{t['peak_rss_gb']} GiB** of {t['memory_total_gb']} GiB "
            f"(generate {t['generate_s']} s, prepare {t['prepare_s']} s, train {t['train_s']} s incl. evaluation "
            f"over 1% held out).",
            "",
        ]
    lines.append(f"Command: `{payload['command']}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--catalogue", choices=["clustered", "gaussian"], default="clustered")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per QPS measurement")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, default=512)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=256)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--train-items", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", default="scale", help="result name under benchmarks/results")
    args = parser.parse_args()
    payload: dict = {"machine": machine(), "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:])}
    if not args.skip_index:
        payload["index"] = bench_indexes(args)
    if not args.skip_training:
        payload["training"] = bench_training(args)
    write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
