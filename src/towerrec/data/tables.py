"""The one table schema every data source is converted into.

Parsers (MovieLens, imported CSV/Parquet, synthetic) all produce a
:class:`Dataset`, so splits, features and models never care where data came
from. Ids stay as the source gave them (Int64 for MovieLens, Int64 or String
for imported tables); they become dense indices only when features are fitted.

Schemas
-------
interactions: user_id, item_id (Int64 or String), rating (Float32, nullable),
              timestamp (Int64 seconds, nullable when the source has none)
items:        item_id, title (String), year (Int32, nullable),
              genres (List[String]), then any extra columns
users:        user_id, then any of age (Int32), gender, occupation, zip (String)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from towerrec.errors import DataError

ID_DTYPES = (pl.Int64, pl.String)
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class Dataset:
    """Interactions plus optional item and user side tables (schemas at the top of this module).

    Made by :func:`~towerrec.data.load_dataset` (built-in sets), the importer
    (files), :meth:`from_frame` (a DataFrame in memory) or the synthetic generator.
    ``fingerprint`` identifies the data (hash of the source files, the frames or
    the generator's parameters); caches of prepared data and trained models are
    keyed by it so a changed source never reuses a stale result.

    Raises:
        DataError: a table that does not follow its schema (missing column, wrong type, missing
            or duplicate id), at construction.
    """

    name: str
    interactions: pl.DataFrame = field(repr=False)
    items: pl.DataFrame | None = field(default=None, repr=False)
    users: pl.DataFrame | None = field(default=None, repr=False)
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_interactions(self.interactions, source=self.name)
        if self.items is not None:
            validate_items(self.items, source=self.name)
        if self.users is not None:
            validate_users(self.users, source=self.name)

    @classmethod
    def from_frame(
        cls,
        df: Any,
        *,
        user: str,
        item: str,
        timestamp: str | None = None,
        rating: str | None = None,
        items: Any = None,
        users: Any = None,
        name: str = "frame",
    ) -> Dataset:
        """A dataset from a Polars or pandas DataFrame of interactions, one row per interaction.

        Usable wherever a dataset is: ``towerrec.train.prepared.prepare(config, dataset)``,
        ``train_run(config, dataset=...)``. Only the named columns are read; the frame's
        types are kept (no re-parsing of text): integer ids -> Int64, whole-number float ids
        (pandas' integers with missing values) -> Int64, string/categorical ids -> String.

        Args:
            df: the interactions (``polars.DataFrame`` or ``pandas.DataFrame``; pandas is
                imported only when given one).
            user, item: the id columns.
            timestamp: epoch seconds (integers, or floats floored) or a date/datetime column
                (naive = UTC). None: timestamps are null, so random splits work and time-ordered
                ones (``temporal``, ``leave-last-out``, sequences) raise a clear error.
            rating: a numeric column. None: implicit feedback, ratings are null (unknown): every
                row is a positive interaction, retrieval losses ignore ratings and ``min_rating``
                filters keep unrated rows.
            items: optional item features, a frame keyed by the ``item`` column (or ``item_id``):
                ``title``, ``year``, ``genres`` (list or ``"A|B"``) and any extra columns.
            users: optional user features keyed by the ``user`` column (or ``user_id``).
            name: the dataset's name (run directory names and messages).
        Returns:
            A validated :class:`Dataset`; its fingerprint hashes the converted tables
            (:func:`frame_fingerprint`).
        Raises:
            TypeError: ``df`` is not a Polars or pandas DataFrame.
            DataError: an unknown column (the message lists the available ones), a missing id,
                a non-integral or non-finite float id, a NaN/inf rating, a missing timestamp, or
                a column of a type that cannot hold ids, ratings or times; named by column and
                the first bad row (0-based position in the frame).
        """
        from towerrec.data.frames import dataset_from_frame

        return dataset_from_frame(df, user=user, item=item, timestamp=timestamp, rating=rating,
                                  items=items, users=users, name=name)

    @property
    def num_users(self) -> int:
        """Distinct users in the interactions."""
        return self.interactions["user_id"].n_unique()

    @property
    def num_items(self) -> int:
        """Catalogue size: the item table when present, else items seen in interactions."""
        if self.items is not None:
            return self.items.height
        return self.interactions["item_id"].n_unique()


def _require(df: pl.DataFrame, columns: tuple[str, ...], source: str, table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{table} table lacks column(s) {missing}; it has {df.columns}",
            file=source,
        )


def _check_id(df: pl.DataFrame, column: str, source: str) -> None:
    dtype = df.schema[column]
    if dtype not in ID_DTYPES:
        raise DataError(f"ids must be Int64 or String, got {dtype}", file=source, field=column)
    nulls = df[column].null_count()
    if nulls:
        row = int(df.with_row_index().filter(pl.col(column).is_null())["index"][0])
        raise DataError(f"{nulls} missing id(s), first at row {row + 1}", file=source, field=column)


def validate_interactions(df: pl.DataFrame, source: str = "interactions") -> None:
    """Raise :class:`DataError` unless ``df`` follows the interactions schema."""
    _require(df, INTERACTION_COLUMNS, source, "interactions")
    _check_id(df, "user_id", source)
    _check_id(df, "item_id", source)
    if df.schema["rating"] != pl.Float32:
        raise DataError(f"rating must be Float32, got {df.schema['rating']}", file=source, field="rating")
    if df.schema["timestamp"] != pl.Int64:
        raise DataError(
            f"timestamp must be Int64 seconds, got {df.schema['timestamp']}", file=source, field="timestamp"
        )


def validate_items(df: pl.DataFrame, source: str = "items") -> None:
    """Raise :class:`DataError` unless ``df`` follows the items schema (item_id unique, title, year, genres)."""
    _require(df, ("item_id", "title", "year", "genres"), source, "items")
    _check_id(df, "item_id", source)
    if df["item_id"].is_duplicated().any():
        dup = df.filter(pl.col("item_id").is_duplicated())["item_id"][0]
        raise DataError(f"duplicate item_id {dup!r}", file=source, field="item_id")


def validate_users(df: pl.DataFrame, source: str = "users") -> None:
    """Raise :class:`DataError` unless ``df`` has a unique, non-null ``user_id`` (Int64 or String)."""
    _require(df, ("user_id",), source, "users")
    _check_id(df, "user_id", source)
    if df["user_id"].is_duplicated().any():
        dup = df.filter(pl.col("user_id").is_duplicated())["user_id"][0]
        raise DataError(f"duplicate user_id {dup!r}", file=source, field="user_id")


def empty_interactions(id_dtype: pl.DataType = pl.Int64) -> pl.DataFrame:
    """An interactions table with no rows, ids of ``id_dtype``."""
    return pl.DataFrame(
        schema={"user_id": id_dtype, "item_id": id_dtype, "rating": pl.Float32, "timestamp": pl.Int64}
    )


def frame_fingerprint(*frames: pl.DataFrame | None) -> str:
    """A stable SHA-256 over the contents of one or more frames (row order matters)."""
    h = hashlib.sha256()
    for df in frames:
        if df is None:
            h.update(b"<none>")
            continue
        h.update(repr(list(df.schema.items())).encode())
        for name in df.columns:
            col = df[name]
            if col.dtype.is_numeric() and col.null_count() == 0:
                h.update(col.to_numpy().tobytes())
            else:  # strings, lists, nullable columns: a text rendering is stable across versions
                h.update(repr(col.to_list()).encode())
    return h.hexdigest()


def item_aliases(dataset: Dataset) -> dict[str, Any]:
    """``{merged twin id (as text): the id it was merged into}``, from a MovieLens dataset's duplicate titles.

    With ``duplicate_titles = "merge"`` (the default) MovieLens movies listed twice
    become one (268 -> 246 in ML-100K); ids clients already know keep naming the movie
    (``towerrec recommend --history``, served bundles). Empty for every other dataset.
    """
    info = dataset.meta.get("duplicate_titles") or {}
    if info.get("mode") != "merge":
        return {}
    return {str(twin): ids[0] for ids in (info.get("ids") or {}).values() for twin in ids[1:]}
