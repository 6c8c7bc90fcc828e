"""Training speed beside TFRS: W1 tutorial, W2 every feature set, W3 tutorial GRU, interleaved.

For each workload and repeat, the TFRS 0.7.7 peer (../shared/peer, run from a scratch copy) and
towerrec train one right after the other on MovieLens-100K, with the same thread count on both sides
(torch.set_num_threads(T); TF_NUM_INTRAOP_THREADS = TF_NUM_INTEROP_THREADS = OMP_NUM_THREADS = T), so
both see the same machine load. Reported: each side's training examples/s (TFRS: examples x epochs
/ fit seconds; towerrec: the trainer's epoch time, evaluation excluded, as in w1/w2/w3), the median
of the per-pair ratios (each ratio from two adjacent runs), and the 1-minute load average around
every run (the machine is shared: ratios are what to compare).

Workloads (the configs of the W1/W2/W3 benchmarks):
- W1: preset ``w1-tutorial`` (3 epochs, batch 8192, Adagrad) vs ``tfrs_basic_ml100k.py 3``;
- W2: preset ``w2`` per feature set (20 epochs, layers 64 32, batch 2048) vs ``tfrs_deep.py 20 FEATURES 64,32``;
- W3: ``configs/w3_tutorial_gru.toml`` (3 epochs, batch 12800) vs ``tfrs_sequential.py 3 SEED``.

    .venv/bin/python benchmarks/speed_vs_tfrs.py --repeats 3 --tfrs-python /tmp/tfrs/bin/python
    .venv/bin/python benchmarks/speed_vs_tfrs.py --workloads w2 --feature-sets none,timestamp --repeats 1

Writes benchmarks/results/speed_vs_tfrs.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import DEFAULT_DATA, REPO, machine, machine_line, median, run_tfrs, write_results
from towerrec.config import load_config
from towerrec.data.registry import load_dataset
from towerrec.experiments.runner import ExperimentConfig, run_configs
from towerrec.presets import preset
from towerrec.runs import train_run

FEATURE_SETS = ["none", "timestamp", "movie_title_text", "timestamp,movie_title_text",
                "timestamp,movie_title_text,movie_genres"]
GOALS = {"w1": 10.0, "w2": 5.0, "w3": 10.0}  # issue 17: towerrec / TFRS examples/s


def towerrec_speed(config, dataset) -> float:
    """Training examples/s of one fresh towerrec run of ``config`` (evaluation excluded)."""
    with tempfile.TemporaryDirectory() as runs:
        result = train_run(config, runs_root=Path(runs), retrain=True, progress=False, dataset=dataset,
                           log=lambda *_: None)
    return float(result.metrics["examples_per_s"])


def workloads(args, data_dir: Path) -> list[dict]:
    """(name, goal, towerrec config, TFRS script and arguments) of every workload asked for."""
    out = []
    if "w1" in args.workloads:
        out.append({"workload": "w1", "label": "W1 tutorial (user id / title, Adagrad, batch 8192, 3 epochs)",
                    "config": preset("w1-tutorial").replace(data={"data_dir": str(data_dir)}),
                    "tfrs": ("tfrs_basic_ml100k.py", ["3"], {})})
    if "w2" in args.workloads:
        exp = ExperimentConfig(name="speed", feature_sets=tuple(args.feature_sets.split(";")), num_epochs=args.w2_epochs,
                               overrides={"data": {"data_dir": str(data_dir)}})
        for label, config in run_configs(exp):
            feats = "none" if label == "none" else label.replace("+", ",")
            out.append({"workload": "w2", "label": f"W2 {label} (layers 64 32, batch 2048, {args.w2_epochs} epochs)",
                        "config": config,
                        "tfrs": ("tfrs_deep.py", [str(args.w2_epochs), feats, "64,32"], {"DATASET": data_dir.name})})
    if "w3" in args.workloads:
        config = load_config(REPO / "configs" / "w3_tutorial_gru.toml").replace(data={"data_dir": str(data_dir)})
        out.append({"workload": "w3", "label": "W3 tutorial GRU (batch 12800, Adagrad, 3 epochs)", "config": config,
                    "tfrs": ("tfrs_sequential.py", ["3", "0"], {"DATASET": data_dir.name})})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads on both sides")
    parser.add_argument("--workloads", default="w1,w2,w3", help="comma list of w1, w2, w3")
    parser.add_argument("--feature-sets", default=";".join(FEATURE_SETS),
                        help="W2 feature sets, ';'-separated (each a comma list, or none)")
    parser.add_argument("--w2-epochs", type=int, default=20)
    parser.add_argument("--tfrs-python", default="/tmp/tfrs/bin/python")
    parser.add_argument("--out", default="speed_vs_tfrs")
    args = parser.parse_args()
    if not Path(args.tfrs_python).exists():
        raise SystemExit(f"--tfrs-python {args.tfrs_python} does not exist (see ../shared/peer/README.md)")
    torch.set_num_threads(args.threads)
    threads = str(args.threads)
    tf_env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads, "OMP_NUM_THREADS": threads}
    dataset = load_dataset("movielens-100k", args.data_dir, progress=False)
    rows = []
    for w in workloads(args, args.data_dir):
        script, script_args, env = w["tfrs"]
        pairs = []
        for _ in range(args.repeats):
            load = os.getloadavg()[0]
            started = time.perf_counter()
            tfrs = run_tfrs(script, script_args, python=args.tfrs_python, data_root=args.data_dir.parent,
                            env={**env, **tf_env})["train_examples_per_s"]
            mid = os.getloadavg()[0]
            ours = towerrec_speed(w["config"], dataset)
            pairs.append({"tfrs": round(tfrs, 1), "towerrec": round(ours, 1), "ratio": round(ours / tfrs, 2),
                          "loadavg": [round(load, 2), round(mid, 2), round(os.getloadavg()[0], 2)],
                          "wall_s": round(time.perf_counter() - started, 1)})
            print(w["label"], pairs[-1], flush=True)
        rows.append({"workload": w["workload"], "label": w["label"], "pairs": pairs,
                     "tfrs_examples_per_s": median([p["tfrs"] for p in pairs]),
                     "towerrec_examples_per_s": median([p["towerrec"] for p in pairs]),
                     "ratio_median": median([p["ratio"] for p in pairs]), "goal": GOALS[w["workload"]]})
    payload = {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "rows": rows,
               "command": "python benchmarks/speed_vs_tfrs.py " + " ".join(sys.argv[1:])}
    write_results(args.out, payload, render(payload))


def render(p: dict) -> str:
    lines = [
        "# Training speed beside TFRS 0.7.7 (MovieLens-100K)",
        "",
        f"{machine_line(p['machine'])} {p['threads']} threads on both sides (torch.set_num_threads; "
        "TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS / OMP_NUM_THREADS). Each repeat runs TFRS then towerrec "
        f"back to back; ratio = towerrec / TFRS examples/s of the pair, median of {p['repeats']} pairs. The machine "
        "was shared with other work: the 1-minute load average before TFRS, between, and after towerrec is listed "
        "per pair. Regenerate: `.venv/bin/python benchmarks/speed_vs_tfrs.py`.",
        "",
        "| workload | TFRS examples/s | towerrec examples/s | towerrec / TFRS (median of pairs) | goal | pairs (ratio @ load) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in p["rows"]:
        met = "met" if r["ratio_median"] >= r["goal"] else "MISSED"
        pairs = ", ".join(f"{x['ratio']}x @ {x['loadavg'][0]:.1f}" for x in r["pairs"])
        lines.append(f"| {r['label']} | {r['tfrs_examples_per_s']:,.0f} | {r['towerrec_examples_per_s']:,.0f} | "
                     f"**{r['ratio_median']:.1f}x** | >= {r['goal']:g}x: {met} | {pairs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
