"""Any user-supplied interactions table (CSV or Parquet) -> :class:`Dataset`.

CSV is read as text and every column is typed from ALL its values (not a first-rows
guess), so a bad value is reported with its file, line and column instead of
failing deep inside a training run. Line numbers count the header as line 1
(quoted fields with embedded newlines would shift them). Parquet keeps its types;
its errors name the 1-based row.

Conversions: ids that are all integers (and print back identically, so "007" stays
a string) become Int64, other ids String. Timestamps are integer epoch seconds,
or ISO dates/datetimes converted to epoch seconds (UTC when no zone is given).
Without a timestamp column the timestamps are null: random splits work, while
time-ordered protocols (temporal, leave-last-out, sequences) raise a clear error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from towerrec import fsio
from towerrec.data.tables import Dataset
from towerrec.data.text_table import read_text_table
from towerrec.errors import DataError, shorten

PARQUET_SUFFIXES = (".parquet", ".pq")
NOT_TABLES = {".json", ".jsonl", ".xlsx", ".xls", ".ods", ".zip", ".gz", ".bz2", ".xz", ".zst", ".7z", ".feather",
              ".arrow", ".ipc", ".avro", ".orc", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".db", ".sqlite"}
USER_COLUMNS = {"age": pl.Int32, "gender": pl.String, "occupation": pl.String, "zip": pl.String}
ITEM_COLUMNS = {"title": pl.String, "year": pl.Int32}
TIMESTAMP_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
DEDUPE = ("none", "keep-first", "keep-last")
_SECONDS_LIMIT = 10**11  # epoch seconds beyond this are after the year 5000: another unit


class _Table:
    """A raw table plus how to name a row of it in an error message.

    Parquet is recognised by its suffix or its magic bytes; anything else is read as a
    delimited text table (:mod:`towerrec.data.text_table`).
    """

    def __init__(self, path: str | Path, *, sep: str | None = None, header: bool = True,
                 columns: list[str] | None = None, one_column: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise DataError("is a folder, not a table file", file=self.path)
        if not self.path.is_file():
            raise DataError("not a regular file" if self.path.exists() else "file not found", file=self.path)
        self.headerless = columns is not None or not header
        suffix = self.path.suffix.lower()
        if suffix in NOT_TABLES:
            raise DataError(f"unsupported file type {suffix!r}", file=self.path,
                            hint="give a delimited text table (.csv, .tsv, .txt, ...) or a .parquet file")
        if _is_parquet(self.path):
            if sep is not None or self.headerless:
                raise DataError("--sep, --no-header and --columns apply to text tables, not Parquet", file=self.path)
            self.csv = False
            self.frame = fsio.read_parquet(self.path)
        else:
            self.csv = True
            self.frame, self.sep = read_text_table(self.path, sep=sep, header=header, columns=columns,
                                                   one_column=one_column)

    def column(self, name: str) -> pl.Series:
        if name not in self.frame.columns:
            raise DataError(f"no column {name!r}; columns are {self.frame.columns}", file=self.path, field=name,
                            hint="a file without a header has columns 1, 2, ... (--no-header) or --columns names"
                            if self.headerless else None)
        return self.frame[name]

    def fail(self, index: int, column: str, message: str, hint: str | None = None) -> DataError:
        """An error at 0-based data row ``index``: CSV line (header = line 1) or Parquet row."""
        if self.csv:
            return DataError(message, file=self.path, line=index + 1 + (not self.headerless), field=column, hint=hint)
        return DataError(f"row {index + 1}: {message}", file=self.path, field=column, hint=hint)

    def require_present(self, series: pl.Series, column: str) -> None:
        if series.null_count():
            raise self.fail(_first(series.is_null()), column, "missing value")


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    with fsio.io_errors(path), open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def import_interactions(
    path: str | Path,
    *,
    user_col: str,
    item_col: str,
    timestamp_col: str | None = None,
    rating_col: str | None = None,
    item_features: str | Path | None = None,
    user_features: str | Path | None = None,
    item_key: str | None = None,
    user_key: str | None = None,
    name: str | None = None,
    sep: str | None = None,
    header: bool = True,
    columns: list[str] | None = None,
    timestamp_unit: str = "s",
    dedupe: str = "none",
) -> Dataset:
    """Read an interactions file and optional item/user feature tables joined on the id.

    ``item_key``/``user_key`` name the id column in the feature tables (default:
    ``item_col``/``user_col``). Only the user, item, timestamp and rating columns
    of the interactions file are used; per-item and per-user features belong in
    the side tables. The fingerprint hashes the files' bytes and these options.

    Args:
        sep: the text table's separator (one character or ``"whitespace"``); sniffed when ``None``.
        header: the first line of a text table names its columns; without one, columns are
            named ``"1"``, ``"2"``, ... or by ``columns``.
        timestamp_unit: unit of numeric epoch timestamps: ``s``, ``ms``, ``us`` or ``ns``
            (stored as seconds, floored).
        dedupe: repeated (user, item) rows: ``none`` keeps them all, ``keep-first`` /
            ``keep-last`` keep one per pair, the earliest / latest in time (file order
            among equal or missing timestamps). ``meta["import"]`` records how many went.

    Raises:
        DataError: a missing column, a value of the wrong type (an id that is neither an
            integer nor a string, a rating or timestamp that is not a finite number), an
            out-of-range timestamp unit, a malformed table; named by file, line or row,
            and column.
    """
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp unit {timestamp_unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
    if dedupe not in DEDUPE:
        raise DataError(f"dedupe {dedupe!r} is not one of {', '.join(DEDUPE)}")
    table = _Table(path, sep=sep, header=header, columns=columns)
    users = _ids(table, user_col)
    items = _ids(table, item_col)
    n = table.frame.height
    interactions = pl.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": _ratings(table, rating_col) if rating_col else pl.repeat(None, n, dtype=pl.Float32, eager=True),
            "timestamp": (
                _timestamps(table, timestamp_col, timestamp_unit)
                if timestamp_col else pl.repeat(None, n, dtype=pl.Int64, eager=True)
            ),
        }
    )
    interactions, removed = deduplicate(interactions, dedupe)
    items_table = users_table = None
    if item_features is not None:
        frame = _side_table(item_features, item_key or item_col, "item_id", interactions["item_id"], ITEM_COLUMNS)
        items_table = item_table(frame)
    if user_features is not None:
        users_table = _side_table(user_features, user_key or user_col, "user_id", interactions["user_id"], USER_COLUMNS)
    options = {
        "user_col": user_col, "item_col": item_col, "timestamp_col": timestamp_col, "rating_col": rating_col,
        "item_key": item_key, "user_key": user_key,
    }  # fmt: skip
    # Reading options join the fingerprint only when not the defaults: earlier imports keep theirs.
    reading = {"sep": sep, "header": False if table.headerless else None, "columns": columns,
               "timestamp_unit": None if timestamp_unit == "s" else timestamp_unit,
               "dedupe": None if dedupe == "none" else dedupe}
    options.update({key: value for key, value in reading.items() if value is not None})
    files = [p for p in (path, item_features, user_features) if p is not None]
    return Dataset(
        name=name or Path(path).stem,
        interactions=interactions,
        items=items_table,
        users=users_table,
        fingerprint=_fingerprint(files, options),
        meta={"source": "import", "files": [str(f) for f in files], "options": options,
              "import": {"rows_read": n, "duplicates_removed": removed}},
    )


def deduplicate(interactions: pl.DataFrame, dedupe: str) -> tuple[pl.DataFrame, int]:
    """Keep one row per (user, item) pair (``keep-first`` / ``keep-last`` in time), or all (``none``).

    Time order is by timestamp, file order among ties and missing timestamps; the rows kept
    stay in file order. Returns the table and how many rows were removed.
    """
    if dedupe == "none":
        return interactions, 0
    indexed = interactions.with_row_index("__row")
    ordered = indexed.sort(["timestamp", "__row"], nulls_last=False)
    kept = ordered.unique(["user_id", "item_id"], keep="first" if dedupe == "keep-first" else "last",
                          maintain_order=True)
    kept = kept.sort("__row").drop("__row")
    return kept, interactions.height - kept.height


def _first(mask: pl.Series) -> int:
    return int(mask.arg_true()[0])


def _ids(table: _Table, column: str) -> pl.Series:
    raw = table.column(column)
    table.require_present(raw, column)
    ids = _as_id(table, raw, column).alias(column)
    if table.headerless and ids.dtype == pl.String and ids.len() > 1:
        rest = ids[1:].str.strip_chars()
        as_int = rest.cast(pl.Int64, strict=False)
        if as_int.null_count() == 0 and (as_int.cast(pl.String) == rest).all():
            raise table.fail(0, column, f"{shorten(ids[0])} is not an id like the rest of the column: "
                             "the first line looks like a header",
                             hint="drop --no-header / --columns: the header then names the columns")
    return ids


_ID_TYPES = "integer or string columns (whole-number floats are accepted)"


def _as_id(table: _Table, raw: pl.Series, column: str) -> pl.Series:
    """Int64 when every value is an integer that prints back the same, else String.

    Raises:
        DataError: the column is neither integer, whole-number float, nor text
            (Boolean, List, Date, ...): its values would not identify anything.
    """
    if raw.dtype.is_integer():
        return raw.cast(pl.Int64)
    if raw.dtype.is_float():
        finite = raw.is_finite().fill_null(True)
        if not finite.all():
            raise table.fail(_first(~finite), column, f"{raw[_first(~finite)]} is not an id")
        if (raw.drop_nulls() % 1 != 0).any():
            raise table.fail(_first(raw.fill_null(0) % 1 != 0), column, "ids must be integers or strings")
        return raw.cast(pl.Int64)
    if raw.dtype not in (pl.String, pl.Categorical) and not isinstance(raw.dtype, (pl.Categorical, pl.Enum)):
        raise DataError(f"{raw.dtype} is not an id type", file=table.path, field=column,
                        hint=f"ids must be {_ID_TYPES}")
    text = raw.cast(pl.String)
    as_int = text.str.strip_chars().cast(pl.Int64, strict=False)
    if as_int.null_count() == raw.null_count() and (as_int.cast(pl.String) == text.str.strip_chars()).all():
        return as_int
    return text


def _ratings(table: _Table, column: str) -> pl.Series:
    """Float32 ratings; text is parsed, a missing value stays null, NaN or ±inf is an error."""
    raw = table.column(column)
    if raw.dtype == pl.Boolean or not (raw.dtype.is_numeric() or raw.dtype == pl.String):
        raise DataError(f"{raw.dtype} is not a rating type", file=table.path, field=column,
                        hint="ratings must be numbers")
    if raw.dtype.is_numeric():
        values = raw.cast(pl.Float64)
    else:
        values = raw.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        bad = values.is_null() & raw.is_not_null()
        if bad.any():
            index = _first(bad)
            raise table.fail(index, column, f"rating {shorten(raw[index])} is not a number")
    finite = values.is_finite().fill_null(True)
    if not finite.all():
        index = _first(~finite)
        raise table.fail(index, column, f"rating {shorten(raw[index])} is not a finite number",
                         hint="leave the field empty for a missing rating")
    return values.cast(pl.Float32).alias("rating")


def _timestamps(table: _Table, column: str, unit: str = "s") -> pl.Series:
    """Epoch seconds from integers or floats (in ``unit``, floored), dates or datetimes.

    Raises:
        DataError: a missing, non-finite or unparseable value (its row), or numeric values
            that look like another unit than ``unit`` (e.g. milliseconds read as seconds).
    """
    raw = table.column(column)
    table.require_present(raw, column)
    if raw.dtype == pl.Boolean:
        raise DataError("Boolean is not a timestamp type", file=table.path, field=column,
                        hint="use integer epoch seconds or ISO dates")
    numeric = True
    if raw.dtype.is_integer():
        values = raw.cast(pl.Int64)
    elif raw.dtype.is_float():
        finite = raw.is_finite()
        if not finite.all():
            index = _first(~finite)
            raise table.fail(index, column, f"timestamp {raw[index]} is not a finite number")
        values = raw
    elif raw.dtype == pl.Date:
        return raw.cast(pl.Datetime("us")).dt.epoch("s").alias("timestamp")
    elif isinstance(raw.dtype, pl.Datetime):
        return raw.dt.epoch("s").alias("timestamp")
    else:  # text: integers, decimal numbers (881250949.0) or ISO dates
        text = raw.cast(pl.String).str.strip_chars()
        values = text.cast(pl.Int64, strict=False)
        if values.null_count():
            numbers = text.cast(pl.Float64, strict=False)
            nonfinite = (numbers.is_not_null() & ~numbers.is_finite()).fill_null(False)
            if nonfinite.any():
                index = _first(nonfinite)
                raise table.fail(index, column, f"timestamp {shorten(raw[index])} is not a finite number")
            numeric = False
            if numbers.null_count() == 0:  # every value a number: seconds (or --timestamp-unit) as floats
                return _to_seconds(table, column, numbers, unit).cast(pl.Int64).alias("timestamp")
            try:  # the format is inferred from the first value; a zone, if given, is honoured
                parsed = text.str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
            except pl.exceptions.ComputeError:  # no date format fits: the first bad value is reported below
                parsed = pl.repeat(None, text.len(), dtype=pl.Int64, eager=True)
            values = values.fill_null(parsed)
        if values.null_count():
            index = _first(values.is_null())
            raise table.fail(
                index,
                column,
                f"timestamp {shorten(raw[index])} is neither epoch seconds nor an ISO date/datetime",
                hint="use integer seconds or one ISO format (e.g. 2021-03-04 or 2021-03-04T10:00:00) throughout",
            )
    if numeric:
        values = _to_seconds(table, column, values, unit)
    return values.cast(pl.Int64).alias("timestamp")


def _to_seconds(table: _Table, column: str, values: pl.Series, unit: str) -> pl.Series:
    """Numeric epoch values in ``unit`` -> whole seconds; values too large for seconds are refused."""
    scale = TIMESTAMP_UNITS[unit]
    seconds = (values // scale) if scale > 1 else values.floor() if values.dtype.is_float() else values
    if seconds.dtype.is_float():
        seconds = seconds.floor()
    too_far = seconds.abs() >= _SECONDS_LIMIT
    if too_far.any():
        index = _first(too_far)
        value = values[index]
        guess = _guess_unit(abs(float(value)))
        raise table.fail(
            index, column,
            f"timestamp {shorten(int(value) if float(value).is_integer() else value)} is more than 3,000 years "
            f"{'before' if float(value) < 0 else 'after'} 1970 as epoch {_UNIT_WORDS[unit]}" + (f"; the values look like epoch {_UNIT_WORDS[guess]}" if guess else ""),
            hint=f"pass --timestamp-unit {guess}" if guess else "timestamps are epoch seconds or ISO dates",
        )  # fmt: skip
    return seconds


_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _guess_unit(value: float) -> str | None:
    """The first of s, ms, us, ns in which epoch value ``value`` falls before the year 5000."""
    return next((unit for unit, scale in TIMESTAMP_UNITS.items() if value / scale < _SECONDS_LIMIT), None)


def _side_table(
    path: str | Path, key: str, id_name: str, ids: pl.Series, types: dict[str, pl.DataType]
) -> pl.DataFrame:
    """A feature table keyed on the id, typed like the interactions' ids, each id once.

    Columns named in ``types`` get that type (a bad value is an error naming its
    row); ids that the interactions use but the table lacks get null features.
    """
    table = _Table(path, one_column=True)  # an id-only table lists the catalogue, nothing else
    raw = table.column(key)
    table.require_present(raw, key)
    key_values = _as_id(table, raw, key)
    if key_values.dtype != ids.dtype:
        key_values = key_values.cast(ids.dtype, strict=False)
        if key_values.null_count():
            index = _first(key_values.is_null())
            raise table.fail(index, key, f"id {shorten(raw[index])} is not an integer like the interactions' {id_name}s")
    duplicated = key_values.is_duplicated()
    if duplicated.any():
        index = int(duplicated.arg_true()[1])  # the second occurrence is the offending row
        raise table.fail(index, key, f"duplicate id {shorten(raw[index])}")
    others = table.frame.drop(key)
    if id_name in others.columns:
        raise DataError(f"column {id_name!r} clashes with the id column it becomes", file=path, field=id_name)
    if table.csv:
        others = _typed(others, {name for name, dtype in types.items() if dtype == pl.String})
    for name, dtype in types.items():
        if name in others.columns:
            cast = others[name].cast(dtype, strict=False)
            bad = cast.is_null() & others[name].is_not_null()
            if bad.any():
                index = _first(bad)
                raise table.fail(index, name, f"{shorten(others[name][index])} is not a valid {name} ({dtype})")
            others = others.with_columns(cast)
    frame = pl.DataFrame(key_values.alias(id_name)).hstack(others)
    if ids.len() and not ids.is_in(frame[id_name].implode()).any():
        raise DataError(
            f"no id in column {key!r} matches an id of the interactions",
            file=path,
            field=key,
            hint="name the feature table's id column with --on",
        )
    unique_ids = ids.unique(maintain_order=True)
    missing = unique_ids.filter(~unique_ids.is_in(frame[id_name].implode()))
    if missing.len():
        frame = pl.concat([frame, pl.DataFrame(missing.alias(id_name))], how="diagonal_relaxed")
    return frame


def _typed(frame: pl.DataFrame, keep_text: set[str]) -> pl.DataFrame:
    """Type CSV text columns from all their values: Int64 (when it prints back the same,
    so "02139" stays text), else Float64, else String; ``keep_text`` columns stay text."""
    if not frame.columns:  # an id-only table: nothing to type
        return frame
    columns = []
    for name in frame.columns:
        if name in keep_text:
            columns.append(frame[name])
            continue
        text = frame[name].str.strip_chars()
        present = text.drop_nulls()
        as_int = present.cast(pl.Int64, strict=False)
        as_float = present.cast(pl.Float64, strict=False)
        if present.len() and as_int.null_count() == 0 and (as_int.cast(pl.String) == present).all():
            columns.append(text.cast(pl.Int64).alias(name))
        elif present.len() and as_float.null_count() == 0:
            columns.append(text.cast(pl.Float64).alias(name))
        else:
            columns.append(frame[name])
    return pl.DataFrame(columns, schema={c.name: c.dtype for c in columns}, height=frame.height)


def item_table(frame: pl.DataFrame) -> pl.DataFrame:
    """An item side table in the items schema of tables.py: item_id, title (the id when missing), year
    (from a "Title (1995)" title when missing), genres (List[String], from "A|B" text too), then the rest."""
    ids = frame["item_id"].cast(pl.String)
    title = frame["title"].fill_null(ids) if "title" in frame.columns else ids
    if "year" in frame.columns:
        year = frame["year"]
    else:  # "Heat (1995)": the year in the title, as MovieLens titles carry it
        year = title.str.extract(r"\((\d{4})\)\s*$").cast(pl.Int32)
    if "genres" not in frame.columns:
        genres = pl.repeat([], frame.height, dtype=pl.List(pl.String), eager=True)
    elif isinstance(frame.schema["genres"], pl.List):
        genres = frame["genres"].cast(pl.List(pl.String)).fill_null([])
    else:  # "Action|Comedy"
        genres = (
            frame["genres"].cast(pl.String).fill_null("").str.split("|")
            .list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
        )  # fmt: skip
    extras = frame.drop([c for c in ("item_id", "title", "year", "genres") if c in frame.columns])
    return pl.DataFrame([frame["item_id"], title.alias("title"), year.alias("year"), genres.alias("genres")]).hstack(
        extras
    )


def _fingerprint(files: list[str | Path], options: dict) -> str:
    digest = hashlib.sha256()
    for file in files:
        fsio.hash_file_into(digest, file)
        digest.update(b"\0")
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()
