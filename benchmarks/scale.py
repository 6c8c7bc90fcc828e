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

Part 2 — training. Synthetic MovieLens-shaped data (towerrec.data.synthetic) at
1M, 10M and 30M interactions and 50k and 1M items (users = interactions / 50),
each size in a fresh process: the two-tower id model of the first scale run
(dim 32, batch 8192, Adam) trains for at most --max-seconds / --max-steps after
a warm-up (big sizes measure capped steps, not a full epoch: the results say
which), giving examples/s, peak RSS, and the roofline of each size (FLOPs per
step over the measured torch.mm peak at the step's shapes, fp32 and bf16;
bytes per step over the measured copy bandwidth). Variants at one size
(--variant-size): bf16 when the config offers it. A GPU section when CUDA is
present. Curves: benchmarks/results/scale.png.

    .venv/bin/python benchmarks/scale.py                 # index (~15 min) + training sizes (~15 min on 2 cores)
    .venv/bin/python benchmarks/scale.py --skip-index    # training only; keeps the committed index figures
    .venv/bin/python benchmarks/scale.py --skip-index --sizes 1M/50k --max-seconds 20   # quick look

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

from _common import DEFAULT_DATA, REPO, RESULTS, git_commit_of, machine, write_results

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


SIZE_UNITS = {"k": 1_000, "M": 1_000_000}
DEFAULT_SIZES = "1M/50k,10M/50k,30M/50k,1M/1M,10M/1M"
INTERACTIONS_PER_USER = 50  # users = interactions / 50 (10M -> 200k users, the shape of the first scale run)
LOGITS_PASSES = 7  # fp32 passes over the [B, U] logits of a materialised softmax (see roofline_terms)
OPTIMIZER_PASSES = 9  # fp32 passes over each dense parameter per step (see roofline_terms)


def parse_size(text: str) -> tuple[int, int]:
    """``"10M/50k"`` -> (10_000_000 interactions, 50_000 items)."""
    try:
        n, items = (int(float(part[:-1]) * SIZE_UNITS[part[-1]]) if part[-1] in SIZE_UNITS else int(part)
                    for part in text.split("/"))
    except (ValueError, KeyError):
        raise SystemExit(f"--sizes: {text!r} is not INTERACTIONS/ITEMS such as 10M/50k") from None
    return n, items


def size_label(interactions: int, items: int) -> str:
    def short(x: int) -> str:
        return f"{x / 1e6:g}M" if x >= 1_000_000 else f"{x / 1e3:g}k"

    return f"{short(interactions)}/{short(items)}"


def scale_config(spec: dict) -> dict:
    """The scale run's config: TFRS's basic two-tower (user id / item id, dim 32), in-batch softmax, Adam.

    ``epochs = 2, eval_every = 2``: the first epoch is never evaluated, so the measurement (which stops
    at the end of epoch 1 or at the cap) times training only.
    """
    config = {
        "name": "scale", "data": {"dataset": "synthetic", "split": "tfrs-random", "test_fraction": 0.01, "seed": 0},
        "model": {"query_features": ["user_id"], "candidate_features": ["item_id"], "embedding_dim": spec["dim"],
                  "layer_sizes": [], "similarity": "dot"},
        "task": {"temperature": 0.1},
        "train": {"epochs": 2, "batch_size": spec["batch_size"], "optimizer": "adam", "learning_rate": 0.005,
                  "eval_every": 2},
        "eval": {"ks": [10, 100]},
    }
    for section, values in spec.get("overrides", {}).items():
        config[section] = {**config[section], **values}
    return config


def core_seconds() -> float:
    """The main thread's CPU seconds: about the wall seconds on dedicated cores, which a shared machine's wall
    clock cannot show. The main thread runs every serial part and its share of each parallel region; with
    OMP_WAIT_POLICY=PASSIVE a thread waiting at a barrier sleeps, so waiting is not counted (an imbalance
    between the threads would be, on dedicated cores: the estimate errs high by that), while other
    processes' use of the shared caches inflates it (errs low)."""
    return time.thread_time()


