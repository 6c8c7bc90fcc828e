"""Experiment tracking with TensorBoard or MLflow, through the libraries' own writers (docs/tracking.md).

``[track] backend`` (or ``--track``) picks ``"none"`` (default: nothing is written), ``"tensorboard"``
(:class:`torch.utils.tensorboard.SummaryWriter`) or ``"mlflow"`` (:class:`mlflow.tracking.MlflowClient`).
Both packages are optional: ``pip install "towerrec[tensorboard]"`` / ``"towerrec[mlflow]"``.

The whole API:

``tracker_callbacks(track, *, run_name, config=None, group=None) -> list[Callback]``
    For ``train_run(config, callbacks=...)`` (:func:`towerrec.runs.train_run`): ``[]`` for ``"none"``,
    else one :class:`TrackingCallback`. The tracker run opens HERE, so an unwritable folder, an unreachable
    store or a missing package raises before any training. It logs the config (TensorBoard: as text and, at
    the end, as hparams; MLflow: params ``"section.field"``, tag ``towerrec.config_hash`` and the artifact
    ``config.toml``), then every epoch's numeric history fields (``loss``, ``seconds``, ``examples_per_s``,
    ``validation/<metric>`` or ``test/<metric>``) at step = epoch, then, when the run ends (trained, resumed
    or reused from the run cache: a reused run logs no epochs), its final metrics (:func:`run_metrics`:
    ``metrics.json`` flattened, ``test.seen_excluded.top_10_accuracy``, ``run.train_seconds``...) and closes.
    A run that raises closes as failed (``KeyboardInterrupt`` or a pruned Optuna trial, ``optuna.TrialPruned``:
    killed).

``open_tracker(track, *, run_name=None, config=None, group=None) -> Tracker``
    One tracker run for what is not a trainer run (a study's best value, an experiment's table). A context
    manager (an exception inside closes it as failed)::

        with open_tracker(track, group="study-w1", config=best_config) as tracker:
            tracker.log_final({"best": {"validation.top_10_accuracy": 0.21}, "trials": 40})

    Methods: ``log_final(metrics)`` (nested dicts flattened with ``.``; numbers and booleans kept),
    ``log_epoch(epoch, record)``, ``log_run(result)``, ``close(status="finished")``, ``callback()`` and
    ``location`` (where it writes, as text). ``run_name=None`` with a ``group`` is the group's own run.

Where it goes (``dir``: ``[track] dir``, default ``runs/track``, relative to the working folder;
``experiment``: ``[track] experiment``, else the config's name, else the group or run name):

- TensorBoard: ``dir/<experiment>/[<group>/]<run_name>``; a second run of the same name gets ``-2``, ``-3``...
  (a group's own run writes into ``dir/<experiment>/<group>``). View: ``tensorboard --logdir dir``.
- MLflow: experiment ``<experiment>`` of the SQLite store ``sqlite:///dir/mlflow.db`` with artifacts in
  ``dir/mlartifacts`` (no server, no network; MLflow 3 refuses its old ``file:`` store without an opt-in), or of
  ``[track] uri`` (a ``sqlite:`` one keeps its new experiments' artifacts in ``dir/mlartifacts`` too). A group is a parent run found by its name (tag ``towerrec.group``) and created once; its
  runs are nested under it (``mlflow.parentRunId``). Metric names keep to MLflow's alphabet (``@`` -> ``_at_``).
  MLflow's usage telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``) unless that variable is set.

Writes never break training: a write that fails once the tracker is open gives one :class:`TrackingWarning`
and the tracker skips its later writes; training and the run cache carry on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from towerrec import fsio
from towerrec.config import RunConfig, TrackConfig
from towerrec.errors import ConfigError, TowerrecError, first_line
from towerrec.runs import RunCallback, RunResult

Status = Literal["finished", "failed", "killed"]
DIR_HINT = "choose a writable folder: [track] dir"


class TrackingWarning(UserWarning):
    """A tracking write failed after the tracker opened; training went on, later writes were skipped."""


def tracker_callbacks(track: TrackConfig, *, run_name: str, config: RunConfig | None = None,
                      group: str | None = None) -> list[RunCallback]:
    """Callbacks for :func:`towerrec.runs.train_run` that track one run (module docstring): ``[]`` for
    ``backend = "none"``, else ``[TrackingCallback]`` of a tracker opened now.

    Raises:
        ConfigError: the backend's package is missing (names the ``pip install`` extra).
        TowerrecError: the tracking folder or store cannot be written (before any training).
    """
    if track.backend == "none":
        return []
    return [open_tracker(track, run_name=run_name, config=config, group=group).callback()]


def open_tracker(track: TrackConfig, *, run_name: str | None = None, config: RunConfig | None = None,
                 group: str | None = None) -> Tracker:
    """A :class:`Tracker` of ``track.backend``, open (config logged when given); see the module docstring.

    Raises:
        ValueError: neither ``run_name`` nor ``group`` given.
        ConfigError: an unknown backend (lists the valid ones), or its package is missing.
        TowerrecError: the tracking folder or store cannot be written.
    """
    if run_name is None and group is None:
        raise ValueError("open_tracker needs a run_name, or a group for the group's own run")
    name = run_name if run_name is not None else group
    experiment = track.experiment or (config.name if config is not None else None) or group or name
    if track.backend == "none":
        return Tracker()
    if track.backend == "tensorboard":
        return TensorBoardTracker(track, experiment=experiment, run_name=run_name, group=group, config=config)
    if track.backend == "mlflow":
        return MlflowTracker(track, experiment=experiment, run_name=run_name, group=group, config=config)
    raise ConfigError(f"[track] backend = {track.backend!r} is not one of ['none', 'tensorboard', 'mlflow']")


class Tracker:
    """One tracker run. This base class is the ``"none"`` backend: every method does nothing.

    Subclasses write through ``_write_*`` methods; :meth:`_guarded` turns a failing write into one
    :class:`TrackingWarning` and skips the tracker's later writes.
    """

    backend = "none"
    location = "nowhere (tracking is off)"

    def __init__(self) -> None:
        self.closed = False
        self.broken = False
        self.config: RunConfig | None = None

    # -- public -------------------------------------------------------------------------------
    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        """Every numeric field of an epoch's history record but ``epoch`` (``loss``, ``examples_per_s``,
        ``validation/top_10_accuracy``...), at step ``epoch``."""
        values = {k: float(v) for k, v in record.items() if k != "epoch" and _is_number(v)}
        self._guarded("log the epoch's values", lambda: self._write_epoch(int(epoch), values))

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        """Summary figures: nested dicts flattened with ``.`` (:func:`flatten_metrics`); non-numbers dropped."""
        values = flatten_metrics(metrics)
        self._guarded("log the final metrics", lambda: self._write_final(values))

    def log_run(self, result: RunResult) -> None:
        """A finished run's final metrics (:func:`run_metrics`), its folder and whether it was reused."""
        self.log_final(run_metrics(result.metrics))
        self._guarded("log the run folder", lambda: self._write_run_info(str(result.run_dir), result.reused))

    def close(self, status: Status = "finished") -> None:
        """Flush and end the tracker run (``status``: finished, failed or killed); later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self._guarded("close the tracker run", lambda: self._write_close(status), even_if_broken=True)

    def callback(self) -> TrackingCallback:
        """A :class:`TrackingCallback` writing to this tracker (for ``train_run(callbacks=[...])``)."""
        return TrackingCallback(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(_status_of(error) if error is not None else "finished")

    # -- backend writes (none: nothing) --------------------------------------------------------
    def _write_epoch(self, epoch: int, values: dict[str, float]) -> None: ...

    def _write_final(self, values: dict[str, float]) -> None: ...

    def _write_run_info(self, run_dir: str, reused: bool) -> None: ...

    def _write_close(self, status: Status) -> None: ...

    def _guarded(self, what: str, write: Callable[[], None], *, even_if_broken: bool = False) -> None:
        if self.broken and not even_if_broken:
            return
        try:
            write()
        except Exception as exc:  # a tracking write must never end a training run
            if not self.broken:
                warnings.warn(TrackingWarning(f"tracking ({self.backend}, {self.location}): could not {what}: "
                                              f"{first_line(exc)}; training goes on, this run's later tracking "
                                              "writes are skipped"), stacklevel=3)
            self.broken = True


class TrackingCallback(RunCallback):
    """Feeds a :class:`Tracker` from :func:`towerrec.runs.train_run`: each epoch's history record, then the
    run's final metrics; closes the tracker when the run ends or fails."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_epoch_end(self, trainer, epoch: int, record: dict[str, Any]) -> None:
        self.tracker.log_epoch(epoch, record)

    def on_run_end(self, result: RunResult) -> None:
        self.tracker.log_run(result)
        self.tracker.close("finished")

    def on_run_failed(self, error: BaseException) -> None:
        self.tracker.close(_status_of(error))


