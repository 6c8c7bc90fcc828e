"""The experiment's results table (Markdown + JSON) and the recommendations for one user."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from towerrec.fsio import atomic_write_text, io_errors

KS = (1, 5, 10, 50, 100)


def summary_row(summary, ks: tuple[int, ...] = (1, 5, 10, 50, 100)) -> dict[str, Any]:
    """One results-table row of a run (a :class:`towerrec.experiments.runner.RunSummary`): top-K under both
    protocols, train time and speed, whether it was reused."""
    m = summary.metrics
    test = m.get("test", {})
    return {
        "feature_set": summary.label,
        "tfrs_protocol": {f"top_{k}": test.get("tfrs", {}).get(f"top_{k}_accuracy") for k in ks},
        "seen_excluded": {f"top_{k}": test.get("seen_excluded", {}).get(f"top_{k}_accuracy") for k in ks},
        "train_seconds": m.get("train_seconds"),
        "examples_per_s": m.get("examples_per_s"),
        "epochs": m.get("epochs_run"),
        "reused": summary.reused,
        "run_dir": str(summary.run_dir),
    }


def experiment_dict(config) -> dict[str, Any]:
    """An :class:`~towerrec.experiments.runner.ExperimentConfig` as JSON values."""
    d = asdict(config)
    d["feature_sets"] = list(config.feature_sets)
    d["layer_sizes"] = list(config.layer_sizes)
    return d


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def results_payload(config, runs) -> dict[str, Any]:
    return {"experiment": experiment_dict(config), "runs": [summary_row(r, KS) for r in runs]}


def results_markdown(config, runs) -> str:
    rows = [summary_row(r, KS) for r in runs]
    lines = [
        f"# Experiment {config.name}",
        "",
        f"recipe {config.recipe}, {config.num_epochs} epochs, embedding {config.embedding_size}, "
        f"layers {' '.join(map(str, config.layer_sizes))}; test split, full catalogue.",
        "",
    ]
    for protocol, title in (("tfrs_protocol", "TFRS protocol (items rated in train are not excluded)"),
                            ("seen_excluded", "Seen items excluded")):
        lines += [f"## {title}", "",
                  "| feature set | " + " | ".join(f"top-{k}" for k in KS) + " | train s | examples/s | cached |",
                  "|---|" + "---:|" * (len(KS) + 3)]
        for row in rows:
            m = row[protocol]
            lines.append(
                f"| {row['feature_set']} | " + " | ".join(_fmt(m[f'top_{k}']) for k in KS)
                + f" | {_fmt(row['train_seconds'], '.1f')} | {_fmt(row['examples_per_s'], ',.0f')}"
                + f" | {'yes' if row['reused'] else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_results(config, runs, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    with io_errors(out_dir, hint="choose a writable folder for --out"):
        out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "results.md", out_dir / "results.json"
    atomic_write_text(js, json.dumps(results_payload(config, runs), indent=2, default=str))
    atomic_write_text(md, results_markdown(config, runs))
    return {"results_md": md, "results_json": js}


def recommendations_markdown(recs: dict[str, Any]) -> str:
    seen = "excluded" if recs["exclude_seen"] else "included"
    lines = [f"# Recommendations for user {recs['user']}", "", "## The user's highest-rated movies (train split)", ""]
    lines += [f"{i}. {r['title']} ({r['rating']:g})" for i, r in enumerate(recs["rated"], 1)] or ["(none)"]
    for label, items in recs["models"].items():
        lines += ["", f"## {label}: top {recs['k']} (movies rated in train {seen})", ""]
        if label in recs.get("query_time", {}):
            lines += [f"Asked at the dataset's latest timestamp, {recs['query_time'][label]} (the model has a "
                      "timestamp feature; `towerrec recommend RUN --user U --at TIMESTAMP` asks at another time).", ""]
        lines += [f"{i}. {r['title']}" for i, r in enumerate(items, 1)]
    return "\n".join(lines) + "\n"


def write_recommendations(recs: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    md, js = out_dir / "recommendations.md", out_dir / "recommendations.json"
    atomic_write_text(md, recommendations_markdown(recs))
    atomic_write_text(js, json.dumps(recs, indent=2, default=str))
    return {"recommendations_md": md, "recommendations_json": js}