def best_seconds(fn, repeats: int = 5) -> float:
    """The fastest of ``repeats`` calls after one warm-up, in :func:`core_seconds` (dedicated-core seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        t = core_seconds()
        fn()
        times.append(core_seconds() - t)
    return max(min(times), 1e-9)


def measured_matmul(batch: int, unique: int, dim: int, dtype: torch.dtype) -> dict:
    """Seconds of the in-batch softmax's three matmuls at the step's shapes, and the GFLOP/s they reach.

    Forward logits ``[B, d] @ [d, U]``, then the two gradients ``[B, U] @ [U, d]`` (queries) and
    ``[U, B] @ [B, d]`` (candidates): 3 x 2·B·U·d FLOPs.
    """
    q, c = torch.randn(batch, dim, dtype=dtype), torch.randn(unique, dim, dtype=dtype)
    g = torch.randn(batch, unique, dtype=dtype)
    seconds = (best_seconds(lambda: q @ c.T) + best_seconds(lambda: g @ c) + best_seconds(lambda: g.T @ q))
    flops = 3 * 2 * batch * unique * dim
    return {"seconds": seconds, "gflops": flops / seconds / 1e9}


def matmul_ceiling(batch: int, unique: int, dim: int, dtype: torch.dtype) -> dict:
    """The compute ceiling: the softmax's three matmuls at the step's full shapes AND on one cache-sized tile
    (512 rows x 1,024 candidates, the shape a cache-blocked loss multiplies), the faster of the two."""
    full = measured_matmul(batch, unique, dim, dtype)
    tile = measured_matmul(min(batch, 512), min(unique, 1024), dim, dtype)
    return max(full, tile, key=lambda m: m["gflops"])


def refresh_roofline(training: dict) -> None:
    """Re-measure the ceilings in this process and recompute every run's roofline from its stored terms."""
    for r in list(training["runs"]) + [v for v in training["variants"].values() if "roofline" in v]:
        f = r["roofline"]
        bf16 = f["matmul_dtype"] == "bf16"
        batch, unique, dim = r["batch_size"], round(r["unique_candidates_per_batch"]), r["dim"]
        mm32 = matmul_ceiling(batch, unique, dim, torch.float32)
        mm16 = matmul_ceiling(batch, unique, dim, torch.bfloat16)
        bandwidth, exp_rate = measured_bandwidth(), measured_exp_rate()
        f.update(roofline_fields(f, r["examples_per_s"], batch, mm16 if bf16 else mm32, mm32, mm16, bandwidth,
                                 exp_rate))


def roofline_fields(roof: dict, examples_per_s: float, batch: int, peak: dict, mm32: dict, mm16: dict,
                    bandwidth: float, exp_rate: float) -> dict:
    """The roofline of one run: each ceiling's ms per step, the limit, the bound and the measured fraction."""
    terms = {"compute": roof["flops"] / (peak["gflops"] * 1e9), "exp": roof["exponentials"] / exp_rate,
             "memory": (roof["logits_bytes"] + roof["parameter_bytes"]) / (bandwidth * 1e9)}
    bound = max(terms.values())
    return {"matmul_fp32_gflops": round(mm32["gflops"], 1), "matmul_bf16_gflops": round(mm16["gflops"], 1),
            "bandwidth_gbs": round(bandwidth, 1), "exp_per_ns": round(exp_rate / 1e9, 2),
            **{f"{k}_ms": round(1e3 * v, 1) for k, v in terms.items()},
            "limit": max(terms, key=terms.get), "bound_examples_per_s": round(batch / bound, 0),
            "sum_examples_per_s": round(batch / sum(terms.values()), 0),
            "fraction_of_roofline": round(examples_per_s / (batch / bound), 3),
            "achieved_gflops": round(roof["flops"] * examples_per_s / batch / 1e9, 1)}


