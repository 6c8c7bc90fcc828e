"""The feature-set experiment: one model per feature set, cached, compared at a glance.

An :class:`ExperimentConfig` names a base recipe (a preset: data, task and
optimiser settings), the knobs the W2 article varies (epochs, embedding size,
layer sizes, evaluation interval) and a list of feature sets. Each feature set
becomes one :class:`~towerrec.config.RunConfig` trained by
:func:`towerrec.runs.train_run`, so a finished model whose configuration AND
data fingerprint match is reused, an interrupted one resumes from its
checkpoint, and finished runs survive an interrupted experiment.

A feature set is ``none`` (query = ``user_id``, candidate = ``movie_title``:
the TFRS deep-recommenders baseline) or a comma/plus-separated list of
features added to the tower they belong to: ``timestamp,movie_title_text``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from towerrec import fsio
from towerrec.config import BOUNDS, MAX_WIDTH, SECTIONS, Bound, RunConfig, config_from_dict, read_toml
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, TowerrecError, shorten
from towerrec.features.spec import BUILTIN_NAMES, ITEM_PREFIX, feature_side
from towerrec.presets import PRESETS

RECIPES = {"towerrec": "w2", "tfrs": "w2-tfrs"}  # recipe name -> preset
ARTICLE_FEATURE_SETS = (
    "none",
    "timestamp",
    "movie_title_text",
    "timestamp,movie_title_text",
    "timestamp,movie_title_text,movie_genres",
    "timestamp,movie_title_text,movie_genres,movie_year",
)


@dataclass(frozen=True)
class ExperimentConfig:
    """What to train and compare. ``overrides`` holds RunConfig sections ([data], [train], ...)
    applied over the recipe; the knobs below are applied last."""

    name: str = "w2"
    recipe: str = "towerrec"
    feature_sets: tuple[str, ...] = ARTICLE_FEATURE_SETS
    num_epochs: int = 20
    embedding_size: int = 32
    layer_sizes: tuple[int, ...] = (64, 32)
    eval_every: int = 5
    recommend_for_user: str | None = None
    include_seen: bool = False  # recommendations: keep items the user rated in train
    top_k: int = 10
    runs_dir: str = "runs"
    out_dir: str | None = None  # default: experiments/<name>
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def output_dir(self) -> Path:
        """Where results go: ``out_dir``, else ``experiments/<name>``."""
        return Path(self.out_dir) if self.out_dir else Path("experiments") / self.name

    def with_changes(self, **changes: Any) -> ExperimentConfig:
        """A copy with the given knobs (None values are ignored) and ``overrides`` merged per section."""
        overrides = {k: dict(v) for k, v in self.overrides.items()}
        for section, values in (changes.pop("overrides", None) or {}).items():
            overrides.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown experiment option(s) {unknown}; valid: {sorted(known - {'overrides'})}")
        kept = {k: v for k, v in changes.items() if v is not None}
        out = replace(self, overrides=overrides, **kept)
        check_experiment(out)
        return out


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read ``[experiment]`` plus optional RunConfig sections ([data], [model], [task], [train], [eval])."""
    values = read_toml(path, "experiment config")
    try:
        return experiment_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", exc.hint) from exc


