"""Tuning benchmark: the shipped search spaces (configs/spaces/) as `towerrec tune` studies (issue 16's goals).

For each workload a study searches its space around the base config, choosing on a VALIDATION split
carved from train (never test); the chosen config's test figures are read once, at the end:

* the chosen trial's own run (trained on train minus validation: what `towerrec tune` reports), and
* the chosen config trained again on the whole training split (validation folded back in, the same
  epochs; the usual refit after a validation search), beside the baselines trained on the same splits.

Workloads (seed 42, MovieLens-100K, full catalogue):

* w1: configs/w1_default.toml + configs/spaces/w1.toml, 40 trials, median pruner; seen items excluded;
  EASE and popularity beside it. Timed: wall clock, trials complete / pruned, load average.
* w2: the ``w2`` preset (context features, titles as candidates, TFRS protocol) + configs/spaces/w2.toml.
* w3: configs/w3_sasrec.toml (TFRS sequential tutorial protocol, ``tfrs-sequences``) + configs/spaces/w3.toml.

    .venv/bin/python benchmarks/tune.py                       # all three
    .venv/bin/python benchmarks/tune.py --workloads w1 --w1-trials 40

Writes benchmarks/results/tune.json and tune.md (a workload not run this time keeps its earlier
figures, marked with the commit they came from). The machine may be shared: the load average
(os.getloadavg, sampled every 10 s during each study) is recorded beside every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_DATA, REPO, RESULTS, git_commit_of, machine, machine_line, write_results
from towerrec.config import load_config
from towerrec.data.registry import load_dataset
from towerrec.presets import preset
from towerrec.runs import train_run
from towerrec.tune import tune
from towerrec.train.evaluate import popularity_metrics
from towerrec.train.sequence_data import prepare_sequences
from towerrec.tune.objective import validation_field

KS = (1, 5, 10, 50, 100)
EASE_ISSUE = {"top_10_accuracy": 0.1732}  # issue 16's EASE figure (seen excluded); the measured one is used too
W1_TOP100_GOAL = 0.6227
W3_GOALS = {"top_10_accuracy": 0.15, "top_100_accuracy": 0.62}
W1_MINUTES_GOAL = 15.0

WORKLOADS = {
    "w1": {"base": "configs/w1_default.toml", "space": "configs/spaces/w1.toml", "trials": 40,
           "baselines": ("ease", "popularity")},
    "w2": {"base": "w2", "space": "configs/spaces/w2.toml", "trials": 16, "baselines": ("ease", "popularity")},
    "w3": {"base": "configs/w3_sasrec.toml", "space": "configs/spaces/w3.toml", "trials": 12,
           "baselines": ("popularity",)},
}


class LoadSampler:
    """Samples ``os.getloadavg()`` (1-minute) every ``period`` seconds in a thread, for the study it brackets."""

    def __init__(self, period: float = 10.0) -> None:
        self.period, self.samples = period, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples)
        return {"mean": round(sum(s) / len(s), 2), "min": round(s[0], 2), "max": round(s[-1], 2),
                "median": round(s[len(s) // 2], 2), "samples": len(s)}


def base_config(name: str, data_dir: Path):
    config = load_config(REPO / name) if name.endswith(".toml") else preset(name)
    return config.replace(data={"data_dir": str(data_dir)})


def protocols(metrics: dict[str, Any], split: str) -> dict[str, dict[str, float]]:
    """Top-K accuracy of ``split`` under both protocols from a run's metrics."""
    part = metrics.get(split) or {}
    return {p: {f"top_{k}_accuracy": round(part[p][f"top_{k}_accuracy"], 4) for k in KS if p in part}
            for p in ("seen_excluded", "tfrs") if p in part}


def without_validation(config):
    place = validation_field(config)
    return config if place is None else config.replace(**{place[0]: {place[1]: 0.0}})


def run_test(config, runs: Path, dataset) -> dict[str, Any]:
    started = time.perf_counter()
    result = train_run(config, runs_root=runs, progress=False, dataset=dataset, log=lambda *_: None)
    return {"test": protocols(result.metrics, "test"), "validation": protocols(result.metrics, "validation"),
            "seconds": round(time.perf_counter() - started, 1), "config_hash": config.hash()}


