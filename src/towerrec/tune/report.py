"""A study's outputs: ``best.toml``, ``results.md`` + ``results.json`` and Optuna's plots (HTML + PNG).

``best.toml`` is the best trial's run config (its ``config.toml``, absolute data paths, the base
config's name): ``towerrec train best.toml`` with the same ``--runs`` reuses that cached run. The
results list every trial (number, state, parameters, validation metric, epochs, seconds), then the
best trial and the test metrics of its run: the one place a study shows test figures.
Plots: optimisation history, parameter importances (PED-ANOVA, Watanabe et al. 2023, which needs no
scikit-learn; at least two complete trials) and parallel coordinates, from ``optuna.visualization`` (Plotly HTML beside one
shared ``plotly.min.js``, so they open offline) and ``optuna.visualization.matplotlib`` (PNG).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from towerrec import fsio
from towerrec.config import RunConfig
from towerrec.errors import TowerrecError, first_line
from towerrec.tune.objective import split_metrics
from towerrec.tune.space import SearchSpace, plain

@dataclass
class StudyResult:
    """What :func:`tune` gives back.

    ``best_params``: the best trial's config values by ``"section.field"``; ``best_config``: the config
    ``best.toml`` holds; ``best_value``: its validation ``metric``; ``test_metrics``: that run's test
    metrics under its protocol (the only test figures a study reports); ``rows``: one dict per trial
    (``number``, ``state``, ``params``, ``value``, ``epochs``, ``seconds``, ``reused``, ``error``);
    ``outputs``: label -> file written into ``study_dir``; ``notes``: what was skipped, and why.
    """

    study_dir: Path
    metric: str
    direction: str
    best_trial: int
    best_params: dict[str, Any]
    best_config: RunConfig
    best_value: float
    best_run_dir: Path
    test_metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


def trial_rows(study: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """One dict per trial: ``number``, ``state`` (complete / pruned / failed / interrupted), ``params`` (config
    values), ``value`` (validation metric; a pruned trial's last report), ``epochs``, ``seconds``, ``reused``,
    ``error``."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        state = "interrupted" if trial.user_attrs.get("interrupted") else STATES.get(trial.state.name, trial.state.name)
        value = trial.value
        if trial.state.name == "PRUNED" and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        attrs = trial.user_attrs
        rows.append({"number": trial.number, "state": state, "params": plain(space.decode(trial.params)),
                     "value": value, "epochs": attrs.get("epochs"), "seconds": attrs.get("seconds"),
                     "reused": bool(attrs.get("reused", False)), "error": attrs.get("error")})
    return rows


def write_outputs(study: Any, space: SearchSpace, base: RunConfig, record: dict[str, Any], study_dir: Path, *,
                  runs_root: Path, dataset: Any, device: str | None, log) -> StudyResult:
    """Write every output of the study into ``study_dir``; returns the :class:`StudyResult`.

    Raises:
        TowerrecError: no trial completed (``results.md`` / ``results.json`` are still written).
    """
    metric = record["metric"]
    rows = trial_rows(study, space)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    outputs: dict[str, Path] = {}
    if not complete:
        _write_results(study_dir, record, rows, None, [], outputs)
        counts = _counts(rows)
        raise TowerrecError(f"{study_dir}: no trial of the study completed ({counts})",
                            hint="see results.md for each trial's error; widen the space or raise --trials")
    best = study.best_trial
    params = space.decode(best.params)
    config = space.apply(base, params)
    run_dir, metrics = _best_run(best, config, runs_root=runs_root, dataset=dataset, device=device, log=log)
    text = fsio.read_text(run_dir / "config.toml")
    header = (f"# The best trial (#{best.number}) of the study in {study_dir}: validation {metric} = {best.value:.4f}.\n"
              f"# `towerrec train` of this file with the study's --runs reuses its run {run_dir.name}.\n")
    outputs["best_config"] = fsio.atomic_write_text(study_dir / "best.toml", header + text)
    notes: list[str] = []
    outputs.update(write_plots(study, study_dir, metric, notes))
    test = split_metrics(config, metrics, "test")
    summary = {"trial": best.number, "params": plain(params), "validation": {metric: best.value},
               "run_dir": str(run_dir), "test": test, "test_all": metrics.get("test")}
    _write_results(study_dir, record, rows, summary, notes, outputs)
    return StudyResult(study_dir, metric, record["direction"], best.number, params, config, float(best.value),
                       run_dir, test, rows, outputs, notes)


def _best_run(best: Any, config: RunConfig, *, runs_root: Path, dataset: Any, device: str | None,
              log) -> tuple[Path, dict[str, Any]]:
    """The best trial's finished run and its metrics (trained again only if its folder was removed)."""
    from towerrec.runs import train_run
    from towerrec.train.checkpoint import load_json

    recorded = best.user_attrs.get("run_dir")
    if recorded:
        run_dir = Path(recorded)
        try:
            meta = load_json(run_dir / "meta.json")
            if isinstance(meta, dict) and meta.get("finished") and meta.get("config_hash") == _abs_hash(config):
                return run_dir, load_json(run_dir / "metrics.json")
        except TowerrecError:
            pass
    log(f"the best trial's run is not in {recorded or runs_root}: training it again")
    result = train_run(config, runs_root=runs_root, progress=False, dataset=dataset, log=log, device=device)
    return result.run_dir.resolve(), result.metrics


def _abs_hash(config: RunConfig) -> str:
    from towerrec.data.registry import with_absolute_paths

    return with_absolute_paths(config).hash()


def _counts(rows: list[dict[str, Any]]) -> str:
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in states.items()) or "no trials"