def experiment_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a dict shaped like the experiment TOML (``[experiment]`` plus run sections).

    Raises:
        ConfigError: an unknown section or key, or a bad value.
    """
    unknown = sorted(set(values) - {"experiment", *SECTIONS})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid: {['experiment', *SECTIONS]}")
    exp = dict(values.get("experiment", {}))
    valid = {f.name: f for f in fields(ExperimentConfig)} .keys() - {"overrides"}
    bad = sorted(set(exp) - valid)
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in [experiment]; valid keys: {sorted(valid)}")
    for key in ("feature_sets", "layer_sizes"):
        if key in exp:
            if not isinstance(exp[key], list):
                raise ConfigError(f"[experiment] {key} must be a list, got {shorten(exp[key])}")
            exp[key] = tuple(exp[key])
    if "recommend_for_user" in exp:
        exp["recommend_for_user"] = str(exp["recommend_for_user"])
    for key in ("num_epochs", "embedding_size", "eval_every", "top_k"):
        if key in exp and (not isinstance(exp[key], int) or isinstance(exp[key], bool)):
            raise ConfigError(f"[experiment] {key} must be an integer, got {shorten(exp[key])}")
    overrides = {s: dict(values[s]) for s in SECTIONS if s in values}
    config = ExperimentConfig(overrides=overrides, **exp)
    check_experiment(config)
    return config


EXPERIMENT_BOUNDS = {
    "num_epochs": BOUNDS[("train", "epochs")],
    "embedding_size": BOUNDS[("model", "embedding_dim")],
    "eval_every": BOUNDS[("train", "eval_every")],
    "top_k": Bound(1, 100_000, integer=True),
}


def check_experiment(config: ExperimentConfig) -> None:
    if config.recipe not in RECIPES:
        raise ConfigError(f"recipe {config.recipe!r} is not one of {sorted(RECIPES)}")
    for key, bound in EXPERIMENT_BOUNDS.items():
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or not bound.holds(value):
            raise ConfigError(f"[experiment] {key} must be {bound.describe()}, got {shorten(value)}")
    if not config.layer_sizes or any(
        isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_WIDTH for s in config.layer_sizes
    ):
        raise ConfigError(
            f"[experiment] layer_sizes must be integers in 1..{MAX_WIDTH}, got {shorten(list(config.layer_sizes))}"
        )
    if not config.feature_sets:
        raise ConfigError("at least one feature set is needed", hint="e.g. --feature-set none --feature-set timestamp")
    labels = [feature_set_label(parse_feature_set(s)) for s in config.feature_sets]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"feature set(s) listed twice: {dupes}")
    for section, values in config.overrides.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; valid: {list(SECTIONS)}")
    base_config(config)  # validates the overrides


def parse_feature_set(text: str) -> tuple[str, ...]:
    """``"timestamp,movie_title_text"`` (or ``+``-separated) -> names; ``"none"`` -> (). Unknown names raise."""
    text = text.strip()
    if text.lower() in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(p.strip() for p in text.replace("+", ",").split(",") if p.strip()))
    for name in names:
        if name == "none":
            raise ConfigError(f"feature set {text!r}: 'none' cannot be combined with features")
        if not name.startswith(ITEM_PREFIX) and name not in BUILTIN_NAMES and name != "user_history":
            raise ConfigError(
                f"unknown feature {name!r} in feature set {text!r}; valid features: "
                f"{', '.join((*BUILTIN_NAMES, 'user_history'))}, or {ITEM_PREFIX}<column> of an --item-features table",
                hint="feature sets are comma-separated, e.g. --feature-set timestamp,movie_title_text; 'none' is the baseline",
            )
        feature_side(name)
    return names


def feature_set_label(names: tuple[str, ...]) -> str:
    return "+".join(names) if names else "none"


def base_config(config: ExperimentConfig) -> RunConfig:
    """The recipe preset with the experiment's section overrides and knobs applied."""
    merged = json.loads(json.dumps(PRESETS[RECIPES[config.recipe]]))
    for section, values in config.overrides.items():
        merged.setdefault(section, {}).update(values)
    merged.setdefault("model", {}).update(
        {"embedding_dim": config.embedding_size, "layer_sizes": [int(s) for s in config.layer_sizes]}
    )
    merged.setdefault("train", {}).update({"epochs": config.num_epochs, "eval_every": config.eval_every})
    merged["name"] = config.name
    return config_from_dict(merged)


