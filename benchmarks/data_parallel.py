"""Data-parallel speed: N processes x 1 thread (``towerrec train --nproc N``) vs 1 process x N threads.

The same config (same global batch, so the same run and loss curve) trains both ways, interleaved
``--repeats`` times (the machine is shared: ratios come from one run, medians of several). Each run
is a fresh ``towerrec train --retrain`` in a scratch runs folder; examples/s is the run's own
training throughput (metrics.json, evaluation excluded), the loss curve its history.jsonl.

    python benchmarks/data_parallel.py configs/w1_basic.toml --data-dir ../shared/datasets [--repeats 3]

:func:`compare` is the function benchmarks/scale.py calls for its "1 vs 2 processes" section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def train_once(config: str, runs: Path, *, processes: int, threads: int, data_dir: str | None = None,
               epochs: int | None = None) -> dict[str, Any]:
    """One fresh ``towerrec train`` (``processes`` x ``threads``): ``{"examples_per_s", "losses"}``."""
    command = [sys.executable, "-m", "towerrec", "train", config, "--runs", str(runs), "--retrain",
               "--nproc", str(processes)]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torchrun keeps a value that is already set
    source = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {"examples_per_s": metrics["examples_per_s"], "losses": losses}


def compare(config: str, *, processes: int = 2, repeats: int = 3, data_dir: str | None = None,
            epochs: int | None = None) -> dict[str, Any]:
    """``processes`` x 1 thread vs 1 process x ``processes`` threads, interleaved ``repeats`` times.

    Returns:
        ``{"config", "processes", "repeats", "one_process": {"threads", "examples_per_s": [...], "median"},
        "data_parallel": {...}, "speedup": median ratio, "max_loss_difference": the largest |difference|
        between the two loss curves (per epoch, over all repeats), "losses": {...}}``.
    """
    one, many, difference = [], [], 0.0
    curves: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            a = train_once(config, Path(tmp, f"one-{repeat}"), processes=1, threads=processes,
                           data_dir=data_dir, epochs=epochs)
            b = train_once(config, Path(tmp, f"many-{repeat}"), processes=processes, threads=1,
                           data_dir=data_dir, epochs=epochs)
            one.append(a["examples_per_s"])
            many.append(b["examples_per_s"])
            difference = max([difference, *(abs(x - y) for x, y in zip(a["losses"], b["losses"]))])
            curves = {"one_process": a["losses"], "data_parallel": b["losses"]}
    return {
        "config": config, "processes": processes, "repeats": repeats,
        "one_process": {"threads": processes, "examples_per_s": one, "median": statistics.median(one)},
        "data_parallel": {"threads_per_process": 1, "examples_per_s": many, "median": statistics.median(many)},
        "speedup": statistics.median(many) / statistics.median(one),
        "max_loss_difference": difference,
        "losses": curves,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--data-dir")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args()
    result = compare(args.config, processes=args.processes, repeats=args.repeats, data_dir=args.data_dir,
                     epochs=args.epochs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
