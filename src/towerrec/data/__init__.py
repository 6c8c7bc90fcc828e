"""Data layer: sources -> :class:`~towerrec.data.tables.Dataset` -> splits."""

from towerrec.data.tables import Dataset

__all__ = ["Dataset"]
