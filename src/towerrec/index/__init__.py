"""Candidate indexes: given query embeddings, find the top-K items of the catalogue.

Exclusions are item ids (``exclude_ids=``); embeddings may be tensors, numpy arrays or lists of lists.
"""

from __future__ import annotations

from pathlib import Path

from towerrec.index.base import FORMAT_VERSION, Index, SearchResult
from towerrec.index.brute_force import BruteForceIndex
from towerrec.index.faiss_index import FaissIndex, recall_against

__all__ = ["FORMAT_VERSION", "BruteForceIndex", "FaissIndex", "Index", "SearchResult", "load_index", "recall_against"]

KINDS: dict[str, type[Index]] = {BruteForceIndex.kind: BruteForceIndex, FaissIndex.kind: FaissIndex}


def load_index(folder: str | Path) -> Index:
    """Loads a saved index of any kind (:class:`BruteForceIndex`, :class:`FaissIndex`), by the ``kind`` of its ``index.json``.

    Raises:
        TowerrecError: no index in ``folder``, an unknown kind or format version, or a data file that
            does not match its recorded SHA-256.
    """
    import json

    from towerrec.errors import TowerrecError
    from towerrec.index.base import MANIFEST, read_manifest

    path = Path(folder) / MANIFEST
    kind = None
    if path.is_file():
        try:
            kind = json.loads(path.read_text()).get("kind")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = None
    if kind not in KINDS:
        if not path.is_file() or kind is None:
            read_manifest(folder, "brute_force")  # raises the precise error (missing, corrupt, old version)
        raise TowerrecError(f"{path}: unknown index kind {kind!r}; this towerrec reads {', '.join(KINDS)}")
    return KINDS[kind].load(folder)
