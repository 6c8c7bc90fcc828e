"""Bringing your own data (kind 8) and epoch units (rel-03): headerless and whitespace tables,
repeated pairs and timestamp ties reported and optionally removed, millisecond timestamps caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import run_cli
from towerrec.data.importer import import_interactions
from towerrec.data.store import load_dataset_dir
from towerrec.data.summary import summarize
from towerrec.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- headerless tables ------------------------------------------------------------------


def test_no_header_names_columns_by_position(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "196,242,3,881250949\n186,302,3,891717742\n")
    ds = import_interactions(path, user_col="1", item_col="2", rating_col="3", timestamp_col="4", header=False)
    assert ds.interactions["user_id"].to_list() == [196, 186]  # the first line is data, not lost
    assert ds.interactions["timestamp"].to_list() == [881250949, 891717742]


def test_columns_name_a_headerless_file(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "196,242,3\n186,302,3\n")
    ds = import_interactions(path, user_col="user", item_col="item", columns=["user", "item", "rating"])
    assert ds.interactions.height == 2 and ds.interactions["item_id"].to_list() == [242, 302]
    with pytest.raises(DataError, match="--columns names 2 column"):
        import_interactions(path, user_col="user", item_col="item", columns=["user", "item"])


def test_a_first_row_of_data_used_as_header_is_refused(tmp_path: Path) -> None:
    """Naming the first row's values as columns would silently drop that row."""
    path = write(tmp_path / "r.csv", "196,242,3,881250949\n186,302,3,891717742\n")
    with pytest.raises(DataError) as err:
        import_interactions(path, user_col="196", item_col="242")
    assert err.value.line is None and "line 1 (196, 242, 3, 881250949) looks like data, not a header" in str(err.value)
    assert "--no-header" in err.value.hint


def test_a_header_read_as_data_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user,item\n1,2\n3,4\n")
    with pytest.raises(DataError) as err:
        import_interactions(path, user_col="1", item_col="2", header=False)
    assert err.value.line == 1 and "looks like a header" in str(err.value)


def test_cli_no_header_and_columns(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "r.csv", "196,242,3\n186,302,3\n")
    code, out, _ = run_cli(capsys, "data", "import", str(path), "--no-header", "--user", "1", "--item", "2",
                           "--out", str(tmp_path / "a"))
    assert code == 0 and "2 interactions" in out
    code, out, _ = run_cli(capsys, "data", "import", str(path), "--columns", "u,i,r", "--user", "u", "--item", "i",
                           "--rating", "r", "--out", str(tmp_path / "b"))
    assert code == 0 and load_dataset_dir(tmp_path / "b").interactions["rating"].to_list() == [3.0, 3.0]


# --- separators -------------------------------------------------------------------------


def test_whitespace_txt_user_item_file_is_imported(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.txt", "1 10\n1  11\n 2\t10 \n")
    ds = import_interactions(path, user_col="1", item_col="2", header=False)
    assert ds.interactions.select("user_id", "item_id").rows() == [(1, 10), (1, 11), (2, 10)]


def test_separator_is_sniffed_and_can_be_given(tmp_path: Path) -> None:
    semi = write(tmp_path / "r.data", "user;item\n1;2\n3;4\n")
    assert import_interactions(semi, user_col="user", item_col="item").interactions.height == 2
    pipe = write(tmp_path / "r.txt", "user|item\n1|2\n")
    assert import_interactions(pipe, user_col="user", item_col="item", sep="|").interactions.height == 1
    with pytest.raises(DataError, match="no column 'user'"):
        import_interactions(pipe, user_col="user", item_col="item", sep=",")


def test_cli_sep_aliases(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "r.txt", "u\ti\n1\t2\n")
    code, out, _ = run_cli(capsys, "data", "import", str(path), "--sep", "tab", "--user", "u", "--item", "i",
                           "--out", str(tmp_path / "o"))
    assert code == 0 and "1 interactions" in out
    code, _, err = run_cli(capsys, "data", "import", str(path), "--sep", "::", "--user", "u", "--item", "i",
                           "--out", str(tmp_path / "o2"))
    assert code == 1 and "--sep '::' is not one character" in err


def test_unsniffable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell how the fields are separated"):
        import_interactions(write(tmp_path / "mixed.txt", "a,b\nc,d,e\nf\ng h\n"), user_col="1", item_col="2",
                            header=False)
    with pytest.raises(DataError, match="cannot tell how the fields are separated"):  # interactions need 2 columns
        import_interactions(write(tmp_path / "one.txt", "abc\ndef\n"), user_col="1", item_col="2", header=False)
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="not a text table"):
        import_interactions(tmp_path / "bin.dat", user_col="1", item_col="2")


# --- repeated pairs and ties ------------------------------------------------------------