# --------------------------------------------------------------------------------- helpers


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"tfrs": {"top_10_accuracy": 0.2}}}`` -> ``{"test.tfrs.top_10_accuracy": 0.2}``: numbers
    (booleans as 0/1) at any depth, keys joined with ``.``; strings, lists and None are dropped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}."))
        elif _is_number(value):
            out[name] = float(value)
    return out


def run_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``metrics.json`` as tracked final metrics: split sections as they are (``test``,
    ``validation``), top-level figures under ``run.`` (``run.train_seconds``, ``run.examples_per_s``,
    ``run.epochs_run``...), apart from the per-epoch names of the same figures."""
    return {(key if isinstance(value, Mapping) else f"run.{key}"): value for key, value in metrics.items()}


def config_values(config: RunConfig) -> dict[str, Any]:
    """The config flattened ``"section.field" -> value`` (``name`` as is); lists and tables as JSON text."""
    out: dict[str, Any] = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                out[f"{section}.{key}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        else:
            out[section] = values
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # booleans too (as 0/1)


def _status_of(error: BaseException) -> Status:
    """``killed`` for an interruption or a pruned Optuna trial (``optuna.TrialPruned``), else ``failed``."""
    optuna = sys.modules.get("optuna")  # never imported here: only an optuna already in use can prune
    pruned = optuna is not None and isinstance(error, getattr(optuna, "TrialPruned", ()))
    return "killed" if isinstance(error, KeyboardInterrupt) or pruned else "failed"


def _folder_name(name: str, what: str) -> str:
    """``name`` as one folder name: path separators and other odd characters become ``_``."""
    if not name.strip():
        raise ValueError(f"tracking: the {what} name is empty")
    return re.sub(r"[^\w.+=@-]", "_", name).strip(".") or "_"


def _missing(package: str, extra: str, backend: str) -> ConfigError:
    return ConfigError(f'[track] backend = "{backend}" needs the {package} package: pip install "towerrec[{extra}]"')


def _make_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) and prove it writable, before any training starts."""
    with fsio.io_errors(folder, hint=DIR_HINT):
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()