def baseline(kind: str, config, dataset, runs: Path) -> dict[str, Any]:
    """EASE / popularity on ``config``'s data and split (with its validation split, if it has one)."""
    if config.model.kind != "sequential":
        return run_test(preset(kind).replace(name=kind, data=config.to_dict()["data"], eval=config.to_dict()["eval"]),
                        runs, dataset)
    if kind != "popularity":
        raise ValueError(f"no sequential {kind} baseline")
    data = prepare_sequences(config, dataset, progress=False)  # the tutorial examples; popularity of their labels
    out: dict[str, Any] = {"test": {}, "validation": {}}
    for split, examples in (("test", data.test), ("validation", data.validation)):
        if examples is None:
            continue
        for name, exclude in (("tfrs", False), ("seen_excluded", True)):
            m = popularity_metrics(data, examples, ks=KS, exclude_seen=exclude)
            out[split][name] = {f"top_{k}_accuracy": round(m[f"top_{k}_accuracy"], 4) for k in KS}
    return out


def run_workload(name: str, trials: int, data_dir: Path, work: Path, pruner: str | None,
                 timeout: float | None, base_runs: bool) -> dict[str, Any]:
    spec = WORKLOADS[name]
    base = base_config(spec["base"], data_dir)
    dataset = load_dataset(base.data.dataset, data_dir, progress=False, duplicate_titles=base.data.duplicate_titles)
    study_dir, runs = work / f"study-{name}", work / f"runs-{name}"
    lines: list[str] = []
    print(f"[{name}] {trials} trials of {spec['space']} around {spec['base']}", flush=True)
    started, cpu = time.perf_counter(), time.process_time()
    with LoadSampler() as load:
        result = tune(base, REPO / spec["space"], trials=trials, study_dir=study_dir, runs_root=runs,
                      dataset=dataset, progress=False, pruner=pruner, timeout=timeout,
                      log=lambda line: (lines.append(line), print(f"[{name}] {line}", flush=True)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    states: dict[str, int] = {}
    for row in result.rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    span = trial_span(study_dir)
    chosen_metrics = json.loads((result.best_run_dir / "metrics.json").read_text())
    print(f"[{name}] refit and baselines", flush=True)
    refit_config = without_validation(result.best_config)
    outcome: dict[str, Any] = {
        "base": spec["base"], "space": spec["space"], "trials": trials, "seed": base.train.seed,
        "metric": result.metric, "direction": result.direction,
        "protocol": "seen_excluded" if base.eval.exclude_seen else "tfrs",
        "validation": ".".join(validation_field(base) or ("built in",)),
        "study": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "timeout_s": timeout, **span,
                  "finished": states.get("complete", 0) + states.get("pruned", 0), "states": states, "load_1min": load.summary(),
                  "trial_seconds_sum": round(sum(r["seconds"] or 0 for r in result.rows), 1),
                  "epochs_trained": sum(r["epochs"] or 0 for r in result.rows)},
        "best": {"trial": result.best_trial, "params": _plain(result.best_params),
                 "validation": round(result.best_value, 4)},
        "chosen_run": {"test": protocols(chosen_metrics, "test"),
                       "validation": protocols(chosen_metrics, "validation")},
        "refit": run_test(refit_config, runs, dataset),
        "trial_rows": [{k: _plain(v) for k, v in row.items()} for row in result.rows],
        "baselines": {},
    }
    if base_runs:
        outcome["base_config"] = run_test(base, runs, dataset)
    for kind in spec["baselines"]:
        outcome["baselines"][kind] = {"full_train": baseline(kind, base, dataset, runs),
                                      "train_minus_validation": baseline(kind, result.best_config, dataset, runs)}
    return outcome


def trial_span(study_dir: Path) -> dict[str, Any]:
    """From the study's own storage (it survives a resumed study): first trial start to last trial end of the
    finished (complete / pruned) trials, in seconds, and when."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="towerrec", storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete]
    if not done:
        return {}
    start, end = min(t.datetime_start for t in done), max(t.datetime_complete for t in done)
    return {"trials_span_s": round((end - start).total_seconds(), 1),
            "trials_span": f"{start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC"}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 6)
    return value


def goals(results: dict[str, Any]) -> list[str]:
    out = []
    w1 = results.get("w1")
    if w1:
        ease = w1["baselines"]["ease"]["full_train"]["test"]["seen_excluded"]["top_10_accuracy"]
        bar10 = max(EASE_ISSUE["top_10_accuracy"], ease)
        for label, figures in (("refit on the whole training split", w1["refit"]["test"]["seen_excluded"]),
                               ("chosen trial's own run (train minus validation)", w1["chosen_run"]["test"]["seen_excluded"])):
            t10, t100 = figures["top_10_accuracy"], figures["top_100_accuracy"]
            ok = t10 >= bar10 and t100 >= W1_TOP100_GOAL
            out.append(f"W1, {label}: top-10 {t10:.4f} (goal >= EASE {bar10:.4f}: the larger of the issue's "
                       f"{EASE_ISSUE['top_10_accuracy']} and EASE measured here, {ease:.4f}), top-100 {t100:.4f} "
                       f"(goal >= {W1_TOP100_GOAL}): {'MET' if ok else 'MISSED'}")
        s = w1["study"]
        minutes, complete = s["wall_s"] / 60, s["finished"] >= w1["trials"]
        verdict = ("MET" if minutes < W1_MINUTES_GOAL else "MISSED") if complete else "NOT MEASURED (study incomplete)"
        cpu = "" if s.get("cpu_s") is None else f", {s['cpu_s'] / 60:.1f} CPU-minutes"
        out.append(f"W1 {w1['trials']}-trial study: {s['finished']} trials finished in {minutes:.1f} min wall clock"
                   f"{cpu} (goal: 40 trials in < {W1_MINUTES_GOAL:g} min) with mean "
                   f"1-minute load {s['load_1min']['mean']} on {results['machine']['cores']} cores: {verdict}")
    w3 = results.get("w3")
    if w3:
        for label, figures in (("refit on all tutorial training examples", w3["refit"]["test"]["tfrs"]),
                               ("chosen trial's own run", w3["chosen_run"]["test"]["tfrs"])):
            t10, t100 = figures["top_10_accuracy"], figures["top_100_accuracy"]
            ok = t10 >= W3_GOALS["top_10_accuracy"] and t100 >= W3_GOALS["top_100_accuracy"]
            out.append(f"W3 (TFRS protocol: context items not excluded), {label}: top-10 {t10:.4f} (goal >= 0.15), "
                       f"top-100 {t100:.4f} (goal >= 0.62): {'MET' if ok else 'MISSED'}")
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Tuning — the shipped search spaces (configs/spaces/) as `towerrec tune` studies", "",
             f"MovieLens-100K, seed 42, full catalogue. {machine_line(results['machine'])} "
             "Regenerate: `.venv/bin/python benchmarks/tune.py` (or `--workloads w1`). Every study chooses on a "
             "validation split carved from train; test figures are read once, for the chosen config only: its "
             "own trial run (trained on train minus validation, what `towerrec tune` reports) and the same config "
             "trained again on the whole training split (validation folded back in). Baselines beside them on "
             "both training sets.", ""]
    if results.get("note"):
        lines += [results["note"], ""]
    lines += ["## Goals", ""] + [f"- {g}" for g in results.get("goals", [])] + [""]
    for name in ("w1", "w2", "w3"):
        w = results.get(name)
        if not w:
            continue
        p = w["protocol"]
        s = w["study"]
        stopped = f" (no trial started after {s['timeout_s']:g} s)" if s.get("timeout_s") else ""
        cpu = "" if s.get("cpu_s") is None else f"{s['cpu_s'] / 60:.1f} CPU-minutes of this process (all threads), "
        span = (f" (finished trials ran {s['trials_span']}: {s['trials_span_s'] / 60:.1f} min)"
                if s.get("trials_span") else "")
        lines += [f"## {name.upper()}: `towerrec tune {w['base']} --space {w['space']} --trials {w['trials']}`", ""]
        if w.get("from_commit"):
            lines += [f"(kept from an earlier run, commit {w['from_commit']})", ""]
        lines += [f"Protocol `{p}` ({'seen items excluded' if p == 'seen_excluded' else 'TFRS: seen / context items not excluded'}); "
                  f"validation: `{w['validation']}` = 0.1; metric validation {w['metric']} ({w['direction']}).", "",
                  f"Study: {s['finished']} of {w['trials']} trials finished "
                  f"({', '.join(f'{v} {k}' for k, v in s['states'].items())}) in {s['wall_s'] / 60:.1f} min wall clock"
                  f"{span}"
                  f"{stopped}, "
                  f"{cpu}"
                  f"{s['epochs_trained']} epochs trained in all; 1-minute load average during the study: mean "
                  f"{s['load_1min']['mean']}, min {s['load_1min']['min']}, max {s['load_1min']['max']} "
                  f"({results['machine']['cores']} cores: above {results['machine']['cores']} the study shared the CPUs).", "",
                  f"Chosen (trial {w['best']['trial']}, validation {w['metric']} {w['best']['validation']:.4f}):", ""]
        lines += [f"- `{k}` = `{json.dumps(v)}`" for k, v in w["best"]["params"].items()] + [""]
        lines += [f"| model (test, {p}) | trained on | val top-10 | top-1 | top-5 | top-10 | top-50 | top-100 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]

        def row(label, trained, entry):
            t = entry["test"].get(p, {})
            v = entry.get("validation", {}).get(p, {})
            cells = " | ".join(f"{t.get(f'top_{k}_accuracy', float('nan')):.4f}" for k in KS)
            val = f"{v['top_10_accuracy']:.4f}" if v else "—"
            return f"| {label} | {trained} | {val} | {cells} |"

        lines.append(row("**tuned**, refit", "train", w["refit"]))
        lines.append(row("tuned, chosen trial's run", "train − validation", w["chosen_run"]))
        if "base_config" in w:
            lines.append(row(f"base config ({w['base']}, untuned)", "train", w["base_config"]))
        for kind, b in w["baselines"].items():
            lines.append(row(kind, "train", b["full_train"]))
            lines.append(row(kind, "train − validation", b["train_minus_validation"]))
        other = "tfrs" if p == "seen_excluded" else "seen_excluded"
        r = w["refit"]["test"].get(other)
        if r:
            lines += ["", f"Tuned, refit, under the other protocol (`{other}`): top-10 {r['top_10_accuracy']:.4f}, "
                          f"top-100 {r['top_100_accuracy']:.4f}."]
        lines += ["", "<details><summary>every trial</summary>", "",
                  "| # | state | validation | epochs | s | params |", "|---:|---|---:|---:|---:|---|"]
        for t in w["trial_rows"]:
            v = "—" if t["value"] is None else f"{t['value']:.4f}"
            params = ", ".join(f"{k.split('.', 1)[1]}={json.dumps(x)}" for k, x in t["params"].items())
            lines.append(f"| {t['number']} | {t['state']} | {v} | {t['epochs']} | {t['seconds']} | {params} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    parser.add_argument("--workloads", default="w1,w3,w2", help="comma-separated: w1, w2, w3")
    parser.add_argument("--w1-trials", type=int, default=WORKLOADS["w1"]["trials"])
    parser.add_argument("--w2-trials", type=int, default=WORKLOADS["w2"]["trials"])
    parser.add_argument("--w3-trials", type=int, default=WORKLOADS["w3"]["trials"])
    parser.add_argument("--timeout", type=float, default=None,
                        help="per study: start no trial after this many seconds (a shared machine may need it)")
    parser.add_argument("--base-runs", action="store_true",
                        help="also train the untuned base config on the whole training split (its test row)")
    parser.add_argument("--pruner", default=None, help="override the spaces' pruner (median / successive-halving / none)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep studies and runs here (default: a temporary folder; a kept folder resumes)")
    parser.add_argument("--results", default="tune", help="results name: benchmarks/results/NAME.json and .md; "
                        "workloads already in it and not run now are kept")
    parser.add_argument("--note", default="", help="a sentence for the results file (e.g. how loaded the machine was)")
    args = parser.parse_args()

    earlier_file = RESULTS / f"{args.results}.json"
    earlier = json.loads(earlier_file.read_text()) if earlier_file.exists() else {}
    commit = git_commit_of(earlier_file) if earlier else None
    results: dict[str, Any] = {"machine": machine(), "note": args.note or earlier.get("note", "")}
    for name in ("w1", "w2", "w3"):
        if name in earlier:
            results[name] = {**earlier[name], "from_commit": earlier[name].get("from_commit") or commit}
    trials = {"w1": args.w1_trials, "w2": args.w2_trials, "w3": args.w3_trials}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
            if name not in WORKLOADS:
                parser.error(f"unknown workload {name!r}; valid: {', '.join(WORKLOADS)}")
            results[name] = run_workload(name, trials[name], args.data_dir, work, args.pruner, args.timeout, args.base_runs)
            results["goals"] = goals(results)
            write_results(args.results, results, markdown(results))


if __name__ == "__main__":
    main()
