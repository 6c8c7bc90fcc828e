"""Run directory -> self-contained serving bundle (see :mod:`towerrec.serve.bundle` for the layout).

Export needs the run's data once (to record each train user's seen items and
history rows); serving never reads the dataset again. The bundle is written to
a temporary folder beside the target and renamed into place, so a crash never
leaves half a bundle.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import save_file

from towerrec import __version__, fsio
from towerrec.data.tables import item_aliases
from towerrec.errors import TowerrecError
from towerrec.index import BruteForceIndex, FaissIndex, Index
from towerrec.models.two_tower import TwoTowerModel
from towerrec.runs import LoadedRun, load_run
from towerrec.serve.bundle import BUNDLE_FORMAT_VERSION, MANIFEST, bundle_files, load_bundle
from towerrec.train.checkpoint import load_json, save_json
from towerrec.train.models import catalogue_embeddings
from towerrec.train.prepared import PreparedData

INDEX_KINDS = ("brute-force", "hnsw", "ivf", "ivfpq")
ITEM_COLUMNS = ("title", "year", "genres")


def run_candidate_embeddings(run: LoadedRun) -> torch.Tensor:
    """[N, d] candidate embeddings of a run's catalogue, from the run directory alone."""
    if not isinstance(run.model, TwoTowerModel):
        raise TowerrecError(
            f"{run.run_dir}: a {run.config.model.kind} model has no towers to export or index",
            hint="export a two-tower or sequential run (e.g. the 'default' preset)",
        )
    return catalogue_embeddings(run.model, run.features.encode_candidates(), len(run.features.catalogue_ids))


