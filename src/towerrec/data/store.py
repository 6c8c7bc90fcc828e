"""A dataset on disk: one folder of Parquet tables plus ``dataset.json``.

Prepared MovieLens caches, imported tables and synthetic datasets all use this
layout, so ``towerrec data info PATH`` and training read any of them alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from towerrec import fsio
from towerrec.data.tables import Dataset
from towerrec.errors import DataError

MANIFEST = "dataset.json"
TABLE_FILES = ("interactions.parquet", "items.parquet", "users.parquet")
"""Every file a dataset folder may hold besides its manifest."""
FORMAT_VERSION = 2  # 2: per-table SHA-256 checksums in the manifest


def save_dataset(dataset: Dataset, folder: str | Path, *, protect: tuple[str | Path, ...] = ()) -> Path:
    """Write ``dataset`` to ``folder`` atomically, replacing only a towerrec dataset folder.

    The tables are written into a marked staging folder beside ``folder``; their SHA-256
    checksums go into ``dataset.json``; then :func:`towerrec.fsio.replacing` swaps the
    new folder in (the old one is renamed aside, never deleted first). Two writers of the
    same folder are serialised by a file lock.

    Raises:
        TowerrecError: ``folder`` exists and is not a towerrec dataset (it would be lost),
            is the current folder, contains a ``protect``ed input file, or is not writable.
    """
    folder = Path(folder)
    fsio.check_replaceable(folder, MANIFEST, what="dataset", protect=protect, known=TABLE_FILES)
    with fsio.replacing(folder, MANIFEST, what="dataset", known=TABLE_FILES) as tmp:
        with fsio.io_errors(tmp):
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
            "checksums": fsio.checksums(tmp, [f"{name}.parquet" for name in tables]),
            "meta": dataset.meta,
        }
        fsio.atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
    return folder


def is_dataset_dir(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_dataset_dir(folder: str | Path) -> Dataset:
    """Read a folder written by :func:`save_dataset`, verifying every table's checksum.

    Raises:
        DataError: no or invalid ``dataset.json``, a missing table, or a table whose bytes
            changed since it was written (named, with what to do).
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"no {MANIFEST} here: not a towerrec dataset folder", file=folder)
    try:
        manifest = json.loads(fsio.read_text(manifest_path))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", file=manifest_path, line=exc.lineno) from exc
    if not isinstance(manifest, dict):
        raise DataError("not a dataset manifest (a JSON object is expected)", file=manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}",
            file=manifest_path,
            field="format_version",
            hint="prepare the dataset again with this version of towerrec",
        )
    tables = manifest.get("tables")
    recorded = manifest.get("checksums")
    if not isinstance(tables, list) or "interactions" not in tables or not isinstance(recorded, dict):
        raise DataError("manifest lacks its table list or checksums", file=manifest_path,
                        hint="prepare or import the dataset again")
    fsio.verify_checksums(folder, recorded, hint="prepare or import the dataset again (data prepare --force)")
    frames = {}
    for name in tables:
        if f"{name}.parquet" not in recorded:
            raise DataError(f"table {name!r} has no recorded checksum", file=manifest_path,
                            hint="prepare or import the dataset again")
        frames[name] = fsio.read_parquet(folder / f"{name}.parquet")
    return Dataset(
        name=manifest["name"],
        interactions=frames["interactions"],
        items=frames.get("items"),
        users=frames.get("users"),
        fingerprint=manifest.get("fingerprint", ""),
        meta=manifest.get("meta", {}),
    )
