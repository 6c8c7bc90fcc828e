"""Numeric transforms fitted on train: equal-width buckets and standardisation.

Both compute in float64 so large values (Unix timestamps ~1e9) keep their
resolution; only the final normalised value is cast to float32.

Missing values (null or NaN) are left out of the fit and encode as the OOV
bucket / the mean. An infinite training value is a :class:`DataError` naming
the column (file readers reject them earlier, with the line). When encoding,
values outside the train range [min, max] are clipped to it, so neither
transform ever outputs inf or NaN, whatever a request sends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from towerrec.errors import DataError


def _floats(s: pl.Series) -> np.ndarray:
    """float64 values with nulls (and values that cannot be cast) as NaN."""
    if not s.dtype.is_numeric():
        s = s.cast(pl.Float64, strict=False)
    return s.cast(pl.Float64).fill_null(float("nan")).to_numpy()


def _train_values(s: pl.Series) -> np.ndarray:
    """The finite values to fit on (missing ones dropped); raises DataError on none or on an infinity."""
    x = _floats(s)
    x = x[~np.isnan(x)]
    infinite = np.isinf(x)
    if infinite.any():
        raise DataError(
            f"{int(infinite.sum())} infinite value(s) in the training data (e.g. {x[infinite][0]:g})",
            field=s.name,
            hint="fix the column at its source: an empty cell or nan marks a value missing",
        )
    if x.size == 0:
        raise DataError("no numeric values to fit on in the training data", field=s.name)
    return x


@dataclass
class Bucketizer:
    """``num_buckets`` equal-width buckets over the train range [min, max].

    Values outside the range clip to the end buckets; nulls take index 0, the
    single OOV row, so bucket ``b`` has index ``1 + b``.
    """

    boundaries: list[float]  # num_buckets - 1 inner edges, ascending

    @classmethod
    def fit(cls, s: pl.Series, num_buckets: int) -> Bucketizer:
        """Equal-width edges over the finite values of ``s`` (nulls/NaN left out).

        Raises:
            DataError: no numeric value to fit on, or an infinite one.
        """
        x = _train_values(s)
        edges = np.linspace(x.min(), x.max(), num_buckets + 1)[1:-1]
        return cls(edges.tolist())

    @property
    def size(self) -> int:
        """Embedding rows needed: ``num_buckets`` + 1 OOV row (index 0)."""
        return len(self.boundaries) + 2

    def encode(self, s: pl.Series) -> tuple[np.ndarray, int]:
        """int64 indices in [0, size) and the number of nulls (mapped to OOV index 0)."""
        x = _floats(s)
        null = np.isnan(x)
        idx = 1 + np.searchsorted(np.asarray(self.boundaries, dtype=np.float64), x, side="right")
        idx[null] = 0
        return idx.astype(np.int64), int(null.sum())

    def to_json(self) -> dict[str, Any]:
        """The fitted edges as JSON (``{"boundaries": [...]}``)."""
        return {"boundaries": self.boundaries}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Bucketizer:
        """A bucketizer from :meth:`to_json`'s output."""
        return cls([float(b) for b in d["boundaries"]])


@dataclass
class Normalizer:
    """(x - mean) / std with train statistics (population std, as Keras); missing -> mean (0).

    ``low`` / ``high`` are the train range; encoded values are clipped to it (as the
    bucketizer clips to its end buckets), so the output is always finite.
    """

    mean: float
    std: float
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def fit(cls, s: pl.Series) -> Normalizer:
        """Mean, standard deviation (1 when constant) and range of the finite values of ``s``.

        Raises:
            DataError: no numeric value to fit on, or an infinite one.
        """
        x = _train_values(s)
        std = float(x.std())
        return cls(float(x.mean()), std if std > 0 else 1.0, float(x.min()), float(x.max()))

    def encode(self, s: pl.Series) -> np.ndarray:
        """float32 [n, 1], finite."""
        x = np.clip(_floats(s), self.low, self.high)
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.where(np.isnan(x), 0.0, (x - self.mean) / self.std)
        limit = float(np.finfo(np.float32).max) / 2  # a normaliser saved without its range: still finite
        return np.clip(z, -limit, limit).astype(np.float32).reshape(-1, 1)

    def to_json(self) -> dict[str, Any]:
        """The fitted statistics as JSON (mean, std, min, max)."""
        return {"mean": self.mean, "std": self.std, "min": self.low, "max": self.high}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Normalizer:
        """A normalizer from :meth:`to_json`'s output (older files without a range: unbounded)."""
        return cls(float(d["mean"]), float(d["std"]), float(d.get("min", -math.inf)), float(d.get("max", math.inf)))
