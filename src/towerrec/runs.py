"""Run directories: train once, reuse only while configuration AND data match exactly.

Every kind of run (two-tower, baseline, sequential) takes one path: prepare the
data of the config's kind, build the model, train it (:class:`towerrec.train.trainer.Trainer`;
baselines are fitted in closed form), evaluate test (and validation, when the data
has one) under both protocols, finish the run.

``runs/<name>-<config hash>-<data key>/`` holds config.toml, model.json +
model.safetensors (the model as :func:`towerrec.saving.write_model_files` stores any
model: :func:`load_run` rebuilds it from JSON), history.jsonl, metrics.json, meta.json,
catalogue.parquet (item ids, titles and training counts), features.json (two-tower and
baseline runs: the fitted features), users.parquet (sequential runs with a user
embedding: the training users in embedding order) and, while training, checkpoints/. The data
key hashes the FULL data fingerprint (item/user feature tables included), and
``meta.json``, written when training starts, records the config hash and that
fingerprint: a run is reused or resumed only when both match, never on a name
match alone. When training ends ``meta.json`` gains the SHA-256 of every file
and ``finished: true``; loading checks them all, and the config against its hash.
Training holds a file lock on the run, so two ``train`` of one run never interleave.
Under data parallelism (torchrun) rank 0 alone takes that lock and writes the folder;
the other processes train beside it and read only its checkpoint (to resume).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from towerrec import __version__, fsio, parallel, saving
from towerrec.config import MULTI_TASK, RANKING_KINDS, RunConfig, TrackConfig, config_from_dict, load_config
from towerrec.data.tables import Dataset, item_aliases
from towerrec.errors import ConfigError, TowerrecError, first_line, listing
from towerrec.features import FittedFeatures
from towerrec.model import Model, RankingModel
from towerrec.train import distributed
from towerrec.train.checkpoint import RETRAIN_HINT, load_json, save_json
from towerrec.train.evaluate import evaluate_both_protocols, evaluate_ranking, ranking_baselines
from towerrec.train.models import build_model, fit_baseline
from towerrec.train.prepared import PreparedData, prepare
from towerrec.train.sequence_data import SequenceData, prepare_sequences, require_examples
from towerrec.devices import resolve_device
from towerrec.train.trainer import Callback, Trainer

RUN_FORMAT_VERSION = 3  # 3: the model as model.json + model.safetensors (towerrec.saving), any kind of model
META = "meta.json"
USERS_FILE = "users.parquet"  # a sequential run's training users, when it has a user embedding
RUN_FILES = ("config.toml", "features.json", "model.json", "model.safetensors", "history.jsonl", "metrics.json",
             META, "catalogue.parquet", USERS_FILE, "checkpoints")
"""Everything :func:`train_run` writes into a run directory (plus ``index-*`` folders of ``index build``)."""


def data_key(data_fingerprint: str) -> str:
    """8 hex digits naming a run's data: a hash of the FULL fingerprint (feature tables included)."""
    return hashlib.sha256(data_fingerprint.encode()).hexdigest()[:8]


def run_dir_for(config: RunConfig, data_fingerprint: str, root: Path) -> Path:
    """``root/<name>-<config hash>-<data key>``: the folder of the run these inputs name."""
    return Path(root) / f"{config.name}-{config.hash()}-{data_key(data_fingerprint)}"


def run_inputs(config: RunConfig, data_fingerprint: str) -> dict[str, Any]:
    """What a run directory's ``meta.json`` must record for the run to be reused or resumed."""
    return {"format_version": RUN_FORMAT_VERSION, "config_hash": config.hash(), "data_fingerprint": data_fingerprint}


