"""An in-memory DataFrame (Polars or pandas) -> :class:`~towerrec.data.tables.Dataset`.

What :meth:`Dataset.from_frame` does. The frame's types are kept as given, not
re-guessed from text: integer ids become Int64, whole-number float ids (what
pandas makes of an integer column with a missing value) Int64, string or
categorical ids String. Ratings become Float32; timestamps Int64 epoch seconds
(from integers, floats floored, or dates/datetimes, UTC when naive).

Like :func:`towerrec.data.importer.import_interactions`, a frame without a
rating column gives null ratings (implicit feedback: every row is a positive
interaction; retrieval losses ignore ratings and ``min_rating`` filters keep
unrated rows), and a frame without a timestamp column gives null timestamps
(random splits work; time-ordered protocols such as ``temporal`` and
``leave-last-out`` then raise a clear error). Only the named columns are read.

Errors are :class:`~towerrec.errors.DataError` naming the column and the first
bad row, counted from 0 (the frame's row position, ``df.iloc[i]`` in pandas).
pandas is imported only when a pandas frame is given.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from towerrec.data.importer import ITEM_COLUMNS, USER_COLUMNS, item_table
from towerrec.data.tables import Dataset, frame_fingerprint
from towerrec.errors import DataError, listing, shorten

_ID_TYPES = "integers, whole-number floats or strings"


def dataset_from_frame(
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
    """Builds a :class:`Dataset` from a Polars or pandas DataFrame; see :meth:`Dataset.from_frame`."""
    source = name
    used = [c for c in (user, item, timestamp, rating) if c is not None]
    if len(set(used)) != len(used):
        raise DataError(f"one column is named for two roles: user={user!r}, item={item!r}, "
                        f"timestamp={timestamp!r}, rating={rating!r}", file=source)
    frame = _polars(df, "df", used, source, nan_to_null=False)
    if frame.height == 0:
        raise DataError("the frame has no rows", file=source, hint="pass at least one interaction")
    n = frame.height
    interactions = pl.DataFrame(
        {
            "user_id": _ids(frame[user], source),
            "item_id": _ids(frame[item], source),
            "rating": _ratings(frame[rating], source) if rating else pl.repeat(None, n, dtype=pl.Float32, eager=True),
            "timestamp": (_timestamps(frame[timestamp], source) if timestamp
                          else pl.repeat(None, n, dtype=pl.Int64, eager=True)),
        }
    )
    items_table = users_table = None
    if items is not None:
        side = _side(items, "items", (item, "item_id"), interactions["item_id"], ITEM_COLUMNS, source)
        items_table = item_table(side)
    if users is not None:
        users_table = _side(users, "users", (user, "user_id"), interactions["user_id"], USER_COLUMNS, source)
    return Dataset(
        name=name,
        interactions=interactions,
        items=items_table,
        users=users_table,
        fingerprint=frame_fingerprint(interactions, items_table, users_table),
        meta={"source": "frame", "columns": {"user": user, "item": item, "timestamp": timestamp, "rating": rating}},
    )


def _polars(df: Any, argument: str, columns: list[str], source: str, *, nan_to_null: bool) -> pl.DataFrame:
    """The named ``columns`` of a Polars or pandas frame as a Polars frame.

    ``nan_to_null``: pandas NaN becomes null (missing) instead of staying a NaN float.
    """
    if isinstance(df, pl.DataFrame):
        _require(df.columns, columns, argument, source)
        return df.select(columns)
    if type(df).__module__.split(".")[0] == "pandas" and type(df).__name__ == "DataFrame":
        names = [str(c) for c in df.columns]
        _require(names, columns, argument, source)
        series = []
        for column in columns:
            values = df[column] if column in df.columns else df[names.index(column)]
            series.append(_pandas_series(values, column, source, nan_to_null))
        return pl.DataFrame(series)
    kind = "a polars LazyFrame (call .collect() first)" if isinstance(df, pl.LazyFrame) else type(df).__name__
    raise TypeError(f"{argument} must be a polars or pandas DataFrame, got {kind}")


def _pandas_series(values: Any, column: str, source: str, nan_to_null: bool) -> pl.Series:
    """One pandas column as a Polars series; a column of mixed Python types is an error naming its first odd row."""
    try:
        return pl.from_pandas(values.reset_index(drop=True), nan_to_null=nan_to_null).alias(column)
    except Exception:  # pyarrow refuses mixed objects (ints and strs, ...): find the first odd one
        objects = values.tolist()
        first = type(objects[0])
        row = next((i for i, v in enumerate(objects) if type(v) is not first and v is not None), 0)
        raise DataError(f"row {row}: {shorten(objects[row])} ({type(objects[row]).__name__}) differs in type from "
                        f"row 0 ({first.__name__}); a column must hold one type", file=source, field=column) from None


def _require(available: list[str], wanted: list[str], argument: str, source: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{argument} has no column(s) {listing([repr(c) for c in missing])}; "
                        f"its columns are {listing([repr(c) for c in available], 20)}", file=source)


def _first(mask: pl.Series) -> int:
    return int(mask.arg_true()[0])


def _ids(raw: pl.Series, source: str) -> pl.Series:
    """Int64 ids from integer or whole-number float columns, String ids from text or categorical ones.

    Raises:
        DataError: a missing id, a non-integral or non-finite float, an unsigned id beyond Int64,
            or a column of another type (bool, date, list, ...).
    """
    column = raw.name
    if raw.dtype.is_float():
        missing = raw.is_null() | raw.is_nan()
    else:
        missing = raw.is_null()
    if missing.any():
        row = _first(missing)
        raise DataError(f"row {row}: missing id ({int(missing.sum())} missing)",
                        file=source, field=column, hint="drop or fill the rows without an id")
    if raw.dtype.is_integer():
        if raw.dtype == pl.UInt64 and (raw > 2**63 - 1).any():
            row = _first(raw > 2**63 - 1)
            raise DataError(f"row {row}: id {raw[row]} does not fit in a signed 64-bit integer", file=source, field=column)
        return raw.cast(pl.Int64).alias(column)
    if raw.dtype.is_float():
        finite = raw.is_finite()
        if not finite.all():
            row = _first(~finite)
            raise DataError(f"row {row}: id {raw[row]} is not a finite number", file=source, field=column)
        fractional = raw % 1 != 0
        if fractional.any():
            row = _first(fractional)
            raise DataError(f"row {row}: id {raw[row]} is not a whole number", file=source, field=column,
                            hint=f"ids must be {_ID_TYPES}")
        if (raw.abs() >= 2.0**63).any():
            row = _first(raw.abs() >= 2.0**63)
            raise DataError(f"row {row}: id {raw[row]} does not fit in a 64-bit integer", file=source, field=column)
        return raw.cast(pl.Int64).alias(column)
    if raw.dtype == pl.String or isinstance(raw.dtype, (pl.Categorical, pl.Enum)):
        return raw.cast(pl.String).alias(column)
    raise DataError(f"{raw.dtype} is not an id type", file=source, field=column, hint=f"ids must be {_ID_TYPES}")


def _ratings(raw: pl.Series, source: str) -> pl.Series:
    """Float32 ratings from any numeric column; null stays null (unknown), NaN or ±inf is an error."""
    column = raw.name
    if raw.dtype == pl.Boolean or not raw.dtype.is_numeric():
        raise DataError(f"{raw.dtype} is not a rating type", file=source, field=column, hint="ratings must be numbers")
    values = raw.cast(pl.Float64)
    finite = values.is_finite().fill_null(True)
    if not finite.all():
        row = _first(~finite)
        raise DataError(f"row {row}: rating {values[row]} is not a finite number", file=source, field=column,
                        hint="drop the row, or use null (None) for an unknown rating")
    return values.cast(pl.Float32).alias("rating")


def _timestamps(raw: pl.Series, source: str) -> pl.Series:
    """Int64 epoch seconds from integers, floats (floored), dates or datetimes (UTC when naive).

    Raises:
        DataError: a missing or non-finite value (its row), or a column of another type (text, bool, ...).
    """
    column = raw.name
    missing = raw.is_null() | (raw.is_nan() if raw.dtype.is_float() else False)
    if missing.any():
        raise DataError(f"row {_first(missing)}: missing timestamp", file=source, field=column,
                        hint="drop or fill those rows, or leave out timestamp= (random splits need none)")
    if raw.dtype.is_integer():
        return raw.cast(pl.Int64).alias("timestamp")
    if raw.dtype.is_float():
        finite = raw.is_finite()
        if not finite.all():
            row = _first(~finite)
            raise DataError(f"row {row}: timestamp {raw[row]} is not a finite number", file=source, field=column)
        return raw.floor().cast(pl.Int64).alias("timestamp")
    if raw.dtype == pl.Date:
        return raw.cast(pl.Datetime("us")).dt.epoch("s").alias("timestamp")
    if isinstance(raw.dtype, pl.Datetime):
        return raw.dt.epoch("s").alias("timestamp")
    raise DataError(f"{raw.dtype} is not a timestamp type", file=source, field=column,
                    hint="use epoch seconds (integers) or a datetime column (pd.to_datetime / str.to_datetime)")


def _side(df: Any, argument: str, keys: tuple[str, str], ids: pl.Series, types: dict[str, pl.DataType],
          source: str) -> pl.DataFrame:
    """A side table keyed on the id (its column named like the interactions' or ``item_id``/``user_id``).

    Ids typed like the interactions' ids, each once; ids the interactions use but the table lacks get null
    features; columns named in ``types`` get that type.
    """
    names = list(df.columns) if isinstance(df, pl.DataFrame) else [str(c) for c in getattr(df, "columns", [])]
    key = next((k for k in keys if k in names), None)
    if key is None:
        _require(names, [keys[0]], argument, source)
    id_name = keys[1]
    frame = _polars(df, argument, names, f"{source} {argument}", nan_to_null=True)
    key_values = _ids(frame[key], f"{source} {argument}")
    if key_values.dtype != ids.dtype:
        raise DataError(f"{argument} ids are {key_values.dtype}, the interactions' {id_name}s are {ids.dtype}",
                        file=source, field=key, hint="give both tables the same id type")
    duplicated = key_values.is_duplicated()
    if duplicated.any():
        row = int(duplicated.arg_true()[1])
        raise DataError(f"row {row}: duplicate id {shorten(key_values[row])}", file=f"{source} {argument}", field=key)
    others = frame.drop(key)
    if id_name in others.columns:
        raise DataError(f"column {id_name!r} clashes with the id column {key!r} it becomes",
                        file=f"{source} {argument}", field=id_name)
    for column, dtype in types.items():
        if column in others.columns:
            cast = others[column].cast(dtype, strict=False)
            bad = cast.is_null() & others[column].is_not_null()
            if bad.any():
                row = _first(bad)
                raise DataError(f"row {row}: {shorten(others[column][row])} is not a valid {column} ({dtype})",
                                file=f"{source} {argument}", field=column)
            others = others.with_columns(cast)
    table = pl.DataFrame(key_values.alias(id_name)).hstack(others)
    unique_ids = ids.unique(maintain_order=True)
    missing = unique_ids.filter(~unique_ids.is_in(table[id_name].implode()))
    if missing.len():
        table = pl.concat([table, pl.DataFrame(missing.alias(id_name))], how="diagonal_relaxed")
    return table
