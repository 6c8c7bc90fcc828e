"""Extra item columns from a user-supplied table (CSV or Parquet), joined on the item id.

The W2 article fetched movie lengths from IMDb; towerrec instead reads any such
columns from a file the user supplies (``--item-features lengths.csv --on movie_id``).

Rules (every violation names the file, the line and the column):

- the ``on`` column holds the item id; an empty id or a repeated id is an error;
- a column is numeric when its first non-empty value is a number; then every
  other non-empty value must be a number too (else an error); other columns are
  categorical (strings; usable as ``item:<column>`` id features);
- in a numeric column, ``nan`` (any case) is a missing value like an empty cell;
  an infinite value (``inf``, ``-inf``, or one beyond float range such as ``1e999``)
  is an error, as a non-number is: it usually comes from a division by zero;
- catalogue items the file lacks, and missing numeric cells, get a default and a
  ``<column>_missing`` flag (1.0) beside the value: the ``--item-feature-default
  column=value`` given (a finite number), else :data:`DEFAULTS` (``length`` = 90
  minutes, as the article did), else the median of the column's present values
  (the upper of the two middle values for an even count: always a value of the file);
  a warning says how many items were filled;
- ids in the file that are not in the catalogue are ignored (with a warning).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from towerrec import fsio
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError, shorten, shorten_text

DEFAULTS: dict[str, float] = {"length": 90.0}
MISSING_SUFFIX = "_missing"


def parse_defaults(entries: tuple[str, ...] | list[str] | None) -> dict[str, float]:
    """``["length=90"]`` -> ``{"length": 90.0}``."""
    out: dict[str, float] = {}
    for entry in entries or ():
        name, sep, value = entry.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            out[name.strip()] = number
        except ValueError:
            raise ConfigError(
                f"item feature default {shorten(entry)} is not COLUMN=NUMBER with a finite number (e.g. length=90)"
            ) from None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_item_table(path: str | Path, on: str) -> pl.DataFrame:
    """The file as a frame: ``item_id`` (String, from ``on``) plus typed extra columns.

    Line numbers in errors are the file's (header = line 1) for CSV, and the
    1-based row for Parquet.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such item-features file", file=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            raw = fsio.read_parquet(path)
            raw = raw.with_columns(pl.all().cast(pl.String))
            offset = 1  # row r (0-based) is reported as r + 1
        elif suffix in (".csv", ".tsv", ".txt"):
            raw = fsio.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
            offset = 2  # header is line 1
        else:
            raise DataError("item features must be a .csv, .tsv or .parquet file", file=path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed file is a user error
        raise DataError(f"cannot read: {shorten_text(str(exc))}", file=path) from exc
    if on not in raw.columns:
        raise DataError(f"has no id column {shorten(on)}; its columns: {shorten_text(', '.join(raw.columns))}", file=path,
                        hint="pass --on with the name of the file's item-id column")
    ids = raw[on].str.strip_chars()
    empty = ids.is_null() | (ids == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError("empty item id", file=path, line=row + offset, field=on)
    repeat = ~ids.is_first_distinct()
    if repeat.any():
        second = int(np.flatnonzero(repeat.to_numpy())[0])
        first = int(np.flatnonzero((ids == ids[second]).to_numpy())[0])
        raise DataError(f"item id {shorten(ids[second])} appears twice (first at line {first + offset})",
                        file=path, line=second + offset, field=on)
    columns: list[pl.Series] = [ids.alias("item_id")]
    for name in raw.columns:
        if name == on:
            continue
        if name in ("item_id", "title", "year", "genres"):
            raise DataError(f"column {shorten(name)} clashes with a built-in item column; rename it", file=path, field=name)
        values = raw[name].str.strip_chars()
        present = values.filter(values.is_not_null() & (values != "")).to_list()
        if present and _is_number(present[0]):
            parsed = values.cast(pl.Float64, strict=False)
            bad = (values.is_not_null() & (values != "")) & parsed.is_null()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{shorten(values[row])} is not a number (this column is numeric)",
                                file=path, line=row + offset, field=name)
            infinite = parsed.is_infinite().fill_null(False)
            if infinite.any():
                row = int(np.flatnonzero(infinite.to_numpy())[0])
                raise DataError(f"{shorten(values[row])} is not a finite number", file=path, line=row + offset,
                                field=name, hint="leave the cell empty (or write nan) to mark the value missing")
            columns.append(parsed.fill_nan(None).alias(name))  # nan = missing
        else:
            columns.append(values.replace("", None).alias(name))
    return pl.DataFrame(columns)


def _middle_value(present: pl.Series) -> float:
    """The median of the present (non-missing) values, upper middle for an even count; 0 when none."""
    if not len(present):
        return 0.0
    return float(present.sort()[len(present) // 2])


def file_digest(path: str | Path) -> str:
    """Hex SHA-256 of the file; an unreadable file is one located error (:func:`towerrec.fsio.sha256_file`)."""
    return fsio.sha256_file(path)


def join_item_features(
    dataset: Dataset,
    path: str | Path,
    on: str | None = None,
    defaults: dict[str, float] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Dataset:
    """``dataset`` with the file's columns (and ``<col>_missing`` flags) added to its item table.

    The fingerprint gains the file's SHA-256 (and the defaults), so trained-model
    caches follow the file's content, not its name.
    """
    if dataset.items is None:
        raise DataError("item features need a dataset with an items table", file=dataset.name)
    on = on or "item_id"
    table = read_item_table(path, on)
    id_dtype = dataset.items.schema["item_id"]
    if id_dtype != pl.String:
        cast = table["item_id"].cast(id_dtype, strict=False)
        bad = cast.is_null()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"item id {shorten(table['item_id'][row])} is not an integer, as this dataset's ids are",
                            file=path, line=row + (1 if Path(path).suffix.lower() == ".parquet" else 2), field=on)
        table = table.with_columns(cast.alias("item_id"))
    extra = [c for c in table.columns if c != "item_id"]
    clash = [c for c in extra if c in dataset.items.columns]
    if clash:
        raise DataError(f"column(s) {clash} already exist in the dataset's items table; rename them", file=path)
    defaults = {**DEFAULTS, **(defaults or {})}
    unknown_ids = (~table["item_id"].is_in(dataset.items["item_id"].implode())).sum()
    items = dataset.items.join(table, on="item_id", how="left", maintain_order="left")
    absent = int((~dataset.items["item_id"].is_in(table["item_id"].implode())).sum())
    used: dict[str, float] = {}
    fills = []
    for name in extra:
        if not table.schema[name].is_numeric():
            continue
        present = table[name].drop_nulls()
        value = defaults.get(name, _middle_value(present))
        used[name] = value
        fills += [
            pl.col(name).is_null().cast(pl.Float32).alias(name + MISSING_SUFFIX),
            pl.col(name).fill_null(value),
        ]
    if fills:
        items = items.with_columns(fills)
    say = warn or (lambda _m: None)
    if absent:
        filled = ", ".join(f"{k}={v:g}" for k, v in used.items()) or "null"
        say(f"{path}: {absent} of {dataset.items.height} catalogue items have no row; they get {filled} "
            f"and {MISSING_SUFFIX[1:]} flag 1")
    if unknown_ids:
        say(f"{path}: {unknown_ids} id(s) are not in the catalogue and are ignored")
    key = hashlib.sha256(
        f"{dataset.fingerprint}|{file_digest(path)}|{on}|{sorted(used.items())}".encode()
    ).hexdigest()[:16]
    return Dataset(
        name=dataset.name,
        interactions=dataset.interactions,
        items=items,
        users=dataset.users,
        fingerprint=f"{dataset.fingerprint}+items:{key}",
        meta={**dataset.meta, "item_features": str(path)},
    )