# ------------------------------------------------------------------------------ TensorBoard


class TensorBoardTracker(Tracker):
    """Event files of :class:`torch.utils.tensorboard.SummaryWriter` in ``dir/<experiment>/[<group>/]<run>``:
    per-epoch scalars, the config as text (tag ``config``), and at the end the final metrics as scalars and,
    with a config, as hparams (``add_hparams`` into the same folder, so the HParams tab pairs them).

    Raises:
        ConfigError: tensorboard is not installed.
        TowerrecError: the folder cannot be created or written.
    """

    backend = "tensorboard"

    def __init__(self, track: TrackConfig, *, experiment: str, run_name: str | None, group: str | None,
                 config: RunConfig | None) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard", self.backend) from None
        parent = Path(track.dir) / _folder_name(experiment, "experiment")
        if group is not None:
            parent = parent / _folder_name(group, "group")
        _make_dir(parent)
        folder = parent if run_name is None else _new_folder(parent, _folder_name(run_name, "run"))
        self.folder = folder
        self.location = str(folder)
        with fsio.io_errors(folder, hint=DIR_HINT):
            self.writer = SummaryWriter(log_dir=str(folder))
        self.config = config
        if config is not None:
            text = "\n".join("    " + line for line in config.to_toml().splitlines())  # Markdown code block
            self._guarded("log the config", lambda: self.writer.add_text("config", text))

    def _write_epoch(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def _write_final(self, values: dict[str, float]) -> None:
        if self.config is not None and values:
            hparams = config_values(self.config)
            self.writer.add_hparams(hparams, values, run_name=".")  # ".": this run's own folder
        else:
            for key, value in values.items():
                self.writer.add_scalar(key, value, 0)
        self.writer.flush()

    def _write_run_info(self, run_dir: str, reused: bool) -> None:
        self.writer.add_text("run", f"run directory: {run_dir}" + (" (reused from the run cache)" if reused else ""))

    def _write_close(self, status: Status) -> None:
        if status != "finished":
            self.writer.add_text("status", status)
        self.writer.close()


def _new_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``... when taken (mkdir is atomic: no two runs share one)."""
    for i in itertools.count(1):
        folder = parent / (name if i == 1 else f"{name}-{i}")
        try:
            with fsio.io_errors(folder, hint=DIR_HINT):
                folder.mkdir()
            return folder
        except TowerrecError as exc:
            if not isinstance(exc.__cause__, FileExistsError):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------------- MLflow

METRIC_KEY = re.compile(r"[^\w./\- :]")  # MLflow's metric and param name alphabet


def mlflow_key(name: str) -> str:
    """``name`` in MLflow's metric alphabet: ``ndcg@10`` -> ``ndcg_at_10``, other odd characters -> ``_``."""
    return METRIC_KEY.sub("_", name.replace("@", "_at_"))


class MlflowTracker(Tracker):
    """One MLflow run, written with :class:`mlflow.tracking.MlflowClient` (no global active run, so nested
    and concurrent trackers do not interfere): params, per-epoch metrics at step = epoch, final metrics,
    the ``config.toml`` artifact, tags ``towerrec.config_hash``, ``towerrec.run_dir``, ``towerrec.reused``.

    Raises:
        ConfigError: mlflow is not installed.
        TowerrecError: the store cannot be opened or written (its URI named).
    """

    backend = "mlflow"

    def __init__(self, track: TrackConfig, *, experiment: str, run_name: str | None, group: str | None,
                 config: RunConfig | None) -> None:
        super().__init__()
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports leave the machine
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow", self.backend) from None
        root = Path(track.dir).absolute()
        local = track.uri is None
        if local:
            _make_dir(root)
        uri = track.uri or f"sqlite:///{root / 'mlflow.db'}"
        self.location = f"MLflow {uri}, experiment {experiment!r}"
        self.config = config
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the store's SQLAlchemy notices
                self.client = MlflowClient(tracking_uri=uri)
                artifacts = local or uri.startswith("sqlite:")  # else MLflow's default: ./mlruns of the cwd
                experiment_id = self._experiment_id(experiment, (root / "mlartifacts").as_uri() if artifacts else None)
                if group is not None:
                    with fsio.locked(root / "mlflow-groups", what="tracking groups") if local else contextlib.nullcontext():
                        parent = self._group_run(experiment_id, group)
                if run_name is None:
                    self.run_id = parent
                    self.client.update_run(parent, status="RUNNING")
                else:
                    tags = {"towerrec.group": group, "mlflow.parentRunId": parent} if group is not None else {}
                    self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        except TowerrecError:
            raise
        except Exception as exc:
            raise TowerrecError(f"[track] MLflow store {uri}: {first_line(exc)}",
                                hint=DIR_HINT + " or [track] uri" if local else "check [track] uri") from exc
        self.location = f"{self.location}, run {self.run_id}"
        if config is not None:
            self._guarded("log the config", lambda: self._write_config(config, reopened=run_name is None))

    def _experiment_id(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _group_run(self, experiment_id: str, group: str) -> str:
        """The group's parent run (tags ``towerrec.role = group``, ``towerrec.group``), created once, left finished."""
        for run in self.client.search_runs([experiment_id], "tags.`towerrec.role` = 'group'", max_results=5000):
            if run.data.tags.get("towerrec.group") == group:
                return run.info.run_id
        run = self.client.create_run(experiment_id, run_name=group,
                                     tags={"towerrec.role": "group", "towerrec.group": group})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def _write_config(self, config: RunConfig, *, reopened: bool) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(mlflow_key(k), (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_VAL_LENGTH])
                  for k, v in config_values(config).items()]
        if reopened and self.client.get_run(self.run_id).data.params:
            params = []  # a group run keeps the params it was first given (MLflow refuses to change one)
        for start in range(0, max(len(params), 1), MAX_PARAMS_TAGS_PER_BATCH):
            batch = params[start:start + MAX_PARAMS_TAGS_PER_BATCH]
            tags = [RunTag("towerrec.config_hash", config.hash())] if start == 0 else []
            self.client.log_batch(self.run_id, params=batch, tags=tags)
        self.client.log_text(self.run_id, config.to_toml(), "config.toml")

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    def _write_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self._log_metrics(values, epoch)

    def _write_final(self, values: dict[str, float]) -> None:
        self._log_metrics(values, 0)

    def _write_run_info(self, run_dir: str, reused: bool) -> None:
        self.client.set_tag(self.run_id, "towerrec.run_dir", run_dir)
        self.client.set_tag(self.run_id, "towerrec.reused", str(reused).lower())

    def _write_close(self, status: Status) -> None:
        self.client.set_terminated(self.run_id, status.upper())
