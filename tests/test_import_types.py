"""``data import`` refuses wrongly typed or shaped columns with file, row/line and column (rel-19)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from towerrec.data.importer import import_interactions
from towerrec.errors import DataError

N = 20


def base() -> pl.DataFrame:
    return pl.DataFrame({
        "user": [1 + i % 4 for i in range(N)],
        "item": [100 + (i * 7) % 6 for i in range(N)],
        "rating": [float(1 + i % 5) for i in range(N)],
        "ts": [881250949 + 3600 * i for i in range(N)],
    })  # fmt: skip


def imp(path: Path, **options):
    return import_interactions(path, user_col="user", item_col="item", rating_col="rating", timestamp_col="ts",
                               **options)


def test_boolean_user_column_is_not_an_id(tmp_path: Path) -> None:
    path = tmp_path / "user_bool.parquet"
    base().with_columns(pl.col("user").cast(pl.Boolean)).write_parquet(path)
    with pytest.raises(DataError) as err:
        imp(path)
    assert str(err.value) == f"{path}, field 'user': Boolean is not an id type"
    assert "integer or string" in err.value.hint


def test_list_user_column_is_not_an_id(tmp_path: Path) -> None:
    path = tmp_path / "user_list.parquet"
    base().with_columns(pl.col("user").map_elements(lambda x: [x], return_dtype=pl.List(pl.Int64))).write_parquet(path)
    with pytest.raises(DataError, match=r"field 'user': List\(Int64\) is not an id type"):
        imp(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_float_timestamp_names_its_row(tmp_path: Path, bad: float) -> None:
    frame = base().with_columns(pl.col("ts").cast(pl.Float64))
    frame[9, "ts"] = bad
    frame.write_parquet(path := tmp_path / "ts.parquet")
    with pytest.raises(DataError, match=r"field 'ts': row 10: timestamp -?(nan|inf) is not a finite number"):
        imp(path)


def test_nan_rating_in_parquet_names_its_row(tmp_path: Path) -> None:
    frame = base()
    frame[9, "rating"] = float("nan")
    frame.write_parquet(path := tmp_path / "rating_nan.parquet")
    with pytest.raises(DataError, match=r"field 'rating': row 10: rating nan is not a finite number"):
        imp(path)


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "-Infinity"])
def test_nan_rating_in_csv_names_its_line(tmp_path: Path, text: str) -> None:
    rows = [f"{u},{i},{text if n == 5 else r},{t}" for n, (u, i, r, t) in enumerate(base().iter_rows())]
    (path := tmp_path / "nan_rating.csv").write_text("user,item,rating,ts\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        imp(path)
    assert (err.value.line, err.value.field) == (7, "rating") and "not a finite number" in str(err.value)


def test_an_empty_rating_stays_missing(tmp_path: Path) -> None:
    (path := tmp_path / "r.csv").write_text("user,item,rating,ts\n1,2,,5\n1,3,4,6\n")
    assert imp(path).interactions["rating"].to_list() == [None, 4.0]


def test_duplicated_header_names_both_positions(tmp_path: Path) -> None:
    lines = [",".join(map(str, row)) + ",999" for row in base().iter_rows()]
    (path := tmp_path / "dup_header.csv").write_text("user,item,rating,ts,user\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        imp(path)
    assert err.value.line == 1 and "column 'user' appears twice in the header (positions 1 and 5)" in str(err.value)


@pytest.mark.parametrize("extra, found", [(",oops", 5), ("", 3)])
def test_ragged_line_is_reported_with_its_number(tmp_path: Path, extra: str, found: int) -> None:
    lines = []
    for n, row in enumerate(base().iter_rows()):
        fields = list(map(str, row))
        if n == 10:
            fields = fields + [extra.lstrip(",")] if extra else fields[:3]
        lines.append(",".join(fields))
    (path := tmp_path / "extra_field.csv").write_text("user,item,rating,ts\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        imp(path)
    message = str(err.value)
    assert err.value.line == 12 and f"expected 4 fields separated by ',', found {found}" in message
    assert "\n" not in message and "truncate_ragged_lines" not in message and "Schema" not in message


def test_ragged_line_in_a_quoted_csv(tmp_path: Path) -> None:
    (path := tmp_path / "q.csv").write_text('user,item,rating,ts\n1,"a, b",4,5\n2,c,3,6,7\n')
    with pytest.raises(DataError) as err:
        imp(path)
    assert err.value.line == 3 and "found 5" in str(err.value)


def test_bool_rating_and_timestamp_are_refused(tmp_path: Path) -> None:
    base().with_columns(pl.col("rating") > 2).write_parquet(path := tmp_path / "r.parquet")
    with pytest.raises(DataError, match="Boolean is not a rating type"):
        imp(path)
    base().with_columns(pl.col("ts") > 0).write_parquet(path)
    with pytest.raises(DataError, match="Boolean is not a timestamp type"):
        imp(path)
