"""Run a hyperparameter study: an Optuna study whose trials are ordinary, cached towerrec runs.

Each trial sets the searched fields (:mod:`towerrec.tune.space`) on the base config (with a
validation split, :func:`towerrec.tune.objective.with_validation`) and trains it with
:func:`towerrec.runs.train_run`: the run cache keys it by config hash and data, so an identical
trial is never trained twice and an interrupted one resumes from its checkpoint. The sampler is
Optuna's TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"), seeded from
``[train] seed``; the pruner (median or successive halving, Li et al. 2018 "ASHA") hears the
validation metric of every evaluated epoch (:class:`~towerrec.tune.objective.PruningCallback`).

The study folder holds ``study.json`` (the base config's hash, the space, the data fingerprint,
metric, direction and validation split: a later ``tune`` into the folder must match them),
``study.db`` (Optuna's SQLite storage: rerunning resumes) and the outputs of
:mod:`towerrec.tune.report`. A file lock keeps two ``tune`` processes out of one folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from towerrec import __version__, fsio
from towerrec.config import RunConfig, TrackConfig
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, TowerrecError, first_line
from towerrec.runs import RunCallback, RunResult, train_run
from towerrec.track import open_tracker, tracker_callbacks
from towerrec.train.trainer import Callback, Trainer
from towerrec.tune.objective import (
    DEFAULT_VALIDATION_FRACTION,
    PruningCallback,
    check_metric,
    default_direction,
    default_metric,
    validation_field,
    validation_value,
    with_validation,
)
from towerrec.tune.report import StudyResult, write_outputs
from towerrec.tune.space import SearchSpace, check_direction, check_pruner, check_validation_fraction, load_space

STUDY_FILE = "study.json"
STUDY_DB = "study.db"
STUDY_NAME = "towerrec"
STUDY_FORMAT = 1
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def tune(
    config: RunConfig,
    space: str | Path | dict[str, Any] | SearchSpace,
    *,
    trials: int,
    timeout: float | None = None,
    metric: str | None = None,
    direction: str | None = None,
    study_dir: str | Path | None = None,
    pruner: str | Any | None = None,
    runs_root: str | Path = Path("runs"),
    dataset: Dataset | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    validation_fraction: float | None = None,
    device: str | None = None,
    enqueue: Sequence[dict[str, Any]] = (),
    track: TrackConfig | None = None,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Search ``space`` around ``config`` until the study holds ``trials`` finished trials, then write its outputs.

    Args:
        config: the base configuration; each trial changes the searched fields.
        space: a space file, a dict shaped like one, or a :class:`~towerrec.tune.space.SearchSpace`.
        trials: finished trials the study should hold (complete, pruned or failed); a rerun with more adds
            the difference, a rerun with the same number only resumes what was interrupted.
        timeout: stop starting trials after this many seconds (the running trial finishes).
        metric / direction / pruner / validation_fraction: override the space's ``[study]`` table; defaults:
            :func:`~towerrec.tune.objective.default_metric`, maximize (minimize for RMSE / MAE), ``"median"``
            (or an ``optuna.pruners.BasePruner``), 0.1 of train when the config has no validation split.
        study_dir: the study folder (default ``studies/<config name>``).
        runs_root: where the trials' run directories go (the run cache ``towerrec train`` uses).
        dataset: the data (default: the config's dataset, loaded once).
        progress: a progress bar over the trials.
        callbacks: extra trainer callbacks for every trial's run (tracking).
        device: where trials train (``"cpu"``, ``"cuda"``...; not part of the configuration).
        enqueue: points to try first (config values by ``"section.field"``, e.g. the base config's own),
            each once per study (Optuna's ``enqueue_trial``).
        track: where to track the study (default: the config's ``[track]``; :mod:`towerrec.track`): each
            trial is a run ``trial-NNN`` of the group ``tune-<study folder name>`` (epochs, validation metrics
            and final validation metrics; never a trial's test metrics), and the group's own run gets the best
            trial's validation value and test metrics once, at the end.
        log: receives one line per finished trial and the runs' messages.

    Returns:
        :class:`StudyResult`. Selection reads validation metrics only; the chosen run's test metrics
        are reported once, in the result and the outputs.

    Raises:
        ValueError: ``trials`` < 1 or ``timeout`` <= 0.
        ConfigError: before any trial: a bad space (named with its file and key), a metric this run
            kind does not report, a direction other than maximize / minimize, an unknown pruner, a study
            folder holding another config, space, data, metric or validation split.
        TowerrecError: another process holds the study folder; no trial completed.
    """
    optuna = _require_optuna()
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    space = load_space(space)
    fraction = check_validation_fraction(
        validation_fraction if validation_fraction is not None
        else space.study.validation_fraction or DEFAULT_VALIDATION_FRACTION, "validation_fraction")
    trial_base = with_validation(config, fraction)
    metric = check_metric(trial_base, metric or space.study.metric or default_metric(trial_base))
    direction = check_direction(direction or space.study.direction or default_direction(metric), "direction")
    pruner = pruner or space.study.pruner or "median"
    optuna_pruner = _pruner(optuna, check_pruner(pruner) if isinstance(pruner, str) else pruner)
    space.check(trial_base)
    starts = [space.to_optuna(point) for point in enqueue]
    study_dir = Path(study_dir) if study_dir is not None else Path("studies") / config.name
    runs_root = Path(runs_root)
    for folder, option in ((study_dir, "study folder"), (runs_root, "runs folder")):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{option} {folder} is a file, not a folder")
    if dataset is None:
        from towerrec.data.registry import load_dataset

        dataset = load_dataset(config.data.dataset, config.data.data_dir, progress=progress,
                               duplicate_titles=config.data.duplicate_titles)
    place = validation_field(config)
    record = {
        "format": STUDY_FORMAT,
        "config_name": config.name,
        "config_hash": config.hash(),
        "trial_config_hash": trial_base.hash(),
        "space": space.to_dict(),
        "data_fingerprint": dataset.fingerprint,
        "metric": metric,
        "direction": direction,
        "validation": ({"field": "built into the split"} if place is None else
                       {"field": ".".join(place), "fraction": getattr(getattr(trial_base, place[0]), place[1])}),
    }
    track = config.track if track is None else track
    group = f"tune-{study_dir.resolve().name}"
    with fsio.locked(study_dir / "study", what="study", timeout_s=0):
        _check_or_write_record(study_dir, record)
        with _quiet_optuna(optuna), open_tracker(track, group=group, config=trial_base) as study_tracker:
            study = optuna.create_study(study_name=STUDY_NAME, storage=_storage(optuna, study_dir),
                                        direction=direction, load_if_exists=True)
            if track.backend != "none":
                log(f"tracking to {study_tracker.location}")
            requeued = _requeue_interrupted(optuna, study, log)
            for point in starts:
                study.enqueue_trial(point, skip_if_exists=True)
            done = sum(1 for t in study.trials if _counts(t))
            study.sampler = optuna.samplers.TPESampler(seed=(config.train.seed + len(study.trials)) % 2**32)
            study.pruner = optuna_pruner
            remaining = trials - done
            if remaining > 0:
                log(f"study {study_dir}: {done} of {trials} trials finished"
                    f"{f', resuming {requeued} interrupted' if requeued else ''}; searching {len(space.params)} "
                    f"parameter(s) for the best validation {metric} ({direction})")
                runner = _TrialRunner(space, trial_base, metric, direction, trials, done, runs_root, dataset,
                                      list(callbacks), device, log, track, group)
                with runner.progress_bar(progress, remaining):
                    study.optimize(runner.objective, n_trials=remaining, timeout=timeout,
                                   callbacks=[runner.after_trial], catch=(TowerrecError,))
            else:
                log(f"study {study_dir}: already holds {done} finished trials (asked for {trials}); "
                    "writing its outputs")
            result = write_outputs(study, space, trial_base, record, study_dir, runs_root=runs_root,
                                   dataset=dataset, device=device, log=log)
            study_tracker.log_final({"best": {"trial": result.best_trial, f"validation.{metric}": result.best_value},
                                     "test": result.test_metrics,
                                     "trials": {row["state"]: sum(r["state"] == row["state"] for r in result.rows)
                                                for row in result.rows}})
            return result


