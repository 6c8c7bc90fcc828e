"""One entry point from a name or a path to a :class:`Dataset`.

The CLI and configs say ``movielens-1m`` or ``path/to/dataset``; this module
decides which loader that means, so callers never branch on the source.
"""

from __future__ import annotations

from pathlib import Path

from towerrec.data import movielens, store
from towerrec.data.cache import Prepared
from towerrec.data.tables import Dataset
from towerrec.errors import DataError

DATASET_NAMES: tuple[str, ...] = movielens.NAMES


def prepare_dataset(
    spec: str, data_dir: str | Path | None = None, progress: bool = True, *, force: bool = False
) -> Prepared:
    """Like :func:`load_dataset`, also saying where the data is cached and if the cache was reused."""
    if movielens.find_release(spec) is not None:
        return movielens.prepare_movielens(spec, data_dir, progress=progress, force=force)
    folder = Path(spec).expanduser()
    if store.is_dataset_dir(folder):
        if data_dir is not None:
            raise DataError(
                "--data-dir applies to MovieLens names only", file=folder, hint="drop --data-dir for a dataset folder"
            )
        return Prepared(store.load_dataset_dir(folder), folder, hit=True)
    names = ", ".join(DATASET_NAMES)
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
    spec: str, data_dir: str | Path | None = None, progress: bool = True, *, force: bool = False
) -> Dataset:
    """A MovieLens name or alias (downloaded or read from ``data_dir``), or a dataset folder."""
    return prepare_dataset(spec, data_dir, progress, force=force).dataset