def measured_bandwidth(mib: int = 256) -> float:
    """GB/s of a large tensor copy (bytes read + bytes written per second): the memory roofline."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src)) / 1e9


def measured_exp_rate(rows: int = 256, columns: int = 1024) -> float:
    """Exponentials per second of ``torch.exp`` on a cache-sized fp32 tile (a softmax's third ceiling)."""
    tile = torch.randn(rows, columns)
    out = torch.empty_like(tile)
    return tile.numel() / best_seconds(lambda: torch.exp(tile, out=out), repeats=20)


def blocked_loss_for(logits: float) -> bool:
    """Whether the unique in-batch softmax takes the cache-blocked kernel at ``logits`` = B x U cells."""
    from towerrec.tasks import unique_softmax

    limit = getattr(unique_softmax, "MATERIALISED_MAX_LOGITS", None)
    return limit is not None and logits > limit


def roofline_terms(batch: int, unique: float, dim: int, parameters: int, touched_rows: float | None,
                   blocked: bool) -> dict:
    """FLOPs, exponentials and bytes of one training step of the id-only two-tower model (a stated model).

    FLOPs: the softmax's three matmuls, 3 x 2·B·U·d (embedding lookups and the optimizer add O(params),
    no matmul). Exponentials: B·U, one per logit. Bytes: a materialised softmax (B·U below the blocked
    kernel's threshold) moves the [B, U] fp32 logits LOGITS_PASSES = 7 times (written by the matmul, read
    and written by the softmax, read for the gradient, read by the two gradient matmuls); the cache-blocked
    kernel keeps its tiles in cache (0 bytes here). The optimizer moves OPTIMIZER_PASSES = 9 x 4 bytes per
    updated parameter (param, grad, two moments read; param and moments written; the gradient zero-filled):
    every parameter with a dense optimizer, the ``touched_rows`` x d of the batch's users and items with a
    sparse one (``touched_rows`` given).
    """
    updated = parameters if touched_rows is None else touched_rows * dim
    return {"flops": 3 * 2 * batch * unique * dim, "exponentials": batch * unique,
            "logits_bytes": 0 if blocked else LOGITS_PASSES * 4 * batch * unique,
            "parameter_bytes": OPTIMIZER_PASSES * 4 * updated, "blocked_loss": blocked,
            "sparse_update": touched_rows is not None}


class _Enough(Exception):
    """Raised by the step meter to end a capped measurement."""


def train_child(spec: dict) -> dict:
    """One scale run in this (fresh) process: generate, prepare, train for the capped steps, measure."""
    import resource

    from towerrec.config import config_from_dict
    from towerrec.data.synthetic import make_synthetic
    from towerrec.train.models import build_model
    from towerrec.train.prepared import prepare
    from towerrec.train.trainer import Callback, Trainer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    process = psutil.Process()

    class StepMeter(Callback):
        """Times each optimizer step (batch end to batch end), samples RSS, ends the run at the cap."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []
            self.losses: list[float] = []
            self.rss: list[int] = []
            self.epoch_record: dict | None = None

        def on_train_begin(self, trainer) -> None:
            self.times.append(time.perf_counter())
            self.cpu.append(core_seconds())

        def on_batch_end(self, trainer, step: int, loss: float) -> None:
            now = time.perf_counter()
            self.times.append(now)
            self.cpu.append(core_seconds())
            self.losses.append(loss)
            self.rss.append(process.memory_info().rss)
            measured = len(self.times) - 1 - spec["warmup"]
            if measured > 0 and (measured >= spec["max_steps"] or
                                 now - self.times[spec["warmup"]] >= spec["max_seconds"]):
                raise _Enough

        def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
            self.epoch_record = record
            raise _Enough

    t = time.perf_counter()
    dataset = make_synthetic(spec["users"], spec["items"], spec["interactions"], seed=0)
    generate = time.perf_counter() - t
    config = config_from_dict(scale_config(spec))
    t = time.perf_counter()
    data = prepare(config, dataset, progress=False)
    prep = time.perf_counter() - t
    del dataset
    gc.collect()
    model = build_model(config, data)
    parameters = sum(p.numel() for p in model.parameters())
    rss_before = process.memory_info().rss
    meter = StepMeter()
    trainer = Trainer.from_config(config, data, model, progress=False, callbacks=[meter],
                                  **({"device": spec["device"]} if spec.get("device") else {}))
    try:
        trainer.fit()
    except _Enough:
        pass
    batch = config.train.batch_size
    n = len(data.train)
    steps_per_epoch = -(-n // batch)
    warm = spec["warmup"]
    measured_steps = len(meter.times) - 1 - warm
    seconds = meter.times[-1] - meter.times[warm]
    full_epoch = meter.epoch_record is not None
    wall_examples_per_s = meter.epoch_record["examples_per_s"] if full_epoch else measured_steps * batch / seconds
    core_s = meter.cpu[-1] - meter.cpu[warm]
    examples_per_s = measured_steps * batch / core_s  # dedicated-core estimate (see core_seconds)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    targets, users = data.train.targets, data.train.user_rows
    starts = range(0, min(n, 20 * batch), batch)
    unique = float(np.mean([len(torch.unique(targets[order[s:s + batch]])) for s in starts]))
    unique_users = float(np.mean([len(torch.unique(users[order[s:s + batch]])) for s in starts]))
    dim = config.model.embedding_dim
    out = {
        "users": spec["users"], "items": spec["items"], "interactions": spec["interactions"],
        "train_examples": n, "batch_size": batch, "dim": dim, "parameters": parameters,
        "threads": torch.get_num_threads(), "overrides": spec.get("overrides", {}),
        "generate_s": round(generate, 1), "prepare_s": round(prep, 1),
        "steps_per_epoch": steps_per_epoch, "warmup_steps": warm, "measured_steps": measured_steps,
        "measured_s": round(seconds, 2), "full_epoch": full_epoch,
        "examples_per_s": round(examples_per_s, 0), "wall_examples_per_s": round(wall_examples_per_s, 0),
        "step_ms_median": round(1e3 * float(np.median(np.diff(meter.cpu[warm:]))), 1),
        "wall_step_ms_median": round(1e3 * float(np.median(np.diff(meter.times[warm:]))), 1),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "losses": [round(x, 5) for x in meter.losses],
        "unique_candidates_per_batch": round(unique, 1),
        "unique_users_per_batch": round(unique_users, 1),
        "rss_before_train_gb": round(rss_before / 2**30, 3),
        "train_rss_max_gb": round(max(meter.rss) / 2**30, 3),
        "train_rss_first_step_gb": round(meter.rss[0] / 2**30, 3),
        "train_rss_last_step_gb": round(meter.rss[-1] / 2**30, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    if spec.get("device", "cpu") == "cpu":
        sparse = config.train.optimizer in ("sparse-adam", "rowwise-adagrad")
        roof = roofline_terms(batch, unique, dim, parameters, unique + unique_users if sparse else None,
                              blocked_loss_for(batch * unique))
        mm32 = matmul_ceiling(batch, round(unique), dim, torch.float32)
        mm16 = matmul_ceiling(batch, round(unique), dim, torch.bfloat16)
        bf16 = getattr(config.train, "precision", "fp32") == "bf16"
        bandwidth, exp_rate = measured_bandwidth(), measured_exp_rate()
        out["roofline"] = {**roof, "matmul_dtype": "bf16" if bf16 else "fp32",
                           **roofline_fields(roof, examples_per_s, batch, mm16 if bf16 else mm32, mm32, mm16,
                                             bandwidth, exp_rate)}
    return out


def run_child(spec: dict) -> dict:
    """``train_child(spec)`` in a fresh Python process (its own peak RSS), with the load average around it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    if spec.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = spec["omp_wait_policy"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"scale run {spec} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(wall_s=round(time.perf_counter() - started, 1), loadavg_before=[round(x, 2) for x in load_before],
               loadavg_after=[round(x, 2) for x in os.getloadavg()])
    print("training", size_label(spec["interactions"], spec["items"]), spec.get("overrides") or "",
          json.dumps({k: v for k, v in out.items() if k != "losses"}), flush=True)
    return out


#: Variants measured at --variant-size beside the default (fp32, dense Adam) row of that size.
VARIANTS = {
    "bf16": {"train": {"precision": "bf16"}},
    "sparse-adam": {"train": {"optimizer": "sparse-adam"}},
    "bf16 + sparse-adam": {"train": {"precision": "bf16", "optimizer": "sparse-adam"}},
}


def config_supports(overrides: dict) -> str | None:
    """None when the scale config accepts ``overrides``; else the config's one-line refusal."""
    from towerrec.config import config_from_dict
    from towerrec.errors import TowerrecError

    try:
        config_from_dict(scale_config({"dim": 32, "batch_size": 8192, "overrides": overrides}))
    except (TowerrecError, TypeError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


def bench_training(args) -> dict:
    base = {"batch_size": args.batch_size, "dim": args.dim_train, "warmup": args.warmup,
            "max_seconds": args.max_seconds, "max_steps": args.max_steps, "threads": args.threads,
            "omp_wait_policy": args.omp_wait_policy}
    runs = []
    if args.variants_only:
        earlier = json.loads((RESULTS / f"{args.out}.json").read_text())["training"]
        runs = earlier["runs"]
        args.sizes = ""
    for text in filter(None, args.sizes.split(",")):
        interactions, items = parse_size(text)
        users = max(1, interactions // INTERACTIONS_PER_USER)
        runs.append(run_child({**base, "users": users, "items": items, "interactions": interactions}))
    variants = {}
    interactions, items = parse_size(args.variant_size)
    users = max(1, interactions // INTERACTIONS_PER_USER)
    for name, overrides in VARIANTS.items():
        refusal = config_supports(overrides)
        if refusal is not None:
            variants[name] = {"overrides": overrides, "unavailable": refusal}
            continue
        variants[name] = run_child({**base, "users": users, "items": items, "interactions": interactions,
                                    "overrides": overrides})
    data_parallel = bench_data_parallel(args)
    if args.variants_only and args.dp_repeats < 1:
        data_parallel = earlier.get("data_parallel", data_parallel)
    gpu = bench_gpu(args, base) if torch.cuda.is_available() else None
    return {"runs": runs, "variants": variants, "data_parallel": data_parallel, "gpu": gpu,
            "variant_size": args.variant_size,
            "max_seconds": args.max_seconds, "max_steps": args.max_steps,
            "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def bench_data_parallel(args) -> dict:
    """2 processes x 1 thread vs 1 process x 2 threads on ``--dp-config`` (benchmarks/data_parallel.py)."""
    try:
        from data_parallel import compare
    except ImportError:
        return {"unavailable": "benchmarks/data_parallel.py (data-parallel training) is not in this tree"}
    if args.dp_repeats < 1:
        return {"unavailable": "--dp-repeats 0"}
    return compare(str(REPO / args.dp_config), processes=2, repeats=args.dp_repeats, data_dir=args.dp_data_dir)


def bench_gpu(args, base: dict) -> dict:
    """W1 tutorial, W3 tutorial GRU and the 10M/50k run on the CUDA device."""
    import tempfile

    from towerrec.config import load_config
    from towerrec.presets import preset
    from towerrec.runs import train_run

    data_dir = str(Path(args.dp_data_dir) / "ml-100k")
    speeds = {}
    for name, config in (("W1 tutorial", preset("w1-tutorial")),
                         ("W3 tutorial GRU", load_config(REPO / "configs" / "w3_tutorial_gru.toml"))):
        with tempfile.TemporaryDirectory() as runs:
            result = train_run(config.replace(data={"data_dir": data_dir}), runs_root=Path(runs), progress=False,
                               device="cuda", log=lambda *_: None)
        speeds[name] = result.metrics["examples_per_s"]
    interactions, items = parse_size("10M/50k")
    run = run_child({**base, "users": interactions // INTERACTIONS_PER_USER, "items": items,
                     "interactions": interactions, "device": "cuda"})
    speeds["10M/50k (capped steps)"] = run["examples_per_s"]
    return {"device": torch.cuda.get_device_name(0), "examples_per_s": speeds, "run_10m": run}


def plot_training(training: dict, path: Path) -> None:
    """Examples/s and peak RSS against interactions, one line per catalogue size (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for items in sorted({r["items"] for r in training["runs"]}):
        rows = sorted((r for r in training["runs"] if r["items"] == items), key=lambda r: r["interactions"])
        x = [r["interactions"] for r in rows]
        label = f"{items:,} items"
        speed.plot(x, [r["examples_per_s"] for r in rows], "o-", label=label)
        if all("roofline" in r for r in rows):
            speed.plot(x, [r["roofline"]["bound_examples_per_s"] for r in rows], "x--", alpha=0.6,
                       label=f"{label}: roofline bound")
        memory.plot(x, [r["peak_rss_gb"] for r in rows], "o-", label=label)
    for ax in (speed, memory):
        ax.set_xscale("log")
        ax.set_xlabel("synthetic interactions")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    speed.set_yscale("log")
    speed.set_ylabel("training examples/s")
    speed.set_title("Throughput (2 threads)")
    memory.axhline(24, color="red", linestyle=":", label="24 GiB")
    memory.set_ylabel("peak RSS, GiB (whole process)")
    memory.set_title("Memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    if "index_from" in payload:
        lines += [f"The index figures are kept from the earlier full run ({payload['index_from']}); "
                  "this run re-measured training only (`--skip-index`).", ""]
    if "training" in payload:
        lines += training_markdown(payload["training"])
    if "roofline_refreshed" in payload:
        lines += ["The roofline ceilings above were re-measured after the runs, in one process "
                  f"(`{payload['roofline_refreshed']}`), with the cache-tile matmul as a compute ceiling.", ""]
    lines.append(f"Command: `{payload['command']}`")
    return "\n".join(lines) + "\n"


def training_markdown(t: dict) -> list[str]:
    """The training section: one row per size, the roofline of each, the variants and the GPU note."""
    lines = [
        "## Training: examples/s and memory vs size",
        "",
        f"Two-tower, user id / item id embeddings (dim {t['runs'][0]['dim']}), in-batch softmax over the batch's "
        f"unique candidates, Adam, batch {t['runs'][0]['batch_size']}, {t['runs'][0]['threads']} threads; "
        f"users = interactions / {INTERACTIONS_PER_USER}. Each size runs in a fresh process. A run trains for at "
        f"most {t['max_seconds']:g} s or {t['max_steps']} steps after {t['runs'][0]['warmup_steps']} warm-up steps: "
        "**capped** rows measured that many steps, not a full epoch (\"full\" rows trained the whole epoch); "
        "memory is flat after the first step (first/last-step RSS below), so an epoch needs the same. "
        "Peak RSS is the whole process's, data generation included. **The machine was shared** (load average "
        "around each run listed): wall-clock examples/s fell with the load, so the headline figure is the "
        "**dedicated-core estimate**: examples / the main thread's CPU seconds (it runs every serial part and "
        f"its share of each parallel region), with OMP_WAIT_POLICY={t['runs'][0].get('omp_wait_policy')} so that "
        "a thread waiting at a barrier sleeps instead of spinning. It errs high by any imbalance between the "
        "threads (waiting is not counted) and low by other processes' use of the shared caches. Step ms are "
        "on the same clock, and so are the roofline's measured peaks.",
        "",
        "| interactions / items | users | examples/s (dedicated cores) | wall examples/s | step ms (median) | "
        "steps measured / per epoch | unique candidates per batch | peak RSS GiB | train RSS first / last step GiB | "
        "generate + prepare s | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in t["runs"]:
        measured = "full" if r["full_epoch"] else f"{r['measured_steps']} / {r['steps_per_epoch']} (capped)"
        lines.append(
            f"| {size_label(r['interactions'], r['items'])} | {r['users']:,} | **{r['examples_per_s']:,.0f}** | "
            f"{r['wall_examples_per_s']:,.0f} | {r['step_ms_median']} | {measured} | {r['unique_candidates_per_batch']:,.0f} | {r['peak_rss_gb']:.2f} | "
            f"{r['train_rss_first_step_gb']:.2f} / {r['train_rss_last_step_gb']:.2f} | "
            f"{r['generate_s'] + r['prepare_s']:.0f} | {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} |")
    lines += ["", "![examples/s and peak RSS vs size](scale.png)", "",
              "## Roofline of each size", "",
              "Three ceilings per step, each from a stated model of the step and a peak measured in the run's own "
              "process: **compute** = the softmax's three matmuls (3 x 2·B·U·d FLOPs) / torch.mm's GFLOP/s at "
              "those three shapes, the faster of the step's full shapes and one 512 x 1,024 cache tile (fp32, or "
              "bf16 for a bf16 run); **exp** = B·U exponentials / torch.exp on a cache-sized "
              "tile; **memory** = bytes / a 256 MiB tensor copy, where bytes are the [B, U] fp32 logits "
              f"({LOGITS_PASSES} passes; 0 with the cache-blocked loss, which keeps its tiles in cache) plus the "
              f"optimizer ({OPTIMIZER_PASSES} passes of 4 bytes per updated parameter: all of them with a dense "
              "optimizer). Roofline examples/s = B / the largest term; \"sum\" = B / the sum of the terms "
              "(the terms run one after another on the same cores).",
              "",
              "| run | GFLOP / step | logits MB / step | optimizer MB / step | matmul GFLOP/s fp32 / bf16 | "
              "exp per ns | copy GB/s | compute / exp / memory ms | limit | measured step ms | roofline examples/s "
              "(sum) | measured / roofline |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    variant_rows = [(f"{t['variant_size']} {name}", v) for name, v in t["variants"].items() if "roofline" in v]
    for label, r in [(size_label(r["interactions"], r["items"]), r) for r in t["runs"]] + variant_rows:
        f = r.get("roofline")
        if not f:
            continue
        lines.append(
            f"| {label} | {f['flops'] / 1e9:.2f} | {f['logits_bytes'] / 1e6:,.0f} | {f['parameter_bytes'] / 1e6:,.0f} | "
            f"{f['matmul_fp32_gflops']:.0f} / {f['matmul_bf16_gflops']:.0f} | {f['exp_per_ns']} | "
            f"{f['bandwidth_gbs']:.1f} | {f['compute_ms']} / {f['exp_ms']} / {f['memory_ms']} | {f['limit']} | "
            f"{r['step_ms_median']} | {f['bound_examples_per_s']:,.0f} ({f['sum_examples_per_s']:,.0f}) | "
            f"{100 * f['fraction_of_roofline']:.0f}% |")
    lines += ["", f"## Variants at {t['variant_size']}", ""]
    for name, v in t["variants"].items():
        if "unavailable" in v:
            lines.append(f"- {name} ({v['overrides']}): not measured: the config refuses it here: {v['unavailable']}")
        else:
            base = next((r for r in t["runs"] if size_label(r["interactions"], r["items"]) == t["variant_size"]), None)
            ratio = f" ({v['examples_per_s'] / base['examples_per_s']:.2f}x the fp32 dense-Adam row)" if base else ""
            loss = ""
            if base:
                step = min(len(v["losses"]), len(base["losses"]))
                loss = (f"; training loss at step {step}: {v['losses'][step - 1]:.4f} "
                        f"(fp32 dense Adam: {base['losses'][step - 1]:.4f})")
            lines.append(f"- {name} ({v['overrides']}): **{v['examples_per_s']:,.0f} examples/s**{ratio}, peak RSS "
                         f"{v['peak_rss_gb']:.2f} GiB, {v['measured_steps']} steps{loss}")
    dp = t.get("data_parallel")
    lines += ["", "## 1 vs 2 processes", ""]
    if dp is None or "unavailable" in dp:
        lines.append(f"Not measured: {(dp or {}).get('unavailable', 'not run')}.")
    else:
        lines.append(
            f"`{dp['config']}` trained {dp['repeats']} times each way, interleaved, same global batch: "
            f"{dp['processes']} processes x 1 thread (`towerrec train --nproc {dp['processes']}`) "
            f"{dp['data_parallel']['median']:,.0f} examples/s vs 1 process x {dp['one_process']['threads']} threads "
            f"{dp['one_process']['median']:,.0f} examples/s: **{dp['speedup']:.2f}x**; the two loss curves differ by at "
            f"most {dp['max_loss_difference']:.2e} (per-epoch losses {dp['losses']}).")
    lines += ["", "## GPU", ""]
    gpu = t.get("gpu")
    if not gpu:
        lines.append("No GPU machine was lent this session (the device tool was not drawn for this task), and "
                     "this machine has no CUDA device: W1, W3 and the 10M run were not measured on a GPU.")
    else:
        lines.append(f"CUDA device: {gpu['device']}.")
        lines += [f"- {name}: {value:,.0f} examples/s" for name, value in gpu["examples_per_s"].items()]
    lines.append("")
    return lines


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
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="training sizes, INTERACTIONS/ITEMS comma-separated (users = interactions / 50)")
    parser.add_argument("--variant-size", default="10M/50k", help="the size the fp32/bf16 variants run at")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="cap on the measured seconds per size (then it measures steps, not an epoch)")
    parser.add_argument("--max-steps", type=int, default=400, help="cap on the measured steps per size")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the measurement starts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: PyTorch's default)")
    parser.add_argument("--dim-train", type=int, default=32, help="embedding dim of the trained model")
    parser.add_argument("--omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY of the runs (PASSIVE: idle threads sleep, so CPU time is work; '' keeps "
                             "the environment's)")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--dp-config", default="configs/w1_basic.toml",
                        help="config of the 1 vs 2 processes comparison (relative to the repository)")
    parser.add_argument("--dp-data-dir", default=str(DEFAULT_DATA), help="data folder for --dp-config and the GPU runs")
    parser.add_argument("--dp-repeats", type=int, default=3, help="interleaved repeats of the 1 vs 2 processes runs")
    parser.add_argument("--skip-index", action="store_true",
                        help="keep the committed index figures (labelled) and measure training only")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--variants-only", action="store_true",
                        help="keep the committed size runs; measure the variants and 1 vs 2 processes again")
    parser.add_argument("--refresh-roofline", action="store_true",
                        help="re-measure the ceilings in this process and recompute the committed runs' rooflines")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="scale", help="result name under benchmarks/results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_child(json.loads(args.child))))
        return
    payload: dict = {"machine": machine(), "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:])}
    if not args.skip_index:
        payload["index"] = bench_indexes(args)
    elif (RESULTS / f"{args.out}.json").is_file():
        earlier = json.loads((RESULTS / f"{args.out}.json").read_text())
        if "index" in earlier:
            payload["index"] = earlier["index"]
            payload["index_from"] = earlier.get("index_from") or git_commit_of(RESULTS / f"{args.out}.json")
    if args.refresh_roofline:
        earlier = json.loads((RESULTS / f"{args.out}.json").read_text())
        payload = {**earlier, "roofline_refreshed": payload["command"]}
        refresh_roofline(payload["training"])
        plot_training(payload["training"], RESULTS / f"{args.out}.png")
        write_results(args.out, payload, markdown(payload))
        return
    if args.variants_only and (RESULTS / f"{args.out}.json").is_file():
        refreshed = json.loads((RESULTS / f"{args.out}.json").read_text()).get("roofline_refreshed")
        if refreshed:
            payload["roofline_refreshed"] = refreshed
    if not args.skip_training:
        payload["training"] = bench_training(args)
        plot_training(payload["training"], RESULTS / f"{args.out}.png")
    write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