def _read_meta(run_dir: Path) -> dict[str, Any] | None:
    """``meta.json`` as a dict, or None when absent or unreadable (the run is then not reused)."""
    try:
        meta = json.loads((run_dir / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _stale_reason(meta: dict[str, Any] | None, inputs: dict[str, Any]) -> str | None:
    if meta is None:
        return "it has no readable meta.json"
    for key, label in (("format_version", "run format"), ("config_hash", "configuration"),
                       ("data_fingerprint", "data")):
        if meta.get(key) != inputs[key]:
            return f"its {label} differs"
    return None


def finished_run(config: RunConfig, data_fingerprint: str, runs_root: Path) -> tuple[Path, dict] | None:
    """The directory and metrics of the finished run of exactly these inputs, or None.

    A run counts only when its ``meta.json`` records the same run format, config hash
    and FULL data fingerprint and marks the run finished; its files are then checked
    against their recorded SHA-256.

    Raises:
        TowerrecError: the matching run's files are damaged or changed (named; hint ``--retrain``).
    """
    run_dir = run_dir_for(config, data_fingerprint, runs_root)
    meta = _read_meta(run_dir)
    if meta is None or _stale_reason(meta, run_inputs(config, data_fingerprint)) or not meta.get("finished"):
        return None
    verify_run_files(run_dir, meta)
    return run_dir, load_json(run_dir / "metrics.json")


def verify_run_files(run_dir: Path, meta: dict[str, Any]) -> None:
    """Recompute the SHA-256 of every file ``meta.json`` lists (see :func:`towerrec.fsio.verify_checksums`)."""
    recorded = meta.get("checksums")
    if not isinstance(recorded, dict) or "model.safetensors" not in recorded:
        raise TowerrecError(f"{run_dir / META}: lists no file checksums", hint=RETRAIN_HINT)
    fsio.verify_checksums(run_dir, recorded, hint=RETRAIN_HINT)


def is_run_dir(folder: Path) -> bool:
    """True when ``folder`` provably holds a run towerrec wrote (and nothing else), so it may be deleted."""
    folder = Path(folder)
    if not folder.is_dir() or not ((folder / META).is_file() or (folder / "config.toml").is_file()):
        return False
    return all(entry.name in RUN_FILES or entry.name.startswith(("index-", ".")) for entry in folder.iterdir())


def _remove_run_dir(run_dir: Path) -> None:
    if not is_run_dir(run_dir):
        entries = sorted(e.name for e in run_dir.iterdir() if e.name not in RUN_FILES)
        raise TowerrecError(
            f"{run_dir}: not removed: it is not a run directory towerrec wrote (holds {listing(entries)})",
            hint="move those files away, or choose another --runs folder",
        )
    with fsio.io_errors(run_dir):
        shutil.rmtree(run_dir)


def open_run_dir(config: RunConfig, fingerprint: str, runs_root: Path, *, retrain: bool, log) -> tuple[Path, dict | None]:
    """The run's directory, ready to train into, plus its metrics when a finished run can be reused.

    Call it holding the run's lock (see :func:`train_in_run_dir`). A directory of other
    inputs (older format, hash collision) or ``retrain`` is deleted first, but only when
    it provably is a run directory; an unfinished run of the same inputs is kept to resume.
    """
    run_dir = run_dir_for(config, fingerprint, runs_root)
    inputs = run_inputs(config, fingerprint)
    if run_dir.exists():
        stale = _stale_reason(_read_meta(run_dir), inputs)
        if retrain or stale:
            if stale and not retrain:
                log(f"{run_dir} holds another run ({stale}); training it again")
            _remove_run_dir(run_dir)
        elif (finished := finished_run(config, fingerprint, runs_root)) is not None:
            log(f"reusing the finished run {run_dir} (same configuration and data; --retrain to train again)")
            return finished
    text = _config_toml(dataclasses.replace(config, track=TrackConfig()))  # shared by runs tracked anywhere
    with fsio.io_errors(run_dir, hint="choose a writable folder for the runs (--runs)"):
        run_dir.mkdir(parents=True, exist_ok=True)
    fsio.atomic_write_text(run_dir / "config.toml", text)
    save_json({**inputs, "towerrec_version": __version__, "finished": False}, run_dir / META)
    return run_dir, None


def _config_toml(config: RunConfig) -> str:
    """``config`` as TOML, refusing one that would read back as another configuration (load_run checks)."""
    text = config.to_toml()
    again = config_from_dict(tomllib.loads(text))
    if again.hash() != config.hash():
        before, after = config.to_dict(), again.to_dict()
        keys = [f"[{section}] {key}" for section in sorted(set(before) | set(after))
                if isinstance(before.get(section, {}), dict)
                for key in sorted(set(before.get(section, {})) | set(after.get(section, {})))
                if before.get(section, {}).get(key) != after.get(section, {}).get(key)]
        raise ConfigError(f"{', '.join(keys)} cannot be stored in the run's config.toml: TOML has no null, so it "
                          "would read back as the default", hint="give those keys explicit values")
    return text


def finish_run(run_dir: Path, config: RunConfig, fingerprint: str, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json``, then ``meta.json`` with the SHA-256 of every run file (marks it finished)."""
    save_json(metrics, run_dir / "metrics.json")
    names = [p.name for p in run_dir.iterdir() if p.is_file() and p.name not in (META, "config.toml")
             and not p.name.startswith(".")]
    meta = {**run_inputs(config, fingerprint), "towerrec_version": __version__, "finished": True,
            "checksums": fsio.checksums(run_dir, names)}
    save_json(meta, run_dir / META)  # last: marks the run finished
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def train_in_run_dir(config: RunConfig, fingerprint: str, runs_root: Path, *, retrain: bool, log,
                     data: Any, train: Callable[[Path], tuple[dict[str, Any], Model]]) -> RunResult:
    """The bookkeeping every kind of run shares: lock, reuse / resume / retrain, finish.

    Holds an inter-process lock on the run directory: a second ``train`` of the same
    run waits (saying so), then reuses the finished result. ``train(run_dir)`` writes
    the run's files and returns ``(metrics, model)``. Under data parallelism only rank 0
    locks, opens and finishes the folder; every process learns its decision (reuse or
    train) and, at the end, its metrics; ``train`` runs in every process.
    """
    run_dir = run_dir_for(config, fingerprint, runs_root)
    main = distributed.is_main_process()
    with fsio.locked(run_dir, what="run", log=log) if main else nullcontext():
        existed = run_dir.exists()
        finished = None
        if main:
            run_dir, finished = open_run_dir(config, fingerprint, runs_root, retrain=retrain, log=log)
        run_dir, finished = distributed.broadcast_object((run_dir, finished))
        if finished is not None:
            return RunResult(run_dir, finished, True, data, None)
        try:
            metrics, model = train(run_dir)
        except BaseException:
            if main:
                _drop_if_nothing_to_resume(run_dir, existed)
            raise
        if main:
            finish_run(run_dir, config, fingerprint, metrics)
        metrics = distributed.broadcast_object(metrics)
    return RunResult(run_dir, metrics, False, data, model)


def _drop_if_nothing_to_resume(run_dir: Path, existed: bool) -> None:
    """A run folder this call created, whose training failed before its first checkpoint, is removed.

    Everything in it was written by this process under the run's lock, so it is provably
    ours; a folder with a checkpoint is kept so that the next ``train`` resumes from it.
    """
    checkpoints = run_dir / "checkpoints"
    if existed or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


class RunCallback(Callback):
    """A trainer :class:`~towerrec.train.trainer.Callback` that also hears how the whole run ended
    (:func:`train_run` calls these hooks; :mod:`towerrec.track` uses them).

    A reused run calls no trainer hook but still calls :meth:`on_run_end`, so the callback sees every run.
    """

    def on_run_end(self, result: RunResult) -> None:
        """After the run finished (trained, resumed or reused): its folder, ``metrics.json`` and ``reused``."""

    def on_run_failed(self, error: BaseException) -> None:
        """The run raised ``error`` (bad data, an interruption...) before it finished; ``error`` is re-raised."""


def notify_run_end(callbacks: Sequence[Callback], result: RunResult) -> None:
    """Call :meth:`RunCallback.on_run_end` of every :class:`RunCallback` among ``callbacks`` (for a caller
    that reuses a finished run without :func:`train_run`, as the experiment runner does)."""
    for callback in callbacks:
        if isinstance(callback, RunCallback):
            callback.on_run_end(result)


def _notify_run_failed(callbacks: Sequence[Callback], error: BaseException) -> None:
    for callback in callbacks:
        if isinstance(callback, RunCallback):
            callback.on_run_failed(error)


@dataclass
class RunResult:
    """What :func:`train_run` gives back: the run's folder, its metrics, whether a finished run was
    reused, the prepared data (two-tower / baseline: ``PreparedData``; sequential: ``SequenceData``)
    and the trained model (None when reused)."""

    run_dir: Path
    metrics: dict[str, Any]
    reused: bool
    data: PreparedData | SequenceData | None
    model: Model | None


def prepare_run_data(config: RunConfig, dataset: Dataset | None = None, *,
                     progress: bool = True) -> PreparedData | SequenceData:
    """The data of the config's kind: :func:`~towerrec.train.sequence_data.prepare_sequences` for
    ``[model] kind = "sequential"`` (refusing a protocol that leaves a part without examples),
    :func:`~towerrec.train.prepared.prepare` for every other kind.

    Raises:
        DataError / ConfigError: the data or configuration cannot give the run its splits.
    """
    if config.model.kind != "sequential":
        return prepare(config, dataset, progress=progress)
    data = prepare_sequences(config, dataset, progress=progress)
    require_examples(config, config.data.dataset if dataset is None else dataset.name, data)
    return data


def train_run(
    config: RunConfig,
    *,
    runs_root: Path = Path("runs"),
    retrain: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    log=print,
    device: str | torch.device | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train (or reuse, or resume) the run this configuration names, then evaluate it on test (and validation).

    One path for every kind: :func:`prepare_run_data` -> :func:`~towerrec.train.models.build_model` ->
    :meth:`Trainer.from_config <towerrec.train.trainer.Trainer.from_config>` (baselines: fitted) ->
    both evaluation protocols -> :func:`finish_run`. Relative data paths in ``config`` are made
    absolute first (the run's stored config then works from any folder; see
    :func:`towerrec.data.registry.with_absolute_paths`). ``device`` (default ``"cpu"``; ``"cuda"``...)
    is where the model trains and is evaluated; it is not part of the configuration (nor of its hash).
    ``callbacks`` (:class:`~towerrec.train.trainer.Callback`) go to the trainer of a trainable model
    (tracking, pruning); they see only epochs trained in this call, not a reused run. A :class:`RunCallback`
    among them also hears the end of the run (reused ones too) or its failure.

    Raises:
        TowerrecError: the device is not available (checked before any data is prepared).
    """
    try:
        result = _train_run(config, runs_root=runs_root, retrain=retrain, progress=progress, dataset=dataset,
                            log=log, device=device, callbacks=callbacks)
    except BaseException as exc:
        if distributed.is_main_process():  # under data parallelism rank 0 alone tracks
            _notify_run_failed(callbacks, exc)
        raise
    if distributed.is_main_process():
        notify_run_end(callbacks, result)
    return result


def _train_run(config: RunConfig, *, runs_root: Path, retrain: bool, progress: bool, dataset: Dataset | None, log,
               device: str | torch.device | None, callbacks: Sequence[Callback]) -> RunResult:
    from towerrec.data.registry import with_absolute_paths

    target = resolve_device(device)
    config = with_absolute_paths(config)
    progress = progress and distributed.is_main_process()
    data = prepare_run_data(config, dataset, progress=progress)

    main = distributed.is_main_process()

    def train(run_dir: Path) -> tuple[dict[str, Any], Model]:
        if main:
            _write_data_files(run_dir, config, data)
        model = build_model(config, data)
        started = time.perf_counter()
        if model.trainable:
            trainer = Trainer.from_config(config, data, model, device=target, checkpoint_dir=run_dir / "checkpoints",
                                          history_path=run_dir / "history.jsonl", progress=progress,
                                          callbacks=callbacks)
            if main and trainer.checkpointer is not None and trainer.checkpointer.exists():
                log(f"resuming {run_dir} from its last checkpoint")
            result = trainer.fit()
            fit: dict[str, Any] = {
                "train_seconds": round(result.train_seconds, 3),
                "examples_per_s": round(result.examples_per_s, 1),
                "epochs_run": len(result.history),
                "stopped_early": result.stopped_early,
                "best_epoch": result.best_epoch,
                "resumed_from_epoch": result.resumed_from_epoch,
            }
        else:
            fit_baseline(model, data)  # closed form, on the CPU
            fit = {"train_seconds": round(time.perf_counter() - started, 3)}
        if not main:  # rank 0 writes and evaluates the model; its metrics reach every process
            return {}, model
        if parallel.world_size() > 1:
            fit["processes"] = parallel.world_size()
        saving.write_model_files(model, run_dir, metadata={"run": run_dir.name,
                                                           "item_aliases": item_aliases(data.dataset)})
        metrics = {**fit, **evaluate_run(config, model, data)}
        return metrics, model

    return train_in_run_dir(config, data.dataset.fingerprint, runs_root, retrain=retrain, log=log, data=data,
                            train=train)


def evaluate_run(config: RunConfig, model: Model, data: PreparedData | SequenceData) -> dict[str, Any]:
    """``{"test": ..., "validation": ...}`` (validation when the data has one) of a trained model: both
    full-catalogue protocols (``{"seen_excluded": ..., "tfrs": ...}``) for retrieval kinds, ``{"ranking":
    ...}`` (:func:`~towerrec.train.evaluate.evaluate_ranking`) for ranking kinds, all three for multi-task runs;
    rating runs also get ``"ranking_baselines": {"global_mean": ..., "item_mean": ...}``
    (:func:`~towerrec.train.evaluate.ranking_baselines`: the same metrics of the mean train rating and of each
    item's mean train rating)."""
    splits = {"test": data.test, "validation": data.validation}
    metrics: dict[str, Any] = {}
    for name, examples in splits.items():
        if examples is None:
            continue
        if config.model.kind in RANKING_KINDS:
            metrics[name] = {"ranking": evaluate_ranking(model, data, examples, config.ranking)}  # type: ignore[arg-type]
        else:
            metrics[name] = evaluate_both_protocols(model, data, examples, config.eval.ks)
        if config.model.kind == MULTI_TASK:
            metrics[name]["ranking"] = evaluate_ranking(model, data, examples, config.ranking)  # type: ignore[arg-type]
        if config.model.kind in RANKING_KINDS or config.model.kind == MULTI_TASK:
            baselines = ranking_baselines(data, examples, config.ranking)  # type: ignore[arg-type]
            if baselines:
                metrics[name]["ranking_baselines"] = baselines
    return metrics


def _write_data_files(run_dir: Path, config: RunConfig, data: PreparedData | SequenceData) -> None:
    """What a run keeps of its data: the catalogue (ids, titles, training counts), and the fitted
    features (two-tower / baseline runs) or the training users (sequential runs with a user embedding)."""
    if isinstance(data, PreparedData):
        save_json(data.features.to_json(), run_dir / "features.json")
        frame = pl.DataFrame({"item_id": data.features.catalogue_ids})
        items = data.dataset.items
        if items is not None:
            frame = frame.join(items.select("item_id", "title"), on="item_id", how="left", maintain_order="left")
        else:
            frame = frame.with_columns(pl.col("item_id").cast(pl.String).alias("title"))
    else:
        frame = pl.DataFrame({"item_id": pl.Series(data.item_ids.tolist(),
                                                   dtype=data.dataset.interactions.schema["item_id"]),
                              "title": data.titles})
    frame = frame.with_columns(train_count=pl.Series(data.item_counts.numpy()))
    with fsio.io_errors(run_dir):
        frame.write_parquet(run_dir / "catalogue.parquet")
        if isinstance(data, SequenceData) and config.sequence.user_embedding:
            pl.DataFrame({"user_id": pl.Series(data.user_vocabulary,
                                               dtype=data.dataset.interactions.schema["user_id"])}
                         ).write_parquet(run_dir / USERS_FILE)


@dataclass
class LoadedRun:
    """A finished run, checked: its config, model (eval mode, on the CPU), catalogue
    (``item_id``, ``title``, ``train_count``), ``meta.json``, fitted features (None for sequential
    runs) and ``item_aliases`` (``{merged twin id as text: catalogue id}``, see
    :func:`towerrec.data.tables.item_aliases`)."""

    run_dir: Path
    config: RunConfig
    features: FittedFeatures | None
    model: Model
    catalogue: pl.DataFrame
    meta: dict[str, Any]
    item_aliases: dict[str, Any] = field(default_factory=dict)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Open a finished run directory, checked against what training recorded.

    ``config.toml`` must hash to the ``config_hash`` of ``meta.json`` (and of the folder
    name), and every other file to its recorded SHA-256.

    Raises:
        TowerrecError: a missing, unreadable, edited or damaged file, named, with what to do.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TowerrecError(f"{run_dir}: no such run directory", hint="train one with `towerrec train CONFIG`")
    meta = load_json(run_dir / META)
    if not isinstance(meta, dict):
        raise TowerrecError(f"{run_dir / META}: not a run manifest (a JSON object is expected)", hint=RETRAIN_HINT)
    if meta.get("format_version") != RUN_FORMAT_VERSION:
        raise TowerrecError(
            f"{run_dir}: run format {meta.get('format_version')!r} is not {RUN_FORMAT_VERSION} "
            f"(written by towerrec {meta.get('towerrec_version')})",
            hint="retrain it with this version (towerrec train CONFIG --retrain)",
        )
    if not meta.get("finished"):
        raise TowerrecError(f"{run_dir}: the run has not finished training",
                            hint="run the same `towerrec train` again: it resumes from the last checkpoint")
    config = load_run_config(run_dir / "config.toml", meta.get("config_hash"), folder_name=run_dir.name,
                             hint="retrain, or restore the file")
    features = None
    if config.model.kind != "sequential":
        features_path = run_dir / "features.json"
        features = read_features(features_path, load_json(features_path), hint=RETRAIN_HINT)
    catalogue_path = run_dir / "catalogue.parquet"
    if not catalogue_path.is_file():
        raise TowerrecError(f"{catalogue_path}: missing", hint=f"the run directory is incomplete: {RETRAIN_HINT}")
    try:
        model = saving.load(run_dir)
    except TowerrecError as exc:  # the run's remedy, not a saved model's
        raise TowerrecError(exc.message, hint=RETRAIN_HINT) from None
    catalogue = fsio.read_parquet(catalogue_path, hint=RETRAIN_HINT)
    verify_run_files(run_dir, meta)
    if features is not None and isinstance(model, RankingModel) and hasattr(model, "set_catalogue"):
        model.set_catalogue(features.encode_candidates())  # a ranker finds candidate features in its catalogue
    aliases = (load_json(run_dir / saving.MANIFEST).get("metadata") or {}).get("item_aliases") or {}
    return LoadedRun(run_dir, config, features, model, catalogue, meta, dict(aliases))


def load_run_config(path: Path, recorded_hash: Any, *, folder_name: str | None = None,
                    hint: str) -> RunConfig:
    """The config a run or bundle was made with, refusing one edited since (its hash must match).

    Raises:
        TowerrecError: unreadable file, or ``<path> was changed after training (hash a ≠ b)``.
    """
    try:
        with fsio.io_errors(path, hint=hint):
            config = load_config(path)
    except TowerrecError as exc:  # the file was written by towerrec: the remedy is the artefact's, not the config's
        raise TowerrecError(exc.message, hint=hint) from None
    actual = config.hash()
    expected = recorded_hash
    if folder_name is not None and expected == actual:
        parts = folder_name.rsplit("-", 2)
        if len(parts) == 3 and re.fullmatch(r"[0-9a-f]{12}", parts[1]) and parts[1] != actual:
            expected = parts[1]
    if expected != actual:
        raise TowerrecError(f"{path} was changed after training (hash {actual} ≠ {expected})", hint=hint)
    return config


def read_features(path: Path, value: Any, *, hint: str) -> FittedFeatures:
    """Fitted features from the JSON value of ``path``; a foreign structure is one error naming it."""
    try:
        if not isinstance(value, dict):
            raise TypeError("a JSON object is expected")
        return FittedFeatures.from_json(value)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise TowerrecError(f"{path}: not the fitted features towerrec writes ({_shape_error(exc)})",
                            hint=hint) from None


def _shape_error(exc: BaseException) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else first_line(exc, limit=120)
