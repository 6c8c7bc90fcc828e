"""Run directories: train once, reuse while configuration AND data match.

``runs/<name>-<config hash>-<data fingerprint>/`` holds config.toml,
features.json, model.safetensors, history.jsonl, metrics.json, meta.json,
catalogue.parquet (item ids and titles, for printing) and, while training,
checkpoints/. A finished run (metrics.json present) is reused; an unfinished
one resumes from its last checkpoint.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from torch import nn

from towerrec import __version__, fsio
from towerrec.config import RunConfig, load_config
from towerrec.data.tables import Dataset
from towerrec.errors import TowerrecError
from towerrec.features import FittedFeatures
from towerrec.train.checkpoint import load_json, load_weights, save_json, save_weights
from towerrec.train.evaluate import evaluate_both_protocols
from towerrec.models.baselines import EASEModel, PopularityModel
from towerrec.train.models import build_model, fit_baseline, is_trainable, two_tower_for
from towerrec.train.prepared import PreparedData, prepare
from towerrec.train.trainer import Trainer

RUN_FORMAT_VERSION = 1


def run_dir_for(config: RunConfig, data_fingerprint: str, root: Path) -> Path:
    return root / f"{config.name}-{config.hash()}-{data_fingerprint[:8]}"


def open_run_dir(config: RunConfig, fingerprint: str, runs_root: Path, *, retrain: bool, log) -> tuple[Path, dict | None]:
    """The run's directory, ready to train into, plus its metrics when a finished run can be reused."""
    run_dir = run_dir_for(config, fingerprint, runs_root)
    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "metrics.json").is_file():
        log(f"reusing the finished run {run_dir} (same configuration and data; --retrain to train again)")
        return run_dir, load_json(run_dir / "metrics.json")
    with fsio.io_errors(run_dir, hint="choose a writable folder for the runs (--runs)"):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config.to_toml())
    return run_dir, None


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    reused: bool
    data: PreparedData | None
    model: nn.Module | None


def train_run(
    config: RunConfig,
    *,
    runs_root: Path = Path("runs"),
    retrain: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    log=print,
) -> RunResult:
    """Train (or reuse, or resume) the run this configuration names, then evaluate it on test.

    Relative data paths in ``config`` are made absolute first (the run's stored config then
    works from any folder; see :func:`towerrec.data.registry.with_absolute_paths`).
    """
    from towerrec.data.registry import with_absolute_paths

    config = with_absolute_paths(config)
    if config.model.kind == "sequential":
        from towerrec.train.sequential import train_sequential_run

        return train_sequential_run(config, runs_root=runs_root, retrain=retrain, progress=progress,
                                    dataset=dataset, log=log)
    data = prepare(config, dataset, progress=progress)
    run_dir, finished = open_run_dir(config, data.dataset.fingerprint, runs_root, retrain=retrain, log=log)
    if finished is not None:
        return RunResult(run_dir, finished, True, data, None)
    save_json(data.features.to_json(), run_dir / "features.json")
    _save_catalogue(data, run_dir)
    model = build_model(config, data)
    started = time.perf_counter()
    fit: dict[str, Any] = {}
    if is_trainable(model):
        trainer = Trainer(
            config,
            data,
            model,
            checkpoint_dir=run_dir / "checkpoints",
            history_path=run_dir / "history.jsonl",
            progress=progress,
        )
        if trainer.checkpointer is not None and trainer.checkpointer.exists():
            log(f"resuming {run_dir} from its last checkpoint")
        result = trainer.fit()
        fit = {
            "train_seconds": round(result.train_seconds, 3),
            "examples_per_s": round(result.examples_per_s, 1),
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from_epoch,
        }
    else:
        fit_baseline(model, data)
        fit = {"train_seconds": round(time.perf_counter() - started, 3)}
    save_weights(model, run_dir / "model.safetensors")
    metrics = {**fit, "test": evaluate_both_protocols(model, data, data.test, config.eval.ks)}
    save_json(
        {
            "format_version": RUN_FORMAT_VERSION,
            "towerrec_version": __version__,
            "data_fingerprint": data.dataset.fingerprint,
            "config_hash": config.hash(),
        },
        run_dir / "meta.json",
    )
    save_json(metrics, run_dir / "metrics.json")  # last: marks the run finished
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return RunResult(run_dir, metrics, False, data, model)


def _save_catalogue(data: PreparedData, run_dir: Path) -> None:
    ids = data.features.catalogue_ids
    frame = pl.DataFrame({"item_id": ids})
    items = data.dataset.items
    if items is not None:
        frame = frame.join(items.select("item_id", "title"), on="item_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.col("item_id").cast(pl.String).alias("title"))
    frame.write_parquet(run_dir / "catalogue.parquet")


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    features: FittedFeatures
    model: nn.Module
    catalogue: pl.DataFrame
    meta: dict[str, Any]


def load_run(run_dir: str | Path) -> LoadedRun:
    """Open a finished run directory; every missing or foreign file is a clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TowerrecError(f"{run_dir}: no such run directory", hint="train one with `towerrec train CONFIG`")
    meta = load_json(run_dir / "meta.json")
    if meta.get("format_version") != RUN_FORMAT_VERSION:
        raise TowerrecError(
            f"{run_dir}: run format {meta.get('format_version')!r} is not {RUN_FORMAT_VERSION} "
            f"(written by towerrec {meta.get('towerrec_version')})",
            hint="retrain it with this version",
        )
    config = load_config(run_dir / "config.toml")
    if config.model.kind == "sequential":
        return _load_sequential_run(run_dir, config, meta)
    features = FittedFeatures.from_json(load_json(run_dir / "features.json"))
    catalogue_path = run_dir / "catalogue.parquet"
    if not catalogue_path.is_file():
        raise TowerrecError(f"{catalogue_path}: missing", hint="the run directory is incomplete: retrain it")
    model = _empty_model(config, features)
    load_weights(model, run_dir / "model.safetensors")
    model.eval()
    return LoadedRun(run_dir, config, features, model, fsio.read_parquet(catalogue_path, hint="retrain the run with --retrain"), meta)


def _load_sequential_run(run_dir: Path, config: RunConfig, meta: dict[str, Any]) -> LoadedRun:
    """A sequential run has no fitted features (``features`` is None): items are its catalogue."""
    from towerrec.train.sequential import load_sequential_model

    catalogue_path = run_dir / "catalogue.parquet"
    if not catalogue_path.is_file():
        raise TowerrecError(f"{catalogue_path}: missing", hint="the run directory is incomplete: retrain it")
    model = load_sequential_model(config, run_dir)
    load_weights(model, run_dir / "model.safetensors")
    model.eval()
    return LoadedRun(run_dir, config, None, model, fsio.read_parquet(catalogue_path, hint="retrain the run with --retrain"), meta)  # type: ignore[arg-type]


def _empty_model(config: RunConfig, features: FittedFeatures) -> nn.Module:
    m = config.model
    if m.kind == "popularity":
        return PopularityModel(len(features.catalogue_ids))
    if m.kind == "ease":
        return EASEModel(features.num_users, len(features.catalogue_ids), m.ease_l2)
    return two_tower_for(config, features)
