"""Ranking benchmark: the four TFRS ranking tutorials on MovieLens-100K, side by side with TFRS.

Workloads (towerrec config <-> TFRS peer mode of ../shared/peer/tfrs_ranking.py):

    basic               configs/ranking_basic.toml                 <-> basic
    dcn                 configs/ranking_dcn.toml                   <-> dcn
    dcn-lr              configs/ranking_dcn_low_rank.toml          <-> dcn-lr
    dnn                 configs/ranking_dnn.toml                   <-> dnn
    multitask-rating    configs/ranking_multitask_rating.toml      <-> multitask-rating
    multitask-retrieval configs/ranking_multitask_retrieval.toml   <-> multitask-retrieval
    multitask-joint     configs/ranking_multitask_joint.toml       <-> multitask-joint
    best                configs/ranking_best.toml                  (towerrec only)
    multitask-best      configs/ranking_multitask_best.toml        (towerrec only)

Protocol: the TFRS tutorials' split (shuffle seed 42, 80,000 train / 20,000 test ratings), test
RMSE of the predicted rating; multi-task workloads add full-catalogue top-K accuracy under both
protocols (TFRS's: items the user rated in train NOT excluded; towerrec's default: excluded).
Each repeat runs TFRS then towerrec on every workload (interleaved, same machine, same run);
repeat r uses seed r for TFRS and the config's [train] seed + r for towerrec; figures are medians.

Speed is measured as TFRS measures it: training examples x epochs / fit seconds, at the same
batch size and epochs (the configs are the tutorials'). TFRS's fit seconds are ``model.fit`` over
its cached, batched dataset (graph tracing included, evaluation excluded); towerrec's are the
trainer's epoch seconds (batching included; data preparation, model construction and evaluation
excluded). A config that is not in the checkout is skipped and said so.

    .venv/bin/python benchmarks/ranking.py --repeats 3 --threads 1 --tfrs-python /tmp/tfrs/bin/python

Writes benchmarks/results/ranking.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from _common import DEFAULT_DATA, PEER, REPO, RESULTS, machine, machine_line, median, run_tfrs, write_results
from towerrec.config import load_config
from towerrec.data.registry import load_dataset
from towerrec.runs import train_run

KS = (1, 5, 10, 50, 100)
TUTORIAL_RMSE_TOLERANCE = 0.01
BEST_RMSE_GOAL = 0.90
MULTITASK_RMSE_GOAL = 0.93
MULTITASK_TOP100_GOAL = 0.40
SPEEDUP_GOAL = 3.0
#: Goal key -> the cause of a miss, as analysed from the committed results (printed under a missed goal).
NOTES: dict[str, str] = {
    "tutorial_rmse_within_0.01": (
        "only basic misses, by the seed noise of a 3-epoch Adagrad run from random initialisation: across "
        "the 3 seeds TFRS spans 1.1090-1.1224 and towerrec 1.1118-1.1244 (each ~0.013, more than the 0.01 "
        "tolerance), so the medians land 0.0105 apart; the 8-epoch DCN/DNN workloads are within 0.007. "
        "multitask-joint (one repeat) is 0.031 BELOW TFRS: its SUM-reduced retrieval loss (~28,000 per batch) "
        "swamps the rating MSE (~1), so after 3 Adagrad epochs the rating head is barely trained and its RMSE "
        "is set by initialisation and seed (TFRS itself: 1.12 rating-only, 1.17 joint). multitask-retrieval's "
        "rating head is untrained (weight 0) and left out of this goal."),
    "speed_3x_tfrs": (
        "DCN, low-rank DCN and DNN are matmul-bound at batch 8192 in both systems: a DCN training example costs "
        "~0.66 MFLOP (cross 192x192, dense 192x192 twice, forward + backward), so TFRS's 54k ex/s in the quiet "
        "repeat is already ~36 GFLOP/s on one thread, about the measured one-thread fp32 matmul peak "
        "(~44 GFLOP/s); 3x TFRS would need ~3x that peak. towerrec is 1.6-2.0x there (the gap is TF's per-op "
        "and graph overhead), 3.5x on basic ranking, whose small MLP leaves the overhead dominant. The "
        "absolute figures also move ~5x between repeats with the load of the shared 2-core machine; ratios "
        "come from interleaved runs."),
    "multitask_rmse_0.93_and_top100_0.40": (
        "by 0.0008 of top-100: configs/ranking_multitask_best.toml (the W1 default towers + TFRS's 256-64-1 "
        "rating head, weights 1/1) meets RMSE (0.9246) and lands on the 0.40 line (0.3992 here, 0.4002 in the "
        "multi-task helper's own test run: one-thread vs two-thread float order). The rating loss pulls the "
        "shared towers away from retrieval (W1 default alone: 0.4037); rating weight 3 was better on "
        "validation (RMSE 0.9212, top-100 0.3919 vs 0.9234 / 0.3916) but gave 0.9204 / 0.3971 on test. "
        "Clearing 0.40 with margin needs a rating head with its own user/item biases or embeddings, so "
        "that the towers stay retrieval-shaped (not tried for lack of time). A validation sweep of 8 settings "
        "(ranking weight 2, 15 epochs, temperature 0.05, history 200, embedding 128; see the config's header) "
        "found none with validation top-100 >= 0.40; the best (ranking weight 2, history 200: validation "
        "0.9267 / 0.3998) gave 0.9226 / 0.3995 on test, so the config is unchanged."),
}


@dataclass(frozen=True)
class Workload:
    name: str
    config: str  # under configs/
    tfrs_mode: str | None  # ../shared/peer/tfrs_ranking.py MODE; None: no TFRS twin
    retrieval: bool = False  # has a retrieval head: report top-K
    rating_trained: bool = True  # the rating head is trained (RMSE is meaningful)


WORKLOADS = (
    Workload("basic", "ranking_basic.toml", "basic"),
    Workload("dcn", "ranking_dcn.toml", "dcn"),
    Workload("dcn-lr", "ranking_dcn_low_rank.toml", "dcn-lr"),
    Workload("dnn", "ranking_dnn.toml", "dnn"),
    Workload("multitask-rating", "ranking_multitask_rating.toml", "multitask-rating", retrieval=True),
    Workload("multitask-retrieval", "ranking_multitask_retrieval.toml", "multitask-retrieval", retrieval=True,
             rating_trained=False),
    Workload("multitask-joint", "ranking_multitask_joint.toml", "multitask-joint", retrieval=True),
    Workload("best", "ranking_best.toml", None),
    Workload("multitask-best", "ranking_multitask_best.toml", None, retrieval=True),
)


def tfrs_figures(result: dict[str, Any]) -> dict[str, Any]:
    """RMSE, TFRS-protocol top-K and examples/s of one peer run."""
    m = result["metrics"]
    top = {f"top_{k}_accuracy": m[f"factorized_top_k/top_{k}_categorical_accuracy"] for k in KS
           if f"factorized_top_k/top_{k}_categorical_accuracy" in m}
    return {"rmse": m["RMSE"], "tfrs": top, "examples_per_s": result["train_examples_per_s"],
            "fit_seconds": result["fit_s"]}


def towerrec_run(workload: Workload, dataset, data_dir: Path, repeat: int) -> dict[str, Any]:
    """Train ``workload``'s config (seed + ``repeat``) in a scratch run folder; its test figures and speed."""
    config = load_config(REPO / "configs" / workload.config)
    config = config.replace(data={"data_dir": str(data_dir)}, train={"seed": config.train.seed + repeat})
    with tempfile.TemporaryDirectory() as runs:
        result = train_run(config, runs_root=Path(runs), progress=False, dataset=dataset, log=lambda *_: None)
    test = result.metrics["test"]
    return {
        "rmse": test["ranking"]["rmse"],
        "mae": test["ranking"].get("mae"),
        "tfrs": {k: v for k, v in test.get("tfrs", {}).items() if k.startswith("top_")},
        "seen_excluded": {k: v for k, v in test.get("seen_excluded", {}).items() if k.startswith("top_")},
        "examples_per_s": result.metrics["examples_per_s"],
        "fit_seconds": result.metrics["train_seconds"],
        "epochs": result.metrics.get("epochs_run"),
        "batch_size": config.train.batch_size,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats (RMSE, each top-K, examples/s), with the runs kept."""
    if not runs:
        return {}
    out: dict[str, Any] = {"rmse": median([r["rmse"] for r in runs]),
                           "examples_per_s": median([r["examples_per_s"] for r in runs]), "runs": runs}
    for protocol in ("tfrs", "seen_excluded"):
        keys = runs[0].get(protocol, {})
        if keys:
            out[protocol] = {k: median([r[protocol][k] for r in runs]) for k in keys}
    return out


def goals(workloads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each goal of the ranking issue: met (True / False; None when not measured) and the figures behind it."""
    tutorial, speed = {}, {}
    for name, w in workloads.items():
        ours, peer = w.get("towerrec"), w.get("tfrs")
        if not ours or not peer:
            continue
        if w["rating_trained"]:
            tutorial[name] = round(ours["rmse"] - peer["rmse"], 4)
        speed[name] = round(ours["examples_per_s"] / peer["examples_per_s"], 2)
    best = workloads.get("best", {}).get("towerrec")
    multitask = {name: (w["towerrec"]["rmse"], w["towerrec"].get("tfrs", {}).get("top_100_accuracy"))
                 for name, w in workloads.items() if w.get("retrieval") and w.get("towerrec") and w["rating_trained"]}
    both = [n for n, (rmse, top) in multitask.items()
            if rmse <= MULTITASK_RMSE_GOAL and top is not None and top >= MULTITASK_TOP100_GOAL]
    return {
        "tutorial_rmse_within_0.01": {"met": all(abs(d) <= TUTORIAL_RMSE_TOLERANCE for d in tutorial.values())
                                      if tutorial else None, "rmse_minus_tfrs": tutorial},
        "best_rmse_at_most_0.90": {"met": best["rmse"] <= BEST_RMSE_GOAL if best else None,
                                   "rmse": best["rmse"] if best else None},
        "multitask_rmse_0.93_and_top100_0.40": {"met": bool(both) if multitask else None, "meeting": both,
                                                "rmse_top100": multitask},
        "speed_3x_tfrs": {"met": all(s >= SPEEDUP_GOAL for s in speed.values()) if speed else None,
                          "ratio": speed},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tfrs-python", default="/tmp/tfrs/bin/python", help="python with TFRS 0.7.7 (see ../shared/peer/README.md)")
    parser.add_argument("--skip-tfrs", action="store_true", help="towerrec only; the TFRS columns stay empty")
    parser.add_argument("--workloads", nargs="+", choices=[w.name for w in WORKLOADS], help="default: all")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for BOTH systems (torch.set_num_threads; TF_NUM_INTRAOP_THREADS and "
                             "TF_NUM_INTEROP_THREADS for TFRS); default: each library's own (all cores)")
    parser.add_argument("--update", action="store_true",
                        help="re-measure only --workloads and keep the other workloads of the committed ranking.json "
                             "(each workload records when it was measured; TFRS and towerrec stay paired per run)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite ranking.md from the committed ranking.json (after editing the notes)")
    args = parser.parse_args()
    if args.render_only:
        payload = json.loads((RESULTS / "ranking.json").read_text())
        write_results("ranking", payload, render(payload))
        return

    tf_env = {}
    if args.threads:
        torch.set_num_threads(args.threads)
        tf_env = {"TF_NUM_INTRAOP_THREADS": str(args.threads), "TF_NUM_INTEROP_THREADS": str(args.threads)}
    use_tfrs = not args.skip_tfrs and Path(args.tfrs_python).exists() and (PEER / "tfrs_ranking.py").exists()
    chosen = [w for w in WORKLOADS if not args.workloads or w.name in args.workloads]
    missing = [w.config for w in chosen if not (REPO / "configs" / w.config).is_file()]
    chosen = [w for w in chosen if (REPO / "configs" / w.config).is_file()]
    dataset = load_dataset("movielens-100k", args.data_dir, progress=False)

    ours: dict[str, list] = {w.name: [] for w in chosen}
    peer: dict[str, list] = {w.name: [] for w in chosen}
    for repeat in range(args.repeats):
        for w in chosen:
            if use_tfrs and w.tfrs_mode:
                result = run_tfrs("tfrs_ranking.py", [w.tfrs_mode, *_epochs_seed(w, repeat)],
                                  python=args.tfrs_python, data_root=args.data_dir.parent, env=tf_env)
                peer[w.name].append(tfrs_figures(result))
            ours[w.name].append(towerrec_run(w, dataset, args.data_dir, repeat))
            print(f"repeat {repeat}: {w.name} done", flush=True)

    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    workloads = {
        w.name: {"config": f"configs/{w.config}", "tfrs_mode": w.tfrs_mode, "retrieval": w.retrieval,
                 "rating_trained": w.rating_trained, "measured": measured, "repeats": args.repeats,
                 "threads": args.threads or "library default",
                 "towerrec": summarise(ours[w.name]), "tfrs": summarise(peer[w.name])}
        for w in chosen
    }
    if args.update and (RESULTS / "ranking.json").is_file():
        earlier = json.loads((RESULTS / "ranking.json").read_text())["workloads"]
        order = [w.name for w in WORKLOADS]
        workloads = {n: workloads.get(n) or earlier[n] for n in order if n in workloads or n in earlier}
        missing = [m for m in missing if m not in {w["config"].removeprefix("configs/") for w in workloads.values()}]
    payload = {
        "workload": "TFRS ranking tutorials, MovieLens-100K, shuffle seed 42, 80,000 train / 20,000 test ratings",
        "machine": machine(),
        "repeats": args.repeats,
        "tfrs_measured": use_tfrs or any(w["tfrs"] for w in workloads.values()),
        "skipped_configs": missing,
        "speed_definition": "training examples x epochs / fit seconds; TFRS: model.fit over the cached batched "
                            "dataset (tracing included, evaluation excluded); towerrec: the trainer's epoch "
                            "seconds (batching included; data preparation, model construction, evaluation excluded)",
        "workloads": workloads,
        "goals": goals(workloads),
    }
    write_results("ranking", payload, render(payload))


def _epochs_seed(workload: Workload, repeat: int) -> list[str]:
    """The peer script's ``[epochs] [seed]`` arguments: its own default epochs (the tutorial's), seed ``repeat``."""
    epochs = {"dcn": 8, "dcn-lr": 8, "dnn": 8}.get(workload.tfrs_mode or "", 3)
    return [str(epochs), str(repeat)]


def render(p: dict[str, Any]) -> str:
    def fmt(value, spec=".4f"):
        return "—" if value is None else format(value, spec)

    lines = [
        "# Ranking — the TFRS ranking tutorials on MovieLens-100K",
        "",
        "Split: shuffle seed 42, 80,000 train / 20,000 test ratings (the tutorials'). "
        f"{machine_line(p['machine'])} Medians over each workload's repeats, TFRS and towerrec interleaved in one run "
        "(repeat r: TFRS seed r, towerrec [train] seed + r). "
        "Regenerate: `.venv/bin/python benchmarks/ranking.py --repeats 3 --threads 1 --tfrs-python /tmp/tfrs/bin/python`. "
        "Measured (per workload): " + ", ".join(sorted({f"{w.get('measured', '?')} ({w.get('repeats', p['repeats'])} "
                                                      f"repeats, threads per system: {w.get('threads', '?')})"
                                                      for w in p["workloads"].values()})) + ".",
        "",
        "| workload | config | TFRS RMSE | towerrec RMSE | Δ RMSE | TFRS ex/s | towerrec ex/s | towerrec / TFRS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, w in p["workloads"].items():
        ours, peer = w["towerrec"], w["tfrs"]
        delta = ours["rmse"] - peer["rmse"] if ours and peer else None
        ratio = ours["examples_per_s"] / peer["examples_per_s"] if ours and peer else None
        note = "" if w["rating_trained"] else " (rating head untrained)"
        lines.append(f"| {name} | `{w['config']}` | {fmt(peer.get('rmse'))} | {fmt(ours.get('rmse'))}{note} | "
                     f"{fmt(delta, '+.4f')} | {fmt(peer.get('examples_per_s'), ',.0f')} | "
                     f"{fmt(ours.get('examples_per_s'), ',.0f')} | {fmt(ratio, '.1f') + 'x' if ratio else '—'} |")
    lines += ["", "The best configs were chosen on a validation split carved from the 80k train ratings "
              "(`[data] validation_fraction = 0.1`), never on test; their headers give the validation figures."]
    retrieval = {n: w for n, w in p["workloads"].items() if w["retrieval"]}
    if retrieval:
        head = "| workload | protocol | " + " | ".join(f"top-{k}" for k in KS) + " |\n|---|---|" + "---|" * len(KS)
        lines += ["", "## Multi-task: top-K accuracy over the full catalogue (test split)", "", head]
        for name, w in retrieval.items():
            for label, source, protocol in (("TFRS", w["tfrs"], "tfrs"), ("towerrec", w["towerrec"], "tfrs"),
                                            ("towerrec", w["towerrec"], "seen_excluded")):
                top = source.get(protocol) if source else None
                if not top:
                    continue
                kind = "seen NOT excluded (TFRS)" if protocol == "tfrs" else "seen excluded"
                lines.append(f"| {name} ({label}) | {kind} | " + " | ".join(fmt(top.get(f'top_{k}_accuracy'))
                                                                           for k in KS) + " |")
    g = p["goals"]
    lines += ["", "## Goals", ""]

    def verdict(met):
        return "not measured" if met is None else ("**met**" if met else "**missed**")

    def note(key):
        if g[key]["met"] is False and key in NOTES:
            lines.append(f"  - Why: {NOTES[key]}")

    t = g["tutorial_rmse_within_0.01"]
    lines.append(f"- Tutorial-faithful configs within {TUTORIAL_RMSE_TOLERANCE} RMSE of TFRS: {verdict(t['met'])} "
                 f"(towerrec − TFRS: " + ", ".join(f"{n} {d:+.4f}" for n, d in t["rmse_minus_tfrs"].items()) + ")")
    note("tutorial_rmse_within_0.01")
    b = g["best_rmse_at_most_0.90"]
    lines.append(f"- Best ranking config test RMSE <= {BEST_RMSE_GOAL}: {verdict(b['met'])} (RMSE {fmt(b['rmse'])})")
    note("best_rmse_at_most_0.90")
    m = g["multitask_rmse_0.93_and_top100_0.40"]
    lines.append(f"- One multi-task model with RMSE <= {MULTITASK_RMSE_GOAL} and TFRS-protocol top-100 >= "
                 f"{MULTITASK_TOP100_GOAL}: {verdict(m['met'])} (" + ", ".join(
                     f"{n} {r:.4f} / {fmt(t100)}" for n, (r, t100) in m["rmse_top100"].items()) + ")")
    note("multitask_rmse_0.93_and_top100_0.40")
    s = g["speed_3x_tfrs"]
    lines.append(f"- Training examples/s >= {SPEEDUP_GOAL:.0f}x TFRS on every workload with a TFRS twin: "
                 f"{verdict(s['met'])} (" + ", ".join(f"{n} {r:.1f}x" for n, r in s["ratio"].items()) + ")")
    note("speed_3x_tfrs")
    lines += ["", f"Speed: {p['speed_definition']}."]
    if p["skipped_configs"]:
        lines.append(f"Skipped (config not in this checkout): {', '.join(p['skipped_configs'])}.")
    if not p["tfrs_measured"]:
        lines.append("TFRS was not run (--skip-tfrs or no TFRS python): no TFRS column, no ratio.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
