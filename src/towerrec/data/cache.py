"""Parsed datasets cached as dataset folders, keyed by what they were parsed from.

The key hashes the source files' SHA-256 and the parser version, so a changed
source file or parser lands in a new folder (a miss) and a stale parse is
never reused. The key is also the dataset's ``fingerprint``: trained-model
caches keyed by it go stale exactly when the data does.
"""

from __future__ import annotations

import hashlib
import warnings
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from towerrec import fsio, paths
from towerrec.data import store
from towerrec.data.tables import Dataset
from towerrec.errors import TowerrecError


@dataclass(frozen=True)
class Prepared:
    """A dataset plus the folder it is cached in and whether that cache was reused."""

    dataset: Dataset
    path: Path
    hit: bool


def source_key(name: str, digests: Mapping[str, str], parser_version: str) -> str:
    """SHA-256 over the dataset name, parser version and per-file SHA-256 digests."""
    payload = {"name": name, "parser": parser_version, "files": dict(sorted(digests.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_folder(name: str, key: str) -> Path:
    return paths.prepared_dir() / f"{name}-{key[:16]}"


def prepare(name: str, key: str, build: Callable[[], Dataset], *, force: bool = False) -> Prepared:
    """Read the cached parse for ``key``, or ``build()`` it and cache it.

    Concurrent preparers of the same key are serialised by a file lock: the first builds,
    the others wait and then reuse its finished cache. A cache whose tables fail their
    checksum (bit rot, a stray edit) is rebuilt, never trusted.
    """
    folder = cache_folder(name, key)
    with fsio.locked(folder.with_name(f"{folder.name}.prepare"), what="dataset cache"):
        if not force:
            cached = _load_cached(folder, key)
            if cached is not None:
                return Prepared(cached, folder, hit=True)
        dataset = build()
        store.save_dataset(dataset, folder)
    return Prepared(dataset, folder, hit=False)


def _load_cached(folder: Path, key: str) -> Dataset | None:
    if not store.is_dataset_dir(folder):
        return None
    try:
        dataset = store.load_dataset_dir(folder)
    except TowerrecError as exc:  # unreadable or damaged: rebuilt, never trusted
        warnings.warn(f"prepared-data cache cannot be reused, rebuilding it: {exc}", stacklevel=2)
        return None
    return dataset if dataset.fingerprint == key else None
