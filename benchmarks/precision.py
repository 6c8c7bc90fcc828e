"""bf16 mixed precision and sparse embedding updates: quality, speed and memory.

Parts (run any; each rewrites its own entry of the results file):

* ``quality``: W1 (configs/w1_basic.toml) and W3 (configs/w3_tutorial_gru.toml) trained at
  ``[train] precision = "fp32"`` and ``"bf16"`` for several training seeds, fp32 and bf16
  runs interleaved: test metrics (mean, spread) and training examples/s (median, and the
  median of the per-seed bf16/fp32 ratios).
* ``dcn``: the ranking DCN (configs/ranking_dcn.toml), matmul-bound: examples/s and test RMSE,
  fp32 vs bf16, interleaved repeats.
* ``gemm``: matmul throughput alone, fp32 vs bf16, on one thread (GFLOP per CPU second).
* ``threads``: a short ranking DCN run per setting (default threads, one thread, and
  ``OMP_WAIT_POLICY=PASSIVE`` with each), fresh processes, interleaved rounds.
* ``sparse``: an embedding-only two-tower model (user table x item table, dim 32, in-batch
  softmax, batch 1024, no MLP) at 100k x 10k, 1M x 100k and 10M x 1M rows; for each
  optimizer (rowwise-adagrad and sparse-adam with sparse gradients; adam and adagrad dense),
  in a fresh subprocess: resident memory after building the model and trainer, peak resident
  memory after the steps, the optimizer state's bytes, and the median step time.

    .venv/bin/python benchmarks/precision.py --part quality --seeds 3
    .venv/bin/python benchmarks/precision.py --part sparse

Writes benchmarks/results/precision.json and .md. The machine is shared: speeds are noisy;
ratios come from interleaved runs in one invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_DATA, REPO, RESULTS, machine, machine_line, median, write_results

SPARSE_SIZES = ((100_000, 10_000), (1_000_000, 100_000), (10_000_000, 1_000_000))  # (users, items)
SPARSE_OPTIMIZERS = ("rowwise-adagrad", "sparse-adam", "adagrad", "adam")
QUALITY = {"W1": ("w1_basic.toml", ("top_10_accuracy", "top_100_accuracy")),
           "W3": ("w3_tutorial_gru.toml", ("top_10_accuracy", "top_100_accuracy"))}


def _train(config_name: str, precision: str, seed: int, data_dir: Path) -> dict[str, Any]:
    from towerrec.config import load_config
    from towerrec.runs import train_run

    config = load_config(REPO / "configs" / config_name)
    config = config.replace(data={"data_dir": str(data_dir)}, train={"precision": precision, "seed": seed})
    with tempfile.TemporaryDirectory() as runs:
        return train_run(config, runs_root=Path(runs), progress=False, log=lambda *_: None).metrics


def _test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    test = metrics["test"]
    if "seen_excluded" in test:  # retrieval: TFRS's protocol (seen items kept) is these configs' own
        test = test.get("seen_included", test["seen_excluded"])
    return {k: float(v) for k, v in test.items() if isinstance(v, (int, float))}


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def part_quality(seeds: int, data_dir: Path, save: Any = None) -> dict[str, Any]:
    """Seed by seed, each workload's fp32/bf16 pair (order alternating); ``save(result)`` after every pair."""
    runs = {w: {"fp32": [], "bf16": []} for w in QUALITY}
    out: dict[str, Any] = {}
    for seed in range(42, 42 + seeds):
        for workload, (config_name, names) in QUALITY.items():
            for precision in ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32"):
                runs[workload][precision].append(_train(config_name, precision, seed, data_dir))
                print(workload, precision, seed, runs[workload][precision][-1]["examples_per_s"], flush=True)
            pairs = runs[workload]
            entry: dict[str, Any] = {"config": f"configs/{config_name}", "seeds": list(range(42, seed + 1))}
            for precision, results in pairs.items():
                tests = [_test_metrics(r) for r in results]
                entry[precision] = {
                    "examples_per_s": median([r["examples_per_s"] for r in results]),
                    **{name: _summary([t[name] for t in tests]) for name in names},
                }
            entry["speedup_median_of_ratios"] = median(
                [b["examples_per_s"] / f["examples_per_s"] for f, b in zip(pairs["fp32"], pairs["bf16"])])
            out[workload] = entry
            if save is not None:
                save(out)
    return out


