"""W1 benchmark: the TFRS basic-retrieval workload on MovieLens-100K, side by side with TFRS.

Protocol: random 80/20 split (seed 42), test split, full catalogue, top-K
accuracy at K = 1, 5, 10, 50, 100, under both protocols (seen items excluded,
and TFRS's: not excluded). Speed: training examples/s of the tutorial-faithful
config vs TFRS's, one run each, interleaved, median of --repeats.

    .venv/bin/python benchmarks/w1_basic.py --repeats 3 --tfrs-python /tmp/tfrs/bin/python

Writes benchmarks/results/w1_basic.json and .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import (
    DEFAULT_DATA,
    earlier_results,
    machine,
    matmul_peak_gflops,
    median,
    metrics_only_note,
    run_tfrs,
    write_results,
)
from towerrec.data.registry import load_dataset
from towerrec.presets import preset
from towerrec.runs import train_run
from towerrec.train.evaluate import evaluate_examples
from towerrec.train.prepared import prepare

KS = (1, 5, 10, 50, 100)
TFRS_PUBLISHED = {"top_10_accuracy": 0.0216, "top_100_accuracy": 0.2421}  # TFRS 0.7.7, ../shared/peer/results


def train_once(name: str, dataset, data_dir: Path, **data_options):
    config = preset(name).replace(data={"data_dir": str(data_dir), **data_options})
    with tempfile.TemporaryDirectory() as runs:
        return train_run(config, runs_root=Path(runs), progress=False, dataset=dataset, log=lambda *_: None)


def unique_per_batch(config, data) -> float:
    """Average distinct candidates per training batch (sets the FLOPs of the unique softmax)."""
    targets = data.train.targets
    b = config.train.batch_size
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    counts = [len(torch.unique(targets[order[s : s + b]])) for s in range(0, len(targets), b)]
    return sum(counts) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tfrs-python", default="/tmp/tfrs/bin/python", help="python with TFRS 0.7.7 (see ../shared/peer/README.md)")
    parser.add_argument("--skip-tfrs", action="store_true")
    parser.add_argument("--metrics-only", action="store_true",
                        help="retrain towerrec's models for their quality figures only; keep the committed TFRS and "
                             "speed figures (labelled as from the earlier run)")
    parser.add_argument("--duplicate-titles", choices=("merge", "keep"), default="merge",
                        help="MovieLens duplicate titles: merged (towerrec's default, 1,664 items) or kept apart "
                             "(1,682 items, as before the merge became the default)")
    args = parser.parse_args()

    dataset = load_dataset("movielens-100k", args.data_dir, progress=False)
    if args.metrics_only:
        rerun_metrics(load_dataset("movielens-100k", args.data_dir, progress=False,
                                   duplicate_titles=args.duplicate_titles), args.data_dir, args.duplicate_titles)
        return
    use_tfrs = not args.skip_tfrs and Path(args.tfrs_python).exists()

    tfrs_runs, tutorial_runs = [], []
    for _ in range(args.repeats):
        if use_tfrs:
            tfrs_runs.append(run_tfrs("tfrs_basic_ml100k.py", ["3"], python=args.tfrs_python, data_root=args.data_dir.parent))
        tutorial_runs.append(train_once("w1-tutorial", dataset, args.data_dir))

    models = {name: train_once(name, dataset, args.data_dir) for name in ("popularity", "ease", "default")}

    # Evaluation speed: 20k test queries over the full catalogue, seen items excluded.
    config = preset("default").replace(data={"data_dir": str(args.data_dir)})
    data = prepare(config, dataset, progress=False)
    from towerrec.train.models import build_model

    model = build_model(config, data)
    timings = []
    for _ in range(5):
        t = time.perf_counter()
        evaluate_examples(model, data, data.test, ks=KS, exclude_seen=True)
        timings.append(time.perf_counter() - t)

    # Roofline of the tutorial config: FLOPs of the softmax matmuls per step vs the measured matmul peak.
    tut_cfg = preset("w1-tutorial").replace(data={"data_dir": str(args.data_dir)})
    tut_data = prepare(tut_cfg, dataset, progress=False)
    u = unique_per_batch(tut_cfg, tut_data)
    b, d = tut_cfg.train.batch_size, tut_cfg.model.embedding_dim
    steps = -(-len(tut_data.train) // b) * tut_cfg.train.epochs
    flops_per_step = 6 * b * u * d  # forward logits + two gradient matmuls
    tutorial_seconds = median([r.metrics["train_seconds"] for r in tutorial_runs])
    achieved = flops_per_step * steps / tutorial_seconds / 1e9
    peak = matmul_peak_gflops()

    tut_eps = median([r.metrics["examples_per_s"] for r in tutorial_runs])
    tfrs_eps = median([r["train_examples_per_s"] for r in tfrs_runs]) if tfrs_runs else None
    tfrs_metrics = (
        {f"top_{k}_accuracy": median([r["metrics"][f"factorized_top_k/top_{k}_categorical_accuracy"] for r in tfrs_runs]) for k in KS}
        if tfrs_runs
        else {f"top_{k}_accuracy": v for k, v in ((10, 0.0216), (100, 0.2421))}
    )
    tut_metrics = {m: median([r.metrics["test"]["tfrs"][m] for r in tutorial_runs]) for m in tutorial_runs[0].metrics["test"]["tfrs"]}

    payload = {
        "workload": "W1 basic retrieval, MovieLens-100K, random 80/20 split seed 42, test split, full catalogue",
        "machine": machine(),
        "repeats": args.repeats,
        "tfrs": {"measured": bool(tfrs_runs), "examples_per_s_median": tfrs_eps, "metrics_tfrs_protocol": tfrs_metrics,
                 "runs": tfrs_runs},
        "towerrec_tutorial": {"examples_per_s_median": tut_eps, "metrics_tfrs_protocol_median": tut_metrics,
                              "examples_per_s_runs": [r.metrics["examples_per_s"] for r in tutorial_runs],
                              "train_seconds_runs": [r.metrics["train_seconds"] for r in tutorial_runs]},
        "models": {name: {"seen_excluded": r.metrics["test"]["seen_excluded"], "tfrs": r.metrics["test"]["tfrs"],
                          "train_seconds": r.metrics["train_seconds"], "examples_per_s": r.metrics.get("examples_per_s")}
                   for name, r in models.items()},
        "speedup_vs_tfrs": tut_eps / tfrs_eps if tfrs_eps else None,
        "eval_seconds_20k_queries_median": median(timings),
        "eval_queries": len(data.test),
        "catalogue_size": data.num_items,
        "roofline": {"unique_candidates_per_batch": u, "flops_per_step": flops_per_step, "steps": steps,
                     "achieved_gflops": achieved, "matmul_peak_gflops": peak, "fraction_of_peak": achieved / peak},
    }
    write_results("w1_basic", payload, render(payload))


def rerun_metrics(dataset, data_dir: Path, duplicate_titles: str) -> None:
    """Quality figures of every towerrec row (deterministic per seed); the rest from the committed results."""
    payload, earlier = earlier_results("w1_basic")
    keep = {"duplicate_titles": duplicate_titles}
    tutorial = train_once("w1-tutorial", dataset, data_dir, **keep)  # same seed every repeat: one run = the median
    payload["towerrec_tutorial"]["metrics_tfrs_protocol_median"] = tutorial.metrics["test"]["tfrs"]
    for name in payload["models"]:
        test = train_once(name, dataset, data_dir, **keep).metrics["test"]
        payload["models"][name].update(seen_excluded=test["seen_excluded"], tfrs=test["tfrs"])
    catalogue = ("1,682-item catalogue as before: duplicate titles kept apart" if duplicate_titles == "keep" else
                 f"{dataset.num_items:,}-item catalogue: MovieLens duplicate titles merged, towerrec's default")
    payload["quality_catalogue_size"] = dataset.num_items  # catalogue_size stays that of the kept speed figures
    payload["metrics_only"] = {"earlier": earlier, "kept": "TFRS's figures and every speed figure",
                               "regenerated": f"Quality figures of towerrec's rows ({catalogue})"}
    write_results("w1_basic", payload, render(payload))


def render(p: dict) -> str:
    def row(name, m):
        return f"| {name} | " + " | ".join(f"{m.get(f'top_{k}_accuracy', float('nan')):.4f}" for k in KS) + " |"

    head = "| model | " + " | ".join(f"top-{k}" for k in KS) + " |\n|---|" + "---|" * len(KS)
    lines = [
        "# W1 — basic retrieval on MovieLens-100K",
        "",
        f"Random 80/20 split (seed 42), test split ({p['eval_queries']} ratings), full catalogue. "
        f"Machine: {p['machine']['cores']} cores, torch {p['machine']['torch']}. "
        "Regenerate: `.venv/bin/python benchmarks/w1_basic.py`.",
        "",
        *([metrics_only_note(**p["metrics_only"]), ""]
          if p.get("metrics_only") else []),
        "## TFRS protocol (items rated in train are NOT excluded)",
        head,
        row("TFRS 0.7.7 (measured, median)" if p["tfrs"]["measured"] else "TFRS 0.7.7 (published)", p["tfrs"]["metrics_tfrs_protocol"]),
        row("towerrec, tutorial-faithful config (median)", p["towerrec_tutorial"]["metrics_tfrs_protocol_median"]),
    ]
    for name, m in p["models"].items():
        lines.append(row(f"towerrec {name}", m["tfrs"]))
    lines += ["", "## Seen items excluded (what a user sees; towerrec's default)", head]
    for name, m in p["models"].items():
        lines.append(row(f"towerrec {name}", m["seen_excluded"]))
    r = p["roofline"]
    lines += [
        "",
        "## Speed",
        f"- tutorial config training: {p['towerrec_tutorial']['examples_per_s_median']:,.0f} examples/s (median of {p['repeats']})",
    ]
    if p["tfrs"]["examples_per_s_median"]:
        lines.append(f"- TFRS same workload, same machine, same run: {p['tfrs']['examples_per_s_median']:,.0f} examples/s "
                     f"→ **{p['speedup_vs_tfrs']:.1f}x**")
    lines += [
        f"- full-catalogue evaluation of {p['eval_queries']} queries x {p['catalogue_size']} items, seen excluded: "
        f"{p['eval_seconds_20k_queries_median'] * 1000:.0f} ms (median of 5)",
        f"- roofline: {r['unique_candidates_per_batch']:.0f} unique candidates per batch of 8192; "
        f"{r['flops_per_step'] / 1e9:.2f} GFLOP per step; achieved {r['achieved_gflops']:.1f} GFLOP/s "
        f"= {100 * r['fraction_of_peak']:.0f}% of the measured matmul peak ({r['matmul_peak_gflops']:.0f} GFLOP/s)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