# --------------------------------------------------------------------------- plots


def write_plots(study: Any, study_dir: Path, metric: str, notes: list[str]) -> dict[str, Path]:
    """Optuna's optimisation history, parameter importances and parallel coordinates as ``<name>.html`` and
    ``<name>.png``; a plot that cannot be drawn is skipped with a line in ``notes``."""
    import optuna
    import optuna.visualization as plotly_plots
    import optuna.visualization.matplotlib as mpl_plots

    complete = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    outputs: dict[str, Path] = {}
    js = study_dir / "plotly.min.js"
    for name in PLOTS:
        kwargs: dict[str, Any] = {"target_name": metric}
        if name == "param_importances":
            if complete < 2:
                notes.append(f"parameter importances skipped: they need at least 2 complete trials, the study has "
                             f"{complete}")
                continue
            kwargs["evaluator"] = optuna.importance.PedAnovaImportanceEvaluator()
        try:
            with warnings.catch_warnings():  # Optuna's and matplotlib's remarks on tiny studies
                warnings.simplefilter("ignore")
                figure = getattr(plotly_plots, f"plot_{name}")(study, **kwargs)
                png = _png(getattr(mpl_plots, f"plot_{name}"), study, kwargs, study_dir / f"{name}.png")
            if not js.is_file():
                from plotly.offline import get_plotlyjs

                fsio.atomic_write_text(js, get_plotlyjs())
            outputs[f"{name}_html"] = fsio.atomic_write_text(
                study_dir / f"{name}.html", figure.to_html(include_plotlyjs="directory", full_html=True))
            outputs[f"{name}_png"] = png
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes.append(f"{name.replace('_', ' ')} skipped: {first_line(exc, limit=160)}")
    return outputs


def _png(plot, study: Any, kwargs: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    axes = plot(study, **kwargs)
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    figure.set_size_inches(11, 6)
    try:
        figure.tight_layout()
        return fsio.atomic_write_file(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(figure)


# --------------------------------------------------------------------------- results table


def _write_results(study_dir: Path, record: dict[str, Any], rows: list[dict[str, Any]], best: dict[str, Any] | None,
                   notes: list[str], outputs: dict[str, Path]) -> None:
    results = {"study": {k: v for k, v in record.items() if k != "format"}, "trials": rows, "best": best,
               "notes": notes}
    outputs["results_json"] = fsio.atomic_write_text(study_dir / "results.json", json.dumps(results, indent=2))
    outputs["results_md"] = fsio.atomic_write_text(study_dir / "results.md", results_markdown(record, rows, best,
                                                                                           notes, outputs))


def results_markdown(record: dict[str, Any], rows: list[dict[str, Any]], best: dict[str, Any] | None,
                     notes: list[str], outputs: dict[str, Path]) -> str:
    """The study as Markdown: settings, one row per trial, the best trial and its test metrics."""
    metric, direction = record["metric"], record["direction"]
    keys = list(record["space"]["params"])
    validation = record.get("validation", {})
    carve = validation.get("field", "?") + (f" = {validation['fraction']:g} (carved from train)"
                                            if "fraction" in validation else "")
    lines = [f"# Study of {record['config_name']}: {direction} validation {metric}", "",
             f"{len(rows)} trial(s): {_counts(rows)}. Base config hash {record['config_hash']}; validation split: "
             f"{carve}. Trials are chosen on validation only; the test figures below are the chosen config's, "
             "reported once.", "",
             "| trial | state | " + " | ".join(keys) + f" | validation {metric} | epochs | seconds |",
             "|---:|---|" + "---|" * len(keys) + "---:|---:|---:|"]
    for row in rows:
        params = [_cell(row["params"].get(k)) for k in keys]
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        state = row["state"] + (" (reused run)" if row["reused"] else "")
        if row["error"]:
            state += f": {row['error'][:80]}"
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.1f}"
        lines.append(f"| {row['number']} | {state} | " + " | ".join(params)
                     + f" | {value} | {_cell(row['epochs'])} | {seconds} |")
    if best is not None:
        lines += ["", f"## Best trial: #{best['trial']}", ""]
        lines += [f"- `{k}` = {_cell(v)}" for k, v in best["params"].items()]
        lines += [f"- validation {metric}: {best['validation'][metric]:.4f}", f"- run: `{best['run_dir']}`",
                  "- config: `best.toml` (`towerrec train` of it, with the study's `--runs`, reuses this run)", "",
                  "## Test metrics of the chosen config", "",
                  "| metric | test |", "|---|---:|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in _ordered(best["test"])]
    plots = [p for label, p in outputs.items() if label.endswith(("_html", "_png"))]
    if plots:
        lines += ["", "## Plots", ""] + [f"- [{p.name}]({p.name})" for p in plots]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _ordered(metrics: dict[str, float]) -> list[tuple[str, float]]:
    def key(name: str) -> tuple[int, int, str]:
        digits = "".join(c for c in name if c.isdigit())
        group = 0 if name.startswith("top_") else 1 if name.startswith("ndcg") else 2
        return group, int(digits) if digits else 0, name

    return [(n, metrics[n]) for n in sorted(metrics, key=key) if isinstance(metrics[n], (int, float))
            and math.isfinite(metrics[n])]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value).replace("|", "\\|")
