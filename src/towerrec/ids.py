"""Item ids at public boundaries: a catalogue's ids, and raw ids turned into catalogue positions.

Public search and metric APIs take raw item ids (the ids of the data set, as
TensorFlow Recommenders' ``query_with_exclusions`` takes them); catalogue
positions (row numbers of the embedding matrix) stay internal. A catalogue's ids
are all integers or all strings; an id given to a lookup must be of the same
kind (an ``int`` never matches a ``str`` id and vice versa: that is a
``TypeError``, not a silent miss). Ids of the right kind that the catalogue does
not hold are skipped where they exclude (an item that is not in the catalogue
can never be returned anyway) and are an error where they must be found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from towerrec.errors import TowerrecError, shorten

IdList = Sequence[Any] | np.ndarray | Tensor
"""The ids of one query: a list, tuple, 1-D numpy array or 1-D tensor."""


def normalize_ids(ids: Sequence[int | str] | np.ndarray, num_candidates: int) -> np.ndarray:
    """Checks candidate ids (N, unique, all int or all str) and stores them as a numpy array.

    Returns an int64 array for integer ids and an object array of ``str`` otherwise,
    so that ``array[positions].tolist()`` gives back Python ints or strs.

    Raises:
        TowerrecError: not N ids, a mix of kinds (or floats, bools), or repeated ids.
    """
    values = ids.tolist() if isinstance(ids, (np.ndarray, Tensor)) else list(ids)
    if len(values) != num_candidates:
        raise TowerrecError(f"got {len(values)} ids for {num_candidates} candidate embeddings")
    if all(isinstance(v, str) for v in values):
        array = np.empty(len(values), dtype=object)
        array[:] = [str(v) for v in values]
    elif all(_is_int(v) for v in values):
        array = np.asarray(values, dtype=np.int64)
    else:
        raise TowerrecError("candidate ids must be all integers or all strings")
    if len(set(array.tolist())) != len(array):
        raise TowerrecError("candidate ids must be unique", hint="deduplicate the catalogue before indexing it")
    return array


class IdLookup:
    """Raw item id -> catalogue position for one catalogue (built once, reused by every query).

    Integer ids are looked up vectorised (``np.searchsorted`` on the sorted ids);
    string ids through a dict.

    Args:
        ids: the catalogue's ids as :func:`normalize_ids` returns them (int64 or object of str).
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids
        self.kind = "str" if ids.dtype == object else "int"
        if self.kind == "int":
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]
        else:
            self._positions = {value: position for position, value in enumerate(ids.tolist())}

    def positions(self, values: IdList, name: str) -> np.ndarray:
        """[len(values)] int64 catalogue position of each id, -1 for ids the catalogue lacks.

        Raises:
            TypeError: ``values`` is not a list/array of ids, or an id's kind (int/str) differs from the catalogue's.
        """
        flat = _id_values(values, name)
        if not flat:
            return np.empty(0, dtype=np.int64)
        if self.kind == "int":
            bad = next((v for v in flat if not _is_int(v)), None)
            if bad is not None:
                raise TypeError(f"{name}: the catalogue's ids are integers, got {shorten(bad)} ({type(bad).__name__})")
            wanted = np.asarray(flat, dtype=np.int64)
            at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
            return np.where(self._sorted[at] == wanted, self._order[at], -1).astype(np.int64)
        bad = next((v for v in flat if not isinstance(v, str)), None)
        if bad is not None:
            raise TypeError(f"{name}: the catalogue's ids are strings, got {shorten(bad)} ({type(bad).__name__})")
        lookup = self._positions
        return np.fromiter((lookup.get(v, -1) for v in flat), dtype=np.int64, count=len(flat))

    def exclusion_rows(self, lists: Sequence[IdList] | np.ndarray | Tensor, num_rows: int,
                       name: str = "exclude_ids") -> tuple[np.ndarray, np.ndarray]:
        """Per-query id lists -> (indptr [num_rows + 1], positions [nnz]) with unknown ids dropped.

        Raises:
            TypeError: ``lists`` is not one list of ids per query, or an id of the wrong kind.
            ValueError: ``len(lists) != num_rows``.
        """
        rows = _id_rows(lists, name)
        if len(rows) != num_rows:
            raise ValueError(f"{name} has {len(rows)} lists but there are {num_rows} queries (one list per query)")
        sizes = np.array([len(row) for row in rows], dtype=np.int64)
        flat = [value for row in rows for value in row]
        found = self.positions(flat, name)
        keep = found >= 0
        owner = np.repeat(np.arange(num_rows, dtype=np.int64), sizes)[keep]
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=num_rows), out=indptr[1:])
        return indptr, found[keep]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _id_values(values: IdList, name: str) -> list[Any]:
    if isinstance(values, (Tensor, np.ndarray)):
        if values.ndim != 1:
            raise TypeError(f"{name}: expected a 1-D list of ids, got shape {list(values.shape)}")
        return values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a list of ids, got {type(values).__name__}")
    return list(values)


def _id_rows(lists: Sequence[IdList] | np.ndarray | Tensor, name: str) -> list[list[Any]]:
    """One Python list of ids per query; a 2-D array or tensor is one row per query."""
    if isinstance(lists, (Tensor, np.ndarray)):
        if lists.ndim != 2:
            raise TypeError(f"{name}: expected one list of ids per query ([Q, n] when an array), got shape {list(lists.shape)}")
        return lists.tolist()
    if type(lists).__name__ == "CSR":
        raise TypeError(f"{name} takes item ids (one list per query), not a CSR of catalogue positions")
    if isinstance(lists, (str, bytes)) or not isinstance(lists, Sequence):
        raise TypeError(f"{name}: expected one list of ids per query, got {type(lists).__name__}")
    rows = []
    for position, row in enumerate(lists):
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray, Tensor)):
            raise TypeError(f"{name}[{position}]: expected a list of ids for query {position}, got "
                            f"{shorten(row)} (pass one list per query, e.g. [[10, 20], []])")
        rows.append(_id_values(row, f"{name}[{position}]"))
    return rows

