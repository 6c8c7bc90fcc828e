"""Vocabularies: raw values (int or str) -> dense indices, fitted once.

Layout of indices: ``[padding (text/multi only)] [OOV buckets] [values by
descending frequency, ties by value]``. Unknown values land in an OOV bucket
chosen by a hash that is stable across processes and library versions, so a
saved vocabulary encodes the same way forever.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

ValueType = Literal["int", "str"]
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def value_type(dtype: pl.DataType) -> ValueType:
    """Integers stay integers; every other dtype is looked up as its string form."""
    return "int" if dtype.is_integer() else "str"


def as_keys(s: pl.Series, kind: ValueType) -> pl.Series:
    """Cast to the vocabulary's key dtype; values that cannot be cast become null (OOV)."""
    target = pl.Int64 if kind == "int" else pl.String
    return s if s.dtype == target else s.cast(target, strict=False)


def stable_hash(s: pl.Series) -> np.ndarray:
    """Non-negative int64 hash of each non-null value, identical in every process.

    Integers use splitmix64 (vectorised); strings use CRC32 over the distinct
    values only, so the Python work is per unique value, not per row.
    """
    if s.dtype == pl.Int64:
        x = s.to_numpy().astype(np.uint64)
        with np.errstate(over="ignore"):
            x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
            x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
            x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
            x = x ^ (x >> np.uint64(31))
        return (x >> np.uint64(1)).astype(np.int64)
    uniq = s.unique()
    codes = pl.Series([zlib.crc32(v.encode()) for v in uniq.to_list()], dtype=pl.Int64)
    return s.replace_strict(uniq, codes, return_dtype=pl.Int64).to_numpy()


@dataclass
class Vocabulary:
    """Fitted value -> index map. ``values[i]`` has index ``offset + i``."""

    values: list[Any]
    kind: ValueType
    num_oov: int = 1
    padding: bool = False
    _keys: pl.Series = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dtype = pl.Int64 if self.kind == "int" else pl.String
        self._keys = pl.Series("key", self.values, dtype=dtype)

    @classmethod
    def fit(
        cls,
        s: pl.Series,
        *,
        num_oov: int = 1,
        padding: bool = False,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Most frequent values first (ties by value), dropping those seen < ``min_count`` times."""
        kind = value_type(s.dtype)
        keys = as_keys(s, kind).drop_nulls().rename("value")
        counts = (
            keys.value_counts(name="count")
            .filter(pl.col("count") >= min_count)
            .sort(["count", "value"], descending=[True, False])
        )
        if max_size is not None:
            counts = counts.head(max_size)
        return cls(counts["value"].to_list(), kind, num_oov, padding)

    @property
    def offset(self) -> int:
        """Index of the first known value (after padding and OOV rows)."""
        return int(self.padding) + self.num_oov

    @property
    def size(self) -> int:
        """Embedding rows needed: padding + OOV buckets + values."""
        return self.offset + len(self.values)

    def lookup(self, s: pl.Series) -> tuple[np.ndarray, int]:
        """Indices (int64, same length as ``s``) and how many values fell into OOV (nulls included)."""
        keys = as_keys(s, self.kind)
        idx = keys.replace_strict(
            self._keys, pl.int_range(self.offset, self.size, eager=True), default=None, return_dtype=pl.Int64
        )
        missing = idx.is_null()
        n_oov = int(missing.sum())
        out = idx.fill_null(int(self.padding)).to_numpy(writable=True).astype(np.int64, copy=False)
        if n_oov and self.num_oov > 1:
            unknown = keys.filter(missing & keys.is_not_null())
            pos = np.flatnonzero((missing & keys.is_not_null()).to_numpy())
            out[pos] = int(self.padding) + stable_hash(unknown) % self.num_oov
        return out, n_oov

    def to_json(self) -> dict[str, Any]:
        """The vocabulary as JSON (values in index order, kind, OOV buckets, padding)."""
        return {"values": self.values, "kind": self.kind, "num_oov": self.num_oov, "padding": self.padding}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Vocabulary:
        """A vocabulary from :meth:`to_json`'s output."""
        return cls(list(d["values"]), d["kind"], int(d["num_oov"]), bool(d["padding"]))
