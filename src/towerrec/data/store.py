"""A dataset on disk: one folder of Parquet tables plus ``dataset.json``.

Prepared MovieLens caches, imported tables and synthetic datasets all use this
layout, so ``towerrec data info PATH`` and training read any of them alike.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from towerrec.data.tables import Dataset
from towerrec.errors import DataError

MANIFEST = "dataset.json"
FORMAT_VERSION = 1


def save_dataset(dataset: Dataset, folder: str | Path) -> Path:
    """Write ``dataset`` atomically: a half-written folder never looks complete."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        dataset.interactions.write_parquet(tmp / "interactions.parquet")
        tables = ["interactions"]
        for name in ("items", "users"):
            frame = getattr(dataset, name)
            if frame is not None:
                frame.write_parquet(tmp / f"{name}.parquet")
                tables.append(name)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "tables": tables,
            "meta": dataset.meta,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def is_dataset_dir(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_dataset_dir(folder: str | Path) -> Dataset:
    """Read a folder written by :func:`save_dataset`."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"no {MANIFEST} here: not a towerrec dataset folder", file=folder)
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", file=manifest_path, line=exc.lineno) from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}",
            file=manifest_path,
            field="format_version",
            hint="prepare the dataset again with this version of towerrec",
        )
    frames = {}
    for name in manifest["tables"]:
        path = folder / f"{name}.parquet"
        if not path.is_file():
            raise DataError("table listed in the manifest is missing", file=path)
        frames[name] = pl.read_parquet(path)
    return Dataset(
        name=manifest["name"],
        interactions=frames["interactions"],
        items=frames.get("items"),
        users=frames.get("users"),
        fingerprint=manifest.get("fingerprint", ""),
        meta=manifest.get("meta", {}),
    )