REPEATS = "u,i,t\n1,10,5\n1,10,3\n1,11,3\n2,10,7\n2,10,9\n2,12,9\n"


def test_repeats_are_counted_in_info(tmp_path: Path) -> None:
    ds = import_interactions(write(tmp_path / "r.csv", REPEATS), user_col="u", item_col="i", timestamp_col="t")
    summary = summarize(ds)
    assert (summary["repeated_pairs"], summary["pairs_repeated"], summary["timestamp_ties"]) == (2, 2, 4)


@pytest.mark.parametrize("dedupe, kept", [
    ("keep-first", [(1, 10, 3), (1, 11, 3), (2, 10, 7), (2, 12, 9)]),
    ("keep-last", [(1, 10, 5), (1, 11, 3), (2, 10, 9), (2, 12, 9)]),
])
def test_dedupe_keeps_one_row_per_pair_in_time_order(tmp_path: Path, dedupe: str, kept: list) -> None:
    ds = import_interactions(write(tmp_path / "r.csv", REPEATS), user_col="u", item_col="i", timestamp_col="t",
                             dedupe=dedupe)
    assert ds.interactions.select("user_id", "item_id", "timestamp").rows() == kept
    assert ds.meta["import"]["duplicates_removed"] == 2


def test_import_and_info_report_repeats(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "r.csv", REPEATS)
    code, out, _ = run_cli(capsys, "data", "import", str(path), "--user", "u", "--item", "i", "--timestamp", "t",
                           "--out", str(tmp_path / "ds"))
    assert code == 0
    assert "2 rows repeat an earlier (user, item) pair (2 pairs)" in out
    assert "4 rows share their user's timestamp" in out
    code, out, _ = run_cli(capsys, "data", "info", str(tmp_path / "ds"))
    assert code == 0 and "repeated pairs" in out and "timestamp ties" in out
    code, out, _ = run_cli(capsys, "data", "import", str(path), "--user", "u", "--item", "i", "--timestamp", "t",
                           "--dedupe", "keep-last", "--out", str(tmp_path / "ds2"))
    assert code == 0 and "--dedupe keep-last: removed 2 repeated (user, item) rows" in out
    code, _, err = run_cli(capsys, "data", "import", str(path), "--user", "u", "--item", "i",
                           "--dedupe", "first", "--out", str(tmp_path / "ds3"))
    assert code == 1 and "--dedupe 'first' is not one of none, keep-first, keep-last" in err


# --- epoch units (rel-03) ---------------------------------------------------------------

MS = "user,item,rating,ts\n1,10,4,881250949000\n1,11,3,881250950000\n2,10,5,881250951000\n"


def test_millisecond_timestamps_are_caught_at_import(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings_ms.csv", MS)
    with pytest.raises(DataError) as err:
        import_interactions(path, user_col="user", item_col="item", timestamp_col="ts")
    assert (err.value.line, err.value.field) == (2, "ts")
    assert "look like epoch milliseconds" in str(err.value) and err.value.hint == "pass --timestamp-unit ms"


def test_a_far_negative_timestamp_is_described_as_before_1970(tmp_path: Path) -> None:
    path = write(tmp_path / "neg.csv", "u,i,t\n1,2,-99999999999999\n")
    with pytest.raises(DataError) as err:
        import_interactions(path, user_col="u", item_col="i", timestamp_col="t")
    assert "more than 3,000 years before 1970 as epoch seconds" in str(err.value)
    assert "after" not in str(err.value)


def test_timestamp_unit_converts_to_seconds(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings_ms.csv", MS)
    ds = import_interactions(path, user_col="user", item_col="item", timestamp_col="ts", timestamp_unit="ms")
    assert ds.interactions["timestamp"].to_list() == [881250949, 881250950, 881250951]
    us = write(tmp_path / "us.csv", "u,i,t\n1,2,881250949123456\n")
    with pytest.raises(DataError, match="look like epoch microseconds"):
        import_interactions(us, user_col="u", item_col="i", timestamp_col="t", timestamp_unit="ms")
    assert import_interactions(us, user_col="u", item_col="i", timestamp_col="t",
                               timestamp_unit="us").interactions["timestamp"].to_list() == [881250949]


def test_cli_import_ms_then_info(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "ratings_ms.csv", MS)
    code, _, err = run_cli(capsys, "data", "import", str(path), "--user", "user", "--item", "item", "--rating",
                           "rating", "--timestamp", "ts", "--out", str(tmp_path / "ds"))
    assert code == 1 and "milliseconds" in err and "--timestamp-unit ms" in err
    code, _, _ = run_cli(capsys, "data", "import", str(path), "--user", "user", "--item", "item", "--rating",
                         "rating", "--timestamp", "ts", "--timestamp-unit", "ms", "--out", str(tmp_path / "ds"))
    assert code == 0
    code, out, _ = run_cli(capsys, "data", "info", str(tmp_path / "ds"), "--json")
    assert code == 0 and json.loads(out)["time_span"] == {"first": "1997-12-04", "last": "1997-12-04"}


def test_info_never_crashes_on_out_of_range_dates() -> None:
    import polars as pl

    from towerrec.data.tables import Dataset

    inter = pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "rating": [1.0, 2.0],
                          "timestamp": [881250949, 881250949000 * 1000]},
                         schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64})
    span = summarize(Dataset("x", inter, None, None))["time_span"]
    assert span["first"] == "1997-12-04" and span["last"].endswith("(out of range as epoch seconds)")


