"""The one model path against the code before it: same figures, speed not lower (issue 14).

Trains W1 (TFRS tutorial and towerrec default), W2 (the deep-retrieval towers) and W3 (TFRS
tutorial GRU, best SASRec) with the code of a BASE commit and with the current code, in the same
run, alternating old and new (``--repeats`` each, so both see the same machine load), and
reports for each workload: the config hashes (equal: the same configuration), the test metrics
under both protocols (identical for the same seed), and the median training examples/s of each
side with their ratio. The base commit's code is taken with ``git archive``; both sides use this
virtual environment.

    .venv/bin/python benchmarks/path_compare.py --base cee218a --repeats 3

Writes benchmarks/results/path_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_DATA, RESULTS, machine, machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {  # name -> (kind, preset name or config path inside the checkout)
    "W1 TFRS tutorial": ("preset", "w1-tutorial"),
    "W1 towerrec default": ("preset", "default"),
    "W2 deep-retrieval towers (w2)": ("preset", "w2"),
    "W3 TFRS tutorial GRU": ("config", "configs/w3_tutorial_gru.toml"),
    "W3 best SASRec": ("config", "configs/w3_sasrec.toml"),
}
RUN_ONE = """
import json, sys, tempfile, warnings
from pathlib import Path
warnings.simplefilter("ignore")
root, kind, spec, data_dir = sys.argv[1:5]
from towerrec.runs import train_run
if kind == "preset":
    from towerrec.presets import preset
    config = preset(spec)
else:
    from towerrec.config import load_config
    config = load_config(Path(root) / spec)
config = config.replace(data={"data_dir": data_dir})
with tempfile.TemporaryDirectory() as tmp:
    result = train_run(config, runs_root=Path(tmp), retrain=True, progress=False, log=lambda *a: None)
print(json.dumps({"hash": config.hash(), "examples_per_s": result.metrics.get("examples_per_s"),
                  "train_seconds": result.metrics.get("train_seconds"), "test": result.metrics["test"]}))
"""


def run_one(checkout: Path, workload: str, data_dir: Path) -> dict:
    kind, spec = WORKLOADS[workload]
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", RUN_ONE, str(checkout), kind, spec, str(data_dir)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{workload} at {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_difference(a: dict, b: dict) -> float:
    return max(abs(a[p][m] - b[p][m]) for p in a for m in a[p])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="cee218a", help="the commit before the one model path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="a subset of the workloads")
    parser.add_argument("--rewrite", action="store_true", help="rewrite the .md (and derived fields) from the "
                                                                "committed .json without training")
    args = parser.parse_args()
    if args.rewrite:
        write_results(json.loads((RESULTS / "path_compare.json").read_text()), "path_compare")
        return
    base_sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True,
                              text=True, check=True).stdout.strip()
    head_sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "base"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        for workload in args.only or WORKLOADS:
            runs = {"base": [], "new": []}
            for _ in range(args.repeats):
                runs["base"].append(run_one(old, workload, args.data_dir))
                runs["new"].append(run_one(ROOT, workload, args.data_dir))
            old_run, new_run = runs["base"][0], runs["new"][0]
            old_eps = median(r["examples_per_s"] for r in runs["base"])
            new_eps = median(r["examples_per_s"] for r in runs["new"])
            row = {
                "workload": workload,
                "config_hash": {"base": old_run["hash"], "new": new_run["hash"]},
                "same_config": old_run["hash"] == new_run["hash"],
                "test_metrics": {"base": old_run["test"], "new": new_run["test"]},
                "max_metric_difference": max_difference(old_run["test"], new_run["test"]),
                "examples_per_s": {"base": [r["examples_per_s"] for r in runs["base"]],
                                   "new": [r["examples_per_s"] for r in runs["new"]]},
                "examples_per_s_median": {"base": old_eps, "new": new_eps},
                "speed_ratio_new_over_base": new_eps / old_eps,
            }
            rows.append(row)
            print(f"{workload}: metrics differ by at most {row['max_metric_difference']:.2g}, "
                  f"{old_eps:,.0f} -> {new_eps:,.0f} examples/s ({row['speed_ratio_new_over_base']:.2f}x)", flush=True)
    payload = {
        "what": "the one model path (issue 14) against the code before it, same data, seeds and protocol",
        "protocol": "MovieLens-100K; each workload's own split and seed (W1/W2: random 80/20 seed 42; W3: the TFRS "
                    "sequence protocol); test split, full catalogue, both protocols; speed: examples/s of "
                    f"{args.repeats} alternating runs per side (median, and best: the run least disturbed by "
                    "other load on a shared machine)",
        "base": base_sha, "new": head_sha, "machine": machine(), "repeats": args.repeats, "rows": rows,
    }
    write_results(payload, "path_compare" if not args.only else "path_compare_partial")


def write_results(payload: dict, name: str) -> None:
    """Add the best-run figures, then write ``name``.json and ``name``.md under benchmarks/results."""
    for row in payload["rows"]:
        best = {side: max(values) for side, values in row["examples_per_s"].items()}
        row["examples_per_s_best"] = best
        row["speed_ratio_best_new_over_base"] = best["new"] / best["base"]
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# The one model path against {payload['base']}", "",
             f"Code at {payload['new']} vs {payload['base']} (before issue 14), alternating runs in one session "
             f"({payload['repeats']} each). {machine_line(payload['machine'])} Regenerate: "
             "`.venv/bin/python benchmarks/path_compare.py`.", "",
             "| workload | same config | test metrics (max difference) | examples/s before (median / best) | "
             "after (median / best) | ratio (median / best) |",
             "|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        med, best = row["examples_per_s_median"], row["examples_per_s_best"]
        lines.append(f"| {row['workload']} | {'yes' if row['same_config'] else 'NO'} | "
                     f"{row['max_metric_difference']:.2g} | {med['base']:,.0f} / {best['base']:,.0f} | "
                     f"{med['new']:,.0f} / {best['new']:,.0f} | {row['speed_ratio_new_over_base']:.2f} / "
                     f"{row['speed_ratio_best_new_over_base']:.2f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
