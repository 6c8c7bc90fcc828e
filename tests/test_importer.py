"""Importing user tables: CSV and Parquet, id typing, timestamps, feature tables, located errors."""

from pathlib import Path

import polars as pl
import pytest

from towerrec.data.importer import import_interactions
from towerrec.data.splits import make_split
from towerrec.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def ratings(tmp_path):
    return _write(
        tmp_path / "ratings.csv",
        "user,movie,stars,when\nu1,10,4,2021-03-04\nu1,11,5,2021-03-05T10:00:00\nu2,10,3.5,2021-03-06\n",
    )


def test_csv_with_string_users_and_iso_times(ratings):
    ds = import_interactions(ratings, user_col="user", item_col="movie", timestamp_col="when", rating_col="stars")
    inter = ds.interactions
    assert inter.schema == {"user_id": pl.String, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}
    assert inter["user_id"].to_list() == ["u1", "u1", "u2"]
    assert inter["timestamp"].to_list() == [1614816000, 1614938400, 1614988800]
    assert inter["rating"].to_list() == [4.0, 5.0, 3.5]
    assert ds.name == "ratings" and ds.items is None and len(ds.fingerprint) == 64


def test_parquet_and_epoch_seconds(tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame({"u": [1, 2], "i": ["a", "b"], "t": [100, 200]}).write_parquet(path)
    ds = import_interactions(path, user_col="u", item_col="i", timestamp_col="t", name="ev")
    assert ds.interactions.schema["user_id"] == pl.Int64 and ds.interactions.schema["item_id"] == pl.String
    assert ds.interactions["timestamp"].to_list() == [100, 200]
    assert ds.interactions["rating"].null_count() == 2 and ds.name == "ev"


def test_leading_zero_ids_stay_strings(tmp_path):
    path = _write(tmp_path / "r.csv", "u,i\n007,1\n7,2\n")
    assert import_interactions(path, user_col="u", item_col="i").interactions["user_id"].to_list() == ["007", "7"]


def test_bad_rating_names_file_line_and_column(ratings, tmp_path):
    path = _write(tmp_path / "bad.csv", "user,movie,stars\nu1,1,4\nu1,2,five\n")
    with pytest.raises(DataError) as err:
        import_interactions(path, user_col="user", item_col="movie", rating_col="stars")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 3, "stars")
    assert "'five'" in str(err.value)


def test_missing_id_and_bad_timestamp_are_located(tmp_path):
    path = _write(tmp_path / "r.csv", "u,i,t\n1,1,5\n2,,6\n3,3,yesterday\n")
    with pytest.raises(DataError) as err:
        import_interactions(path, user_col="u", item_col="i")
    assert (err.value.line, err.value.field) == (3, "i")
    fixed = _write(tmp_path / "r2.csv", "u,i,t\n1,1,5\n2,2,6\n3,3,yesterday\n")
    with pytest.raises(DataError) as err:
        import_interactions(fixed, user_col="u", item_col="i", timestamp_col="t")
    assert (err.value.line, err.value.field) == (4, "t")


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "r.parquet"
    pl.DataFrame({"u": [1, 2, 3], "i": [1, 2, 3], "r": ["4", "x", "5"]}).write_parquet(path)
    with pytest.raises(DataError, match=r"r\.parquet, field 'r': row 2: rating 'x'"):
        import_interactions(path, user_col="u", item_col="i", rating_col="r")


def test_unsupported_file_and_missing_column(tmp_path):
    with pytest.raises(DataError, match="unsupported file type"):
        import_interactions(_write(tmp_path / "r.json", "{}"), user_col="u", item_col="i")
    with pytest.raises(DataError, match="no column 'user'"):
        import_interactions(_write(tmp_path / "r.csv", "u,i\n1,2\n"), user_col="user", item_col="i")


def test_feature_tables_join_on_the_id(ratings, tmp_path):
    items = _write(tmp_path / "items.csv", "movie,title,genres,length\n10,Heat (1995),Action|Crime,170\n12,X,,\n")
    users = _write(tmp_path / "users.csv", "user,age,gender,zip,score\nu1,25,M,02139,0.5\nu2,35,F,90210,1\n")
    ds = import_interactions(
        ratings, user_col="user", item_col="movie", item_features=items, user_features=users
    )
    it = ds.items.sort("item_id")
    assert it.columns[:4] == ["item_id", "title", "year", "genres"] and "length" in it.columns
    assert it["item_id"].to_list() == [10, 11, 12]  # 11 is rated but undescribed: added with null features
    assert it["title"].to_list() == ["Heat (1995)", "11", "X"]
    assert it["year"].to_list() == [1995, None, None]  # parsed from the title when no year column
    assert it["genres"].to_list() == [["Action", "Crime"], [], []]
    assert it.schema["length"] == pl.Int64
    assert ds.users["zip"].to_list() == ["02139", "90210"] and ds.users.schema["age"] == pl.Int32
    assert ds.users.schema["score"] == pl.Float64
    assert ds.num_items == 3


def test_feature_table_errors(ratings, tmp_path):
    dup = _write(tmp_path / "items.csv", "movie,title\n10,A\n11,B\n10,C\n")
    with pytest.raises(DataError) as err:
        import_interactions(ratings, user_col="user", item_col="movie", item_features=dup)
    assert (err.value.file, err.value.line, err.value.field) == (str(dup), 4, "movie")
    other_key = _write(tmp_path / "items2.csv", "id,title\n10,A\n")
    with pytest.raises(DataError, match="no column 'movie'"):
        import_interactions(ratings, user_col="user", item_col="movie", item_features=other_key)
    assert import_interactions(
        ratings, user_col="user", item_col="movie", item_features=other_key, item_key="id"
    ).items.height == 2
    bad_age = _write(tmp_path / "users.csv", "user,age\nu1,25\nu2,old\n")
    with pytest.raises(DataError) as err:
        import_interactions(ratings, user_col="user", item_col="movie", user_features=bad_age)
    assert (err.value.line, err.value.field) == (3, "age")


def test_no_timestamp_column_gives_null_times_and_clear_split_errors(tmp_path):
    path = _write(tmp_path / "r.csv", "u,i\n1,1\n1,2\n1,3\n")
    ds = import_interactions(path, user_col="u", item_col="i")
    assert ds.interactions.schema["timestamp"] == pl.Int64 and ds.interactions["timestamp"].null_count() == 3
    assert make_split(ds.interactions, "tfrs-random").test.height == 1
    with pytest.raises(DataError, match="3 of 3 interactions have no timestamp") as err:
        make_split(ds.interactions, "temporal")
    assert "--timestamp" in err.value.hint


def test_fingerprint_follows_bytes_and_options(tmp_path):
    path = _write(tmp_path / "r.csv", "u,i,x\n1,1,2\n")
    first = import_interactions(path, user_col="u", item_col="i").fingerprint
    assert import_interactions(path, user_col="u", item_col="i").fingerprint == first
    assert import_interactions(path, user_col="u", item_col="x").fingerprint != first
    _write(path, "u,i,x\n1,1,3\n")
    assert import_interactions(path, user_col="u", item_col="i").fingerprint != first