def run_configs(config: ExperimentConfig) -> list[tuple[str, RunConfig]]:
    """(label, RunConfig) per feature set: the base towers plus the set's features on their side."""
    base = base_config(config)
    out = []
    for text in config.feature_sets:
        names = parse_feature_set(text)
        label = feature_set_label(names)
        query = list(base.model.query_features) + [n for n in names if feature_side(n) == "query"]
        cand = list(base.model.candidate_features) + [n for n in names if feature_side(n) == "candidate"]
        cfg = base.replace(
            name=f"{config.name}-{label}".replace(":", "_"),
            model={"query_features": list(dict.fromkeys(query)), "candidate_features": list(dict.fromkeys(cand))},
        )
        out.append((label, cfg))
    return out


@dataclass
class RunSummary:
    label: str
    run_dir: Path
    reused: bool
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    wall_seconds: float


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns: its config, one summary per run (metrics, timings, run
    directory), the total wall time in seconds and the files written (name -> path)."""

    config: ExperimentConfig
    runs: list[RunSummary]
    wall_seconds: float
    outputs: dict[str, Path]
    recommendations: dict[str, Any] | None = None


def load_experiment_dataset(config: ExperimentConfig, progress: bool = True, log: Callable[[str], None] = print) -> Dataset:
    """The dataset every run of the experiment trains on (parsed data is cached on disk), item features joined."""
    from towerrec.data.registry import load_dataset
    from towerrec.train.prepared import with_item_features

    base = base_config(config)
    dataset = load_dataset(base.data.dataset, base.data.data_dir, progress=progress,
                           duplicate_titles=base.data.duplicate_titles)
    return with_item_features(base, dataset, warn=lambda m: log(f"warning: {m}"))


def check_user(dataset: Dataset, user: str) -> Any:
    """The raw id of ``user`` in ``dataset``, or a clear error (before any training starts)."""
    import polars as pl

    interactions = dataset.interactions
    raw: Any = user
    if interactions.schema["user_id"] == pl.Int64:
        try:
            raw = int(user)
        except ValueError:
            raise TowerrecError(f"--recommend-for-user {user!r}: this dataset's user ids are integers") from None
    if not interactions["user_id"].is_in(pl.Series([raw], dtype=interactions.schema["user_id"]).implode()).any():
        ids = interactions["user_id"]
        raise TowerrecError(
            f"--recommend-for-user {user!r}: no such user in {dataset.name} "
            f"({ids.n_unique()} users, ids {ids.min()}..{ids.max()})",
            hint="pick a user id that has ratings in the dataset",
        )
    return raw


def run_experiment(
    config: ExperimentConfig,
    *,
    retrain: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    dataset: Dataset | None = None,
    device: str | None = None,
) -> ExperimentResult:
    """Train (or reuse) one model per feature set, then write the chart, the table and recommendations.

    ``device`` (default CPU): where each model trains and is evaluated (see :func:`towerrec.runs.train_run`).
    With ``[track]`` on (an override section, or ``--track``), each feature set is one tracker run named by its
    label, in the tracker experiment ``[track] experiment`` (default: the experiment's name); see
    :mod:`towerrec.track`.

    Raises:
        TowerrecError: the device is not available (before any data is loaded).
    """
    from towerrec.experiments.plots import write_curves
    from towerrec.experiments.report import write_recommendations, write_results
    from towerrec.runs import notify_run_end, train_run
    from towerrec.devices import resolve_device
    from towerrec.track import tracker_callbacks

    resolve_device(device)
    started = time.perf_counter()
    configs = run_configs(config)
    if dataset is None:
        dataset = load_experiment_dataset(config, progress=progress, log=log)
    elif base_config(config).data.item_features and "item_features" not in dataset.meta:
        from towerrec.train.prepared import with_item_features

        dataset = with_item_features(base_config(config), dataset, warn=lambda m: log(f"warning: {m}"))
    if config.recommend_for_user is not None:
        check_user(dataset, config.recommend_for_user)
    out_dir = config.output_dir()
    with fsio.io_errors(out_dir, hint="choose a writable folder for --out"):
        out_dir.mkdir(parents=True, exist_ok=True)
    runs_root = Path(config.runs_dir)
    track = base_config(config).track
    track = replace(track, experiment=track.experiment or config.name)  # one tracker experiment, a run per set
    summaries: list[RunSummary] = []
    trained: dict[str, Any] = {}
    for i, (label, cfg) in enumerate(configs, 1):
        log(f"[{i}/{len(configs)}] feature set {label}: query {list(cfg.model.query_features)}, "
            f"candidate {list(cfg.model.candidate_features)}")
        t0 = time.perf_counter()
        result = fast_reuse(cfg, dataset, runs_root) if not retrain else None
        callbacks = tracker_callbacks(track, run_name=label, config=cfg)
        if result is not None:
            log(f"  reusing the finished run {result.run_dir} (same configuration and data; --retrain to train again)")
            notify_run_end(callbacks, result)
        else:
            result = train_run(cfg, runs_root=runs_root, retrain=retrain, progress=progress, dataset=dataset,
                               log=lambda m: log(f"  {m}"), device=device, callbacks=callbacks)
        if result.model is not None:
            trained[label] = result
        summaries.append(RunSummary(label, result.run_dir, result.reused, result.metrics,
                                    read_history(result.run_dir), time.perf_counter() - t0))
        write_results(config, summaries, out_dir)  # after every run: an interruption keeps the table so far
    outputs = write_curves(config, summaries, out_dir)
    outputs.update(write_results(config, summaries, out_dir))
    recs = None
    if config.recommend_for_user is not None:
        recs = recommendations(config, summaries, dataset, trained)
        outputs.update(write_recommendations(recs, out_dir))
    return ExperimentResult(config, summaries, time.perf_counter() - started, outputs, recs)


def fast_reuse(cfg: RunConfig, dataset: Dataset, runs_root: Path):
    """A finished run for this configuration and data, found without preparing the data again (or None).

    The data fingerprint is the one :func:`towerrec.train.prepared.prepare` computes
    (feature tables included); :func:`towerrec.runs.finished_run` reuses a run only when
    its ``meta.json`` records exactly these inputs and its files pass their checksums.
    """
    from towerrec.runs import RunResult, finished_run
    from towerrec.train.prepared import merge_items_by_title

    if cfg.model.kind == "sequential":
        return None
    fingerprint = dataset.fingerprint
    if cfg.data.candidate_key == "title":
        fingerprint = merge_items_by_title(dataset).fingerprint
    found = finished_run(cfg, fingerprint, runs_root)
    if found is None:
        return None
    return RunResult(found[0], found[1], True, None, None)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recommendations(
    config: ExperimentConfig, runs: list[RunSummary], dataset: Dataset, trained: dict[str, Any]
) -> dict[str, Any]:
    """The user's highest-rated train movies, then each model's top ``top_k`` titles."""
    from towerrec.recommend import query_time, recommend, seen_titles, uses_query_time
    from towerrec.runs import load_run
    from towerrec.train.prepared import prepare

    user = config.recommend_for_user
    out: dict[str, Any] = {"user": user, "exclude_seen": not config.include_seen, "k": config.top_k,
                           "rated": [], "models": {}}
    for summary in runs:
        run = load_run(summary.run_dir)
        data = trained[summary.label].data if summary.label in trained else prepare(run.config, dataset, progress=False)
        if not out["rated"]:
            out["rated"] = [{"title": t, "rating": r} for t, r in seen_titles(run, data, user, limit=config.top_k)]
        recs = recommend(run, data, [user], k=config.top_k, exclude_seen=not config.include_seen)[user]
        out["models"][summary.label] = [{"title": r.title, "item_id": r.item_id, "score": r.score} for r in recs]
        if uses_query_time(data):  # timestamp features: the query is asked at the data's latest time
            out.setdefault("query_time", {})[summary.label] = query_time(data)
    return out
