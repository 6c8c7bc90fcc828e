"""Candidate indexes: given query embeddings, find the top-K items of the catalogue."""

from towerrec.index.base import FORMAT_VERSION, Index, SearchResult
from towerrec.index.brute_force import BruteForceIndex

__all__ = ["FORMAT_VERSION", "BruteForceIndex", "Index", "SearchResult"]