def part_dcn(repeats: int, data_dir: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"fp32": [], "bf16": []}
    for i in range(repeats):
        for precision in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            runs[precision].append(_train("ranking_dcn.toml", precision, 42, data_dir))
            print("DCN", precision, runs[precision][-1]["examples_per_s"], flush=True)
    entry: dict[str, Any] = {"config": "configs/ranking_dcn.toml", "repeats": repeats}
    for precision, results in runs.items():
        entry[precision] = {"examples_per_s": median([r["examples_per_s"] for r in results]),
                            "test_rmse": _summary([float(r["test"]["rmse"]) for r in results])}
    entry["speedup_median_of_ratios"] = median(
        [b["examples_per_s"] / f["examples_per_s"] for f, b in zip(runs["fp32"], runs["bf16"])])
    return entry


GEMM_SHAPES = ((2048, 2048, 2048), (8192, 192, 192), (8192, 32, 1500))  # square; DCN's MLP; W1's logits


def part_gemm(repeats: int = 7) -> list[dict[str, Any]]:
    """Matmul throughput fp32 vs bf16 on one thread, in GFLOP per CPU second (median of ``repeats``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for m, k, n in GEMM_SHAPES:
            a, b = torch.randn(m, k), torch.randn(k, n)
            rates = {}
            for name, (x, y) in {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}.items():
                x @ y
                seconds = []
                for _ in range(repeats):
                    started = time.process_time()
                    x @ y
                    seconds.append(time.process_time() - started)
                rates[name] = 2 * m * k * n / median(seconds) / 1e9
            rows.append({"shape": [m, k, n], "fp32_gflops": rates["fp32"], "bf16_gflops": rates["bf16"]})
    finally:
        torch.set_num_threads(before)
    return rows


# -- sparse embeddings: one subprocess per (size, optimizer) -------------------------------

def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sparse_child(users: int, items: int, optimizer: str, steps: int, batch: int) -> dict[str, Any]:
    """Build the model and trainer, run ``steps`` steps, report memory and step times (runs in a subprocess)."""
    import torch

    torch.set_num_threads(1)
    from towerrec.features.spec import InputSpec
    from towerrec.models.tower import Tower
    from towerrec.models.two_tower import TwoTowerModel
    from towerrec.tasks import Retrieval
    from towerrec.train.trainer import Callback, Trainer

    torch.manual_seed(0)
    baseline = _rss_bytes()
    model = TwoTowerModel(Tower([InputSpec("user_id", "id", users, 1)], 32),
                          Tower([InputSpec("item_id", "id", items, 1)], 32), similarity="dot", task=Retrieval())
    n = batch * steps
    data = {"user_id": torch.randint(0, users, (n,)), "item_id": torch.randint(0, items, (n,))}

    class Times(Callback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []

        def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
            self.stamps.append((time.perf_counter(), time.process_time()))

    times = Times()
    trainer = Trainer(model, data, epochs=1, batch_size=batch, optimizer=optimizer, callbacks=[times],
                      progress=False)
    built = _rss_bytes()
    step_cpu: list[float] = []
    inner_step = trainer.optimizer.step

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        out = inner_step(*args, **kwargs)
        step_cpu.append(time.process_time() - started)
        return out

    trainer.optimizer.step = timed_step  # type: ignore[method-assign]
    trainer.fit()
    state = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # drop the first step (warm-up); CPU seconds (one thread) are steadier than wall time on a shared machine
    wall = [b[0] - a[0] for a, b in zip(times.stamps, times.stamps[1:])][1:]
    cpu = [b[1] - a[1] for a, b in zip(times.stamps, times.stamps[1:])][1:]
    return {"users": users, "items": items, "optimizer": optimizer, "sparse_gradients": trainer.sparse_embeddings,
            "parameter_bytes": params, "optimizer_state_bytes": state,
            "rss_before_model_bytes": baseline, "rss_built_bytes": built,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "step_wall_seconds_median": median(wall), "step_cpu_seconds_median": median(cpu),
            "optimizer_step_cpu_seconds_median": median(step_cpu[2:]), "steps_timed": len(cpu), "batch": batch}


def part_sparse(steps: int, batch: int, sizes: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    rows = []
    for users, items in sizes:
        for optimizer in SPARSE_OPTIMIZERS:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", f"{users},{items},{optimizer},{steps},{batch}"],
                capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                rows.append({"users": users, "items": items, "optimizer": optimizer,
                             "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


# -- threads: DCN examples/s under thread counts and OpenMP wait policies ----------------

THREAD_SETTINGS = (("default", {}), ("1 thread", {"OMP_NUM_THREADS": "1"}),
                   ("PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
                   ("PASSIVE, 1 thread", {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}))


def threads_child(epochs: int, data_dir: str) -> dict[str, Any]:
    """One short DCN training run in this process's thread settings (runs in a subprocess)."""
    import torch

    from towerrec.config import load_config
    from towerrec.runs import train_run

    config = load_config(REPO / "configs" / "ranking_dcn.toml").replace(
        data={"data_dir": data_dir}, train={"epochs": epochs, "eval_every": epochs})
    with tempfile.TemporaryDirectory() as runs:
        metrics = train_run(config, runs_root=Path(runs), progress=False, log=lambda *_: None).metrics
    return {"examples_per_s": metrics["examples_per_s"], "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads()}


def part_threads(repeats: int, epochs: int, data_dir: Path) -> dict[str, Any]:
    import os

    runs: dict[str, list[float]] = {name: [] for name, _ in THREAD_SETTINGS}
    for _ in range(repeats):
        for name, env in THREAD_SETTINGS:
            full = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
            proc = subprocess.run([sys.executable, __file__, "--threads-child", f"{epochs},{data_dir}"],
                                  capture_output=True, text=True, cwd=REPO, env={**full, **env})
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1])["examples_per_s"])
            print(name, runs[name][-1], flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return {"config": "configs/ranking_dcn.toml", "epochs": epochs, "repeats": repeats, "load_average_after": load,
            "examples_per_s_median": {name: median(v) for name, v in runs.items()}, "runs": runs}


# -- the report ---------------------------------------------------------------------

def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    lines = ["# bf16 mixed precision and sparse embedding updates", "",
             machine_line(payload["machine"]) + " The machine is shared with other jobs: speeds are noisy; "
             "fp32 and bf16 runs were interleaved and ratios are medians of per-pair ratios.", ""]
    quality = payload.get("quality")
    if quality:
        lines += ["## bf16 vs fp32: quality and speed (`[train] precision`)", "",
                  "Test metrics over training seeds (mean ± sd; TFRS protocol, seen items kept), "
                  "training examples/s (median).", "",
                  "| workload | precision | top-10 | top-100 | examples/s | bf16/fp32 speed |",
                  "|---|---|---|---|---|---|"]
        for workload, entry in quality.items():
            for precision in ("fp32", "bf16"):
                e = entry[precision]
                speed = f"{entry['speedup_median_of_ratios']:.2f}x" if precision == "bf16" else ""
                n = len(entry["seeds"])
                lines.append(f"| {workload} ({n} seed{'s' if n > 1 else ''}) | {precision} | "
                             f"{e['top_10_accuracy']['mean']:.4f} ± {e['top_10_accuracy']['sd']:.4f} | "
                             f"{e['top_100_accuracy']['mean']:.4f} ± {e['top_100_accuracy']['sd']:.4f} | "
                             f"{e['examples_per_s']:,.0f} | {speed} |")
        lines.append("")
    pairs = payload.get("single_pairs")
    if pairs:
        lines += ["## Single fp32/bf16 pairs (recorded from the run log)", "", pairs["note"], "",
                  "| workload | precision | examples/s | test top-10 | test top-100 |", "|---|---|---|---|---|"]
        for row in pairs["rows"]:
            top10, top100 = row.get("top_10_accuracy"), row.get("top_100_accuracy")
            lines.append(f"| {row['workload']} | {row['precision']} | {row['examples_per_s']:,.0f} | "
                         f"{'' if top10 is None else f'{top10:.4f}'} | {'' if top100 is None else f'{top100:.4f}'} |")
        lines.append("")
    gemm = payload.get("gemm")
    if gemm:
        lines += ["## Matmul alone: fp32 vs bf16 (one thread, GFLOP per CPU second)", "",
                  "| m x k x n | fp32 | bf16 | bf16/fp32 |", "|---|---|---|---|"]
        lines += [f"| {' x '.join(map(str, r['shape']))} | {r['fp32_gflops']:.0f} | {r['bf16_gflops']:.0f} | "
                  f"{r['bf16_gflops'] / r['fp32_gflops']:.1f}x |" for r in gemm]
        lines.append("")
    dcn = payload.get("dcn")
    if dcn:
        lines += ["## Ranking DCN (matmul-bound): fp32 vs bf16", "",
                  "| precision | test RMSE | examples/s | bf16/fp32 speed |", "|---|---|---|---|"]
        for precision in ("fp32", "bf16"):
            e = dcn[precision]
            speed = f"{dcn['speedup_median_of_ratios']:.2f}x" if precision == "bf16" else ""
            lines.append(f"| {precision} | {e['test_rmse']['mean']:.4f} | {e['examples_per_s']:,.0f} | {speed} |")
        lines.append("")
    sparse = payload.get("sparse")
    if sparse:
        lines += ["## Sparse embedding updates: memory and step time vs table size", "",
                  "Embedding-only two-tower model (dim 32, in-batch softmax, batch "
                  f"{sparse[0].get('batch', '?')}), each row a fresh process on one thread; step time in CPU "
                  "seconds (median over the steps after the first; the optimizer step alone beside it) "
                  "because the shared machine makes wall time swing. Memory in GiB: parameters, "
                  "optimizer state, resident memory once model + trainer are built, peak resident memory "
                  "after the steps (includes gradients and the Python/torch runtime, "
                  f"~{_gib(sparse[0].get('rss_before_model_bytes', 0))} GiB before the model).", "",
                  "| users x items | optimizer | sparse grads | params | opt. state | RSS built | peak RSS | "
                  "step CPU ms | of which optimizer | step wall ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sparse:
            size = f"{r['users']:,} x {r['items']:,}"
            if "error" in r:
                lines.append(f"| {size} | {r['optimizer']} | | | | | | | | failed: {r['error']} |")
                continue
            lines.append(f"| {size} | {r['optimizer']} | {r['sparse_gradients']} | {_gib(r['parameter_bytes'])} | "
                         f"{_gib(r['optimizer_state_bytes'])} | {_gib(r['rss_built_bytes'])} | "
                         f"{_gib(r['peak_rss_bytes'])} | {1000 * r['step_cpu_seconds_median']:.1f} | "
                         f"{1000 * r['optimizer_step_cpu_seconds_median']:.1f} | "
                         f"{1000 * r['step_wall_seconds_median']:.0f} |")
        lines.append("")
    threads = payload.get("threads")
    if threads:
        lines += ["## Threads and OpenMP wait policy (ranking DCN)", "",
                  f"{threads['epochs']} epochs of configs/ranking_dcn.toml, each setting a fresh process, "
                  f"{threads['repeats']} interleaved rounds (load average {threads['load_average_after']} "
                  "after: the cores were shared).", "", "| setting | examples/s (median) |", "|---|---|"]
        lines += [f"| {name} | {value:,.0f} |" for name, value in threads["examples_per_s_median"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("quality", "dcn", "gemm", "sparse", "threads"), action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--epochs", type=int, default=2, help="threads part: DCN epochs per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        users, items, optimizer, steps, batch = args.child.split(",")
        print(json.dumps(sparse_child(int(users), int(items), optimizer, int(steps), int(batch))))
        return
    if args.threads_child:
        epochs, data_dir = args.threads_child.split(",", 1)
        print(json.dumps(threads_child(int(epochs), data_dir)))
        return
    def save(part: str, result: Any) -> None:
        path = RESULTS / "precision.json"  # read at write time: parts may run in separate invocations
        payload = json.loads(path.read_text()) if path.is_file() else {}
        payload.update({"machine": machine(), part: result})
        write_results("precision", payload, markdown(payload))

    for part in args.part or ("quality", "dcn", "gemm", "sparse", "threads"):
        if part == "quality":
            result: Any = part_quality(args.seeds, args.data_dir, save=lambda r: save("quality", r))
        elif part == "dcn":
            result = part_dcn(args.repeats, args.data_dir)
        elif part == "gemm":
            result = part_gemm()
        elif part == "threads":
            result = part_threads(args.repeats, args.epochs, args.data_dir)
        else:
            result = part_sparse(args.steps, args.batch, SPARSE_SIZES)
        save(part, result)


if __name__ == "__main__":
    main()