def test_movielens_u_data_with_a_millisecond_line_is_refused_at_prepare(tmp_path: Path) -> None:
    from test_movielens import ML100K, write as write_ml
    from towerrec.data.movielens import load_movielens

    data = ML100K["u.data"].splitlines()
    data[2] = data[2].rsplit("\t", 1)[0] + "\t881250951000"
    folder = write_ml(tmp_path / "ml", {**ML100K, "u.data": "\n".join(data) + "\n"})
    with pytest.raises(DataError) as err:
        load_movielens("ml-100k", folder, progress=False)
    assert (err.value.line, err.value.field) == (3, "timestamp") and "looks like epoch milliseconds" in str(err.value)


# --- a raw MovieLens folder given to `data info` ----------------------------------------------


def test_info_on_a_raw_movielens_folder_hints_at_the_release_name(tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from test_movielens import CSV, ML1M, ML100K, write as write_ml

    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    for files, folder, release in ((ML100K, "raw100k", "movielens-100k"), (ML1M, "some-folder", "movielens-1m"),
                                   (CSV, "small", "movielens-latest-small")):
        write_ml(tmp_path / folder, files)
        code, _, err = run_cli(capsys, "data", "info", str(tmp_path / folder))
        assert code == 1 and "files of a MovieLens release" in err
        assert f"towerrec data info {release} --data-dir {tmp_path / folder}" in err
        code, out, _ = run_cli(capsys, "data", "info", release, "--data-dir", str(tmp_path / folder))
        assert code == 0 and "interactions" in out


# --- --dataset on train and quickstart --------------------------------------------------------


def _imported(tmp_path: Path, capsys) -> Path:
    rows = "".join(f"u{u},i{i},{1 + (u * i) % 5},{1000 + 10 * u + i}\n" for u in range(12) for i in range(15)
                   if (u + i) % 3)
    write(tmp_path / "r.csv", "user,item,rating,ts\n" + rows)
    code, _, err = run_cli(capsys, "data", "import", str(tmp_path / "r.csv"), "--user", "user", "--item", "item",
                           "--rating", "rating", "--timestamp", "ts", "--out", str(tmp_path / "mine"))
    assert code == 0, err
    return tmp_path / "mine"


def test_train_runs_a_shipped_config_on_another_dataset(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    folder = _imported(tmp_path, capsys)
    code, out, err = run_cli(capsys, "train", "popularity", "--dataset", str(folder), "--runs", str(tmp_path / "runs"))
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").glob("popularity-*")
    from towerrec.config import load_config

    assert load_config(run_dir / "config.toml").data.dataset == str(folder)


def test_quickstart_on_another_dataset(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    folder = _imported(tmp_path, capsys)
    code, out, err = run_cli(capsys, "quickstart", "--dataset", str(folder), "--runs", str(tmp_path / "runs"))
    assert code == 0, err
    assert "mine test (20%)" in out and "top 3 for user u0:" in out


def test_decimal_text_timestamps_are_floored_seconds(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "u,i,t\n1,2,881250949.0\n1,3,881250950.75\n")
    ds = import_interactions(path, user_col="u", item_col="i", timestamp_col="t")
    assert ds.interactions["timestamp"].to_list() == [881250949, 881250950]
    ms = write(tmp_path / "ms.csv", "u,i,t\n1,2,881250949000.0\n")
    with pytest.raises(DataError, match="milliseconds"):
        import_interactions(ms, user_col="u", item_col="i", timestamp_col="t")
    bad = write(tmp_path / "nan.csv", "u,i,t\n1,2,881250949\n1,3,nan\n")
    with pytest.raises(DataError) as err:
        import_interactions(bad, user_col="u", item_col="i", timestamp_col="t")
    assert err.value.line == 3 and "not a finite number" in str(err.value)


def test_info_on_a_table_file_hints_at_import(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "r.csv", "u,i\n1,2\n")
    code, _, err = run_cli(capsys, "data", "info", str(path))
    assert code == 1 and "a file, not a dataset folder" in err and f"towerrec data import {path}" in err