def _require_optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is in the [tune] extra
        raise TowerrecError("towerrec tune needs Optuna", hint="pip install 'towerrec[tune]'") from None
    return optuna


def _pruner(optuna, pruner: Any) -> Any:
    if pruner == "median":
        return optuna.pruners.MedianPruner()
    if pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if pruner == "none":
        return optuna.pruners.NopPruner()
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise TypeError(f"pruner must be one of 'median', 'successive-halving', 'none' or an optuna pruner, "
                    f"got {type(pruner).__name__}")


def _storage(optuna, study_dir: Path) -> Any:
    path = (study_dir / STUDY_DB).resolve()
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})


@contextlib.contextmanager
def _quiet_optuna(optuna) -> Iterator[None]:
    """Optuna logs only errors (towerrec prints one line per trial) and keeps its experimental warnings."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


def _check_or_write_record(study_dir: Path, record: dict[str, Any]) -> None:
    """Write ``study.json`` into a new folder; in an existing one, refuse a study of other inputs."""
    path = study_dir / STUDY_FILE
    if not path.is_file():
        others = sorted(p.name for p in study_dir.iterdir() if not p.name.startswith(".")) if study_dir.is_dir() else []
        if others:
            raise ConfigError(f"{study_dir}: not a study folder towerrec wrote (holds {', '.join(others[:5])}, no "
                              f"{STUDY_FILE})", hint="choose an empty or new --study-dir")
        fsio.atomic_write_text(path, _json(record))
        return
    old = fsio.read_json(path, hint="delete the study folder to start the study over")
    if not isinstance(old, dict):
        raise ConfigError(f"{path}: not a towerrec study record", hint="choose another --study-dir")
    checks = (
        ("config_hash", "another config", "config"),
        ("space", "another search space", None),
        ("data_fingerprint", "other data", None),
        ("metric", "another metric", "metric"),
        ("direction", "another direction", "direction"),
        ("trial_config_hash", "another validation split", "validation"),
    )
    for key, what, shown in checks:
        if old.get(key) != record.get(key):
            detail = ""
            if shown == "config":
                detail = f" ({old.get('config_name')!r}, hash {old.get('config_hash')}; this config: " \
                         f"{record['config_name']!r}, hash {record['config_hash']})"
            elif shown in ("metric", "direction"):
                detail = f" ({old.get(key)!r}, not {record[key]!r})"
            elif shown == "validation":
                detail = f" ({_validation_text(old.get('validation'))}, not {_validation_text(record['validation'])})"
            raise ConfigError(f"{study_dir}: holds a study of {what}{detail}",
                              hint="choose another --study-dir, or delete that folder to start over")


def _validation_text(value: Any) -> str:
    if not isinstance(value, dict):
        return "unknown"
    return value.get("field", "?") + (f" = {value['fraction']:g}" if "fraction" in value else "")


def _json(value: Any) -> str:
    import json

    return json.dumps({**value, "towerrec_version": __version__}, indent=2)


def _counts(trial: Any) -> bool:
    """A trial the study counts as finished: complete, pruned, or failed for a reason of its own."""
    return trial.state.name in FINISHED and not trial.user_attrs.get("interrupted")


def _requeue_interrupted(optuna, study: Any, log: Callable[[str], None]) -> int:
    """Trials a killed or interrupted ``tune`` left behind run again (their runs resume from their checkpoints).

    A trial still marked running is stale (the study folder's lock is ours), so it is marked failed and
    interrupted; each interrupted trial's parameters are enqueued once (the study's ``requeued`` list)."""
    storage = study._storage
    requeued = set(study.user_attrs.get("requeued", []))
    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        elif not trial.user_attrs.get("interrupted"):
            continue
        if trial.number in requeued or not trial.params:
            continue
        study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number}, skip_if_exists=False)
        requeued.add(trial.number)
        count += 1
    if count:
        study.set_user_attr("requeued", sorted(requeued))
    return count


class _TrialRunner:
    """The objective (one cached run per trial), the per-trial line and the progress bar."""

    def __init__(self, space: SearchSpace, base: RunConfig, metric: str, direction: str, trials: int, done: int,
                 runs_root: Path, dataset: Dataset, callbacks: list[Callback], device: str | None,
                 log: Callable[[str], None], track: TrackConfig, group: str) -> None:
        self.space, self.base, self.metric, self.direction = space, base, metric, direction
        self.track, self.group = track, group
        self.trials, self.finished = trials, done
        self.runs_root, self.dataset, self.callbacks, self.device, self.log = runs_root, dataset, callbacks, device, log
        self.bar: Any = None
        self.task: Any = None

    @contextlib.contextmanager
    def progress_bar(self, show: bool, total: int) -> Iterator[None]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True, disable=not show) as bar:
            self.bar, self.task = bar, bar.add_task("trials", total=total)
            try:
                yield
            finally:
                self.bar = None

    def objective(self, trial: Any) -> float:
        import optuna

        values = {p.key: p.decode(p.suggest(trial)) for p in self.space.params}
        pruning = PruningCallback(trial, self.metric)
        callbacks = [pruning, _EpochProgress(self, trial.number), *self.callbacks]
        started = time.perf_counter()
        try:
            config = self.space.apply(self.base, values)  # a combination the config layer refuses: a failed trial
            callbacks += [_WithoutTest(c) for c in tracker_callbacks(self.track, run_name=f"trial-{trial.number:03d}",
                                                                   config=config, group=self.group)]
            result = train_run(config, runs_root=self.runs_root, progress=False, dataset=self.dataset,
                               log=self.log, device=self.device, callbacks=callbacks)
        except optuna.TrialPruned:
            trial.set_user_attr("epochs", pruning.pruned_at)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            raise
        except TowerrecError as exc:
            trial.set_user_attr("error", exc.message)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        trial.set_user_attr("epochs", result.metrics.get("epochs_run"))
        trial.set_user_attr("reused", result.reused)
        trial.set_user_attr("run_dir", str(result.run_dir.resolve()))
        return validation_value(config, result.metrics, self.metric)

    def after_trial(self, study: Any, trial: Any) -> None:
        """One line per finished trial: n/N, state, parameters, value, best so far."""
        self.finished += 1
        params = " ".join(f"{k}={_short(v)}" for k, v in self.space.decode(trial.params).items())
        state = trial.state.name
        if state == "COMPLETE":
            what = f"{self.metric} {trial.value:.4f}" + (" (reused run)" if trial.user_attrs.get("reused") else "")
        elif state == "PRUNED":
            last = trial.intermediate_values.get(trial.user_attrs.get("epochs"))
            what = f"pruned at epoch {trial.user_attrs.get('epochs')}" + (
                f" ({self.metric} {last:.4f})" if last is not None else "")
        else:
            what = f"failed: {trial.user_attrs.get('error') or 'see --debug'}"
        best = ""
        with contextlib.suppress(ValueError):
            best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
        self.log(f"trial {self.finished}/{self.trials} [#{trial.number}] {params}: {what}{best}")
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description="trials")


class _WithoutTest(RunCallback):
    """A trial's tracking callback without the run's test metrics: a study shows test figures once, for the
    chosen config; a pruned trial logs the epoch it was pruned at."""

    def __init__(self, inner: RunCallback) -> None:
        self.inner = inner

    def on_train_begin(self, trainer: Trainer) -> None:
        self.inner.on_train_begin(trainer)

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.inner.on_batch_end(trainer, step, loss)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self.inner.on_epoch_end(trainer, epoch, record)

    def on_train_end(self, trainer: Trainer, result: Any) -> None:
        self.inner.on_train_end(trainer, result)

    def on_run_end(self, result: RunResult) -> None:
        metrics = {k: v for k, v in result.metrics.items() if k != "test"}
        self.inner.on_run_end(dataclasses.replace(result, metrics=metrics))

    def on_run_failed(self, error: BaseException) -> None:
        import optuna

        tracker = getattr(self.inner, "tracker", None)
        if tracker is not None and isinstance(error, optuna.TrialPruned):
            tracker.log_final({"pruned": True})
        self.inner.on_run_failed(error)


class _EpochProgress(Callback):
    """Shows the running trial's epoch on the study's progress bar."""

    def __init__(self, runner: _TrialRunner, number: int) -> None:
        self.runner, self.number = runner, number

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        runner = self.runner
        if runner.bar is not None:
            runner.bar.update(runner.task, description=f"trial #{self.number}: epoch {epoch}/{trainer.epochs}, "
                                                       f"loss {record['loss']:.4f}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return first_line(ValueError(str(value)), limit=60)
