"""One entry point from a name or a path to a :class:`Dataset`.

The CLI and configs say ``movielens-1m`` or ``path/to/dataset``; this module
decides which loader that means, so callers never branch on the source.
"""

from __future__ import annotations

from pathlib import Path

from towerrec.config import RunConfig
from towerrec.data import movielens, store
from towerrec.data.cache import Prepared
from towerrec.data.tables import Dataset
from towerrec.errors import DataError

DATASET_NAMES: tuple[str, ...] = movielens.NAMES


def prepare_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    duplicate_titles: movielens.DuplicateTitles = "merge",
) -> Prepared:
    """Like :func:`load_dataset`, also saying where the data is cached and if the cache was reused."""
    if movielens.find_release(spec) is not None:
        return movielens.prepare_movielens(spec, data_dir, progress=progress, force=force,
                                           duplicate_titles=duplicate_titles)
    folder = Path(spec).expanduser()
    if store.is_dataset_dir(folder):
        if data_dir is not None:
            raise DataError(
                "--data-dir applies to MovieLens names only", file=folder, hint="drop --data-dir for a dataset folder"
            )
        return Prepared(store.load_dataset_dir(folder), folder, hit=True)
    names = ", ".join(DATASET_NAMES)
    if not folder.exists() and (folder.is_absolute() or len(folder.parts) > 1 or spec.startswith((".", "~"))):
        raise DataError(
            "no such dataset folder",
            file=folder,
            hint="check the path; if a run's data moved, pass --data-dir with its new place",
        )
    raw = movielens_like(folder)
    if raw:
        command = " or ".join(f"towerrec data info {r.name} --data-dir {folder}" for r in raw)
        raise DataError(
            f"not a towerrec dataset folder, but the files of a MovieLens release "
            f"({', '.join(raw[0].files)}): read it by the release's name",
            file=folder,
            hint=f"run: {command}",
        )
    if folder.is_file():
        raise DataError(
            "a file, not a dataset folder",
            file=folder,
            hint=f"import a table first: towerrec data import {folder} --user COL --item COL --out DIR",
        )
    if folder.is_dir():
        raise DataError(
            "not a dataset folder: it holds no dataset.json",
            file=folder,
            hint=f"pass a folder written by towerrec, or one of {names}",
        )
    raise DataError(
        f"unknown dataset {spec!r}: use one of {names}, or a dataset folder (one holding dataset.json)",
        hint="aliases work too: ml-100k, ml-1m, ml-latest-small, ...",
    )


def load_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    duplicate_titles: movielens.DuplicateTitles = "merge",
) -> Dataset:
    """A MovieLens name or alias (downloaded or read from ``data_dir``), or a dataset folder.

    Parsed data is cached on disk, keyed by the source files' hashes; ``force`` parses again.
    ``duplicate_titles`` ("merge" or "keep") applies to MovieLens releases; see
    :mod:`towerrec.data.movielens`. Names: ``DATASET_NAMES`` (``movielens-100k``, ...).

    Raises:
        DataError: an unknown name (the message lists the known ones), a folder that holds no
            dataset, a failed download or checksum, or a malformed source file (named with its line).
    """
    return prepare_dataset(spec, data_dir, progress, force=force, duplicate_titles=duplicate_titles).dataset


def is_release_name(spec: str) -> bool:
    """``spec`` names a MovieLens release (else it is a dataset folder path)."""
    return movielens.find_release(spec) is not None


def with_absolute_paths(config: RunConfig, base: str | Path | None = None) -> RunConfig:
    """``config`` with its data paths absolute (relative ones resolved against ``base``, default the cwd).

    A run stores the config it was trained with; absolute ``[data] data_dir``,
    ``item_features`` and dataset-folder ``dataset`` keep the run usable from any folder.
    """
    root = Path.cwd() if base is None else Path(base)

    def absolute(path: str) -> str:
        return str((root / Path(path).expanduser()).absolute())

    d = config.data
    changes = {}
    if d.data_dir is not None:
        changes["data_dir"] = absolute(d.data_dir)
    if d.item_features is not None:
        changes["item_features"] = absolute(d.item_features)
    if not is_release_name(d.dataset):
        changes["dataset"] = absolute(d.dataset)
    changes = {key: value for key, value in changes.items() if getattr(d, key) != value}
    return config.replace(data=changes) if changes else config


def relocated(config: RunConfig, data_dir: str | Path | None) -> RunConfig:
    """``config`` reading its data from ``data_dir`` (``--data-dir`` of evaluate/recommend/export).

    For a MovieLens run ``data_dir`` is the release's folder or zip; for a run on a dataset
    folder it is that folder. The data fingerprint stored with the run still has to match,
    so a run is never evaluated on other data than it was trained on.
    """
    if data_dir is None:
        return config
    path = str(Path(data_dir).expanduser().absolute())
    if is_release_name(config.data.dataset):
        return config.replace(data={"data_dir": path})
    return config.replace(data={"dataset": path})


def movielens_like(path: Path) -> list[movielens.Release]:
    """The MovieLens releases whose files ``path`` (a folder, its parent, or a zip) holds; best first.

    The folder or zip name decides when it is a release's (``ml-1m``); else the release
    needing the most of the files present; the ``ratings.csv`` releases (latest-small, 20M,
    25M) share a layout and are told apart by the size of ``ratings.csv``.
    """
    path = Path(path)
    named = movielens.find_release(path.name[:-4] if path.name.lower().endswith(".zip") else path.name)
    if path.is_file() and path.suffix.lower() == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                present = {name.rsplit("/", 1)[-1]: zf.getinfo(name).file_size for name in zf.namelist()}
        except (zipfile.BadZipFile, OSError):
            return []
    elif path.is_dir():
        try:  # the folder itself, or a release folder inside it
            folders = [path, *sorted(p for p in path.iterdir() if p.is_dir())]
        except OSError:
            return []
        present = {}
        for folder in folders:
            for name in {name for release in movielens.RELEASES.values() for name in release.files}:
                if (folder / name).is_file():
                    present.setdefault(name, (folder / name).stat().st_size)
    else:
        return []
    fits = [r for r in movielens.RELEASES.values() if all(name in present for name in r.files)]
    if named in fits:
        return [named]
    if not fits:
        return []
    most = max(len(r.files) for r in fits)
    fits = [r for r in fits if len(r.files) == most]
    if len(fits) > 1 and "ratings.csv" in present:
        small = present["ratings.csv"] < 50_000_000
        fits = [r for r in fits if (r.archive == "ml-latest-small") == small]
    return fits