def build_index(kind: str, embeddings: torch.Tensor, ids, *, metadata: dict | None = None, **params: Any) -> Index:
    """An index of ``kind`` (brute-force | hnsw | ivf | ivfpq) over the embeddings."""
    if kind == "brute-force":
        if params:
            raise TowerrecError(f"the brute-force index takes no options, got {sorted(params)}")
        return BruteForceIndex(embeddings.float().contiguous(), ids, metadata=metadata)
    if kind in ("hnsw", "ivf", "ivfpq"):
        return FaissIndex(embeddings, ids, variant=kind, metadata=metadata, **params)
    raise TowerrecError(f"index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    *,
    index: str = "brute-force",
    index_params: dict[str, Any] | None = None,
    data: PreparedData | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the serving bundle of a finished two-tower or sequential run to ``out`` and checks it loads.

    Args:
        run_dir: a finished run directory.
        out: the bundle folder to create.
        index: brute-force | hnsw | ivf | ivfpq.
        index_params: options of a FAISS index (see :class:`~towerrec.index.FaissIndex`).
        data: the run's prepared data (two-tower: ``PreparedData``; sequential: ``SequenceData``), if
            already in memory (else prepared from its config).
        overwrite: replace an existing bundle at ``out``.
    Returns:
        ``out``.
    """
    run = load_run(run_dir)
    out = Path(out)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise TowerrecError(f"{out}: already exists", hint="pass --overwrite or choose another --out")
    fsio.check_replaceable(out, MANIFEST, what="bundle", protect=[run.run_dir])
    if run.config.model.kind == "sequential":
        return _export_sequential(run, out, index, index_params or {}, data)
    embeddings = run_candidate_embeddings(run)
    if data is None:
        from towerrec.recommend import open_run_with_data

        _, data = open_run_with_data(run.run_dir)
    if data.dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the data given is not the data this run was trained on")
    if data.num_items != embeddings.shape[0]:
        raise TowerrecError(f"{run.run_dir}: the run's catalogue and its data disagree in size", hint="retrain the run")

    ids = run.catalogue["item_id"].to_list()
    with _staged(out) as staging:
        started = time.perf_counter()
        built = build_index(index, embeddings, ids, metadata={"run": run.run_dir.name}, **(index_params or {}))
        built.save(staging / "index")
        index_seconds = time.perf_counter() - started
        shutil.copy(run.run_dir / "config.toml", staging / "config.toml")
        shutil.copy(run.run_dir / "features.json", staging / "features.json")
        tower = {k: v.detach().contiguous() for k, v in run.model.query_tower.state_dict().items()}
        save_file(tower, str(staging / "query_tower.safetensors"))
        save_file(
            {"embeddings": embeddings.float().contiguous(), "item_counts": data.item_counts.float().contiguous()},
            str(staging / "candidates.safetensors"),
        )
        users = {"seen_indptr": data.seen.indptr.contiguous(), "seen_indices": data.seen.indices.contiguous()}
        if data.history is not None:
            users["history"] = data.history.contiguous()
        save_file(users, str(staging / "users.safetensors"))
        _items_frame(run, data).write_parquet(staging / "items.parquet")
        interactions = data.dataset.interactions
        latest = interactions["timestamp"].max() if "timestamp" in interactions.columns else None
        save_json(
            _manifest(
                run,
                similarity=run.config.model.similarity,
                dim=int(embeddings.shape[1]),
                num_items=int(embeddings.shape[0]),
                num_users=data.num_users,
                history_length=None if data.history is None else int(data.history.shape[1]),
                latest_timestamp=int(latest) if latest is not None else 0,
                user_id_type="int" if run.features._user_ids.dtype.is_integer() else "str",
                item_id_type="int" if run.catalogue.schema["item_id"].is_integer() else "str",
                index={"kind": built.kind, "variant": getattr(built, "variant", None), "build_seconds": round(index_seconds, 3)},
                item_aliases=item_aliases(data.dataset),
            ),
            staging / MANIFEST,
        )
    return out


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A marked scratch folder beside ``out``, swapped in only if the body succeeds and the bundle loads.

    The body writes the bundle's files and ``bundle.json``; this adds the SHA-256 of
    every file to the manifest, loads the result (refusing to publish a bundle that
    does not load), then replaces ``out`` by rename (:func:`towerrec.fsio.replace_dir`:
    only a towerrec bundle is ever replaced, and the old one stays whole until the new
    one is in place). Two exports to one folder are serialised by a file lock.
    """
    with fsio.replacing(out, MANIFEST, what="bundle") as staging:
        with fsio.io_errors(staging):
            yield staging
        seal_bundle(staging)
        load_bundle(staging)


def seal_bundle(folder: Path) -> None:
    """Record the SHA-256 of every file of the bundle in ``folder`` in its ``bundle.json``."""
    manifest = load_json(folder / MANIFEST)
    manifest["checksums"] = fsio.checksums(folder, bundle_files(folder))
    save_json(manifest, folder / MANIFEST)


def write_index(index: Index, folder: Path) -> Path:
    """Save ``index`` to ``folder`` atomically, replacing only an index folder towerrec wrote.

    Raises:
        TowerrecError: ``folder`` holds anything but a towerrec index, or is not writable.
    """
    from towerrec.index.base import MANIFEST as INDEX_MANIFEST

    folder = Path(folder)
    fsio.check_replaceable(folder, INDEX_MANIFEST, what="index")
    with fsio.replacing(folder, INDEX_MANIFEST, what="index") as staging:
        index.save(staging)
    return folder


def _manifest(run: LoadedRun, **facts: Any) -> dict[str, Any]:
    """The manifest fields every bundle has, plus the kind-specific ``facts``."""
    return {
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": "towerrec-bundle",
        "towerrec_version": __version__,
        "run": run.run_dir.name,
        "run_name": run.config.name,
        "config_hash": run.meta.get("config_hash"),
        "data_fingerprint": run.meta.get("data_fingerprint"),
        **facts,
        "test_metrics": _test_metrics(run.run_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _export_sequential(run: LoadedRun, out: Path, index: str, index_params: dict[str, Any], data) -> Path:
    from towerrec.data.registry import load_dataset
    from towerrec.serve.sequential import write_sequential_bundle

    dataset = getattr(data, "dataset", None) or load_dataset(run.config.data.dataset, run.config.data.data_dir,
                                                             progress=False,
                                                             duplicate_titles=run.config.data.duplicate_titles)
    if dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the data given is not the data this run was trained on",
                            hint="retrain the run on the current data")
    with _staged(out) as staging:
        seconds: list[float] = []

        def index_builder(embeddings: torch.Tensor, ids: list) -> Index:
            started = time.perf_counter()
            built = build_index(index, embeddings, ids, metadata={"run": run.run_dir.name}, **index_params)
            seconds.append(time.perf_counter() - started)
            return built

        facts = write_sequential_bundle(run, staging, dataset, index_builder)
        facts["index"]["build_seconds"] = round(seconds[0], 3)
        save_json(_manifest(run, similarity="dot", item_aliases=item_aliases(dataset), **facts), staging / MANIFEST)
    return out


def _items_frame(run: LoadedRun, data: PreparedData) -> pl.DataFrame:
    frame = run.catalogue.select("item_id", "title")
    items = data.dataset.items
    if items is not None:
        extra = [c for c in ITEM_COLUMNS if c in items.columns and c not in frame.columns]
        if extra:
            frame = frame.join(items.select("item_id", *extra), on="item_id", how="left", maintain_order="left")
    return frame


def _test_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return metrics.get("test", {}).get("seen_excluded", {})
    except (OSError, ValueError, AttributeError):
        return {}
