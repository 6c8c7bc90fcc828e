"""``towerrec data prepare`` / ``data info``, and the registry and summary they stand on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from cli_helpers import run_cli
from test_movielens import ML100K, REAL_100K, write
from towerrec.data.registry import DATASET_NAMES, load_dataset, prepare_dataset
from towerrec.data.summary import render_summary, summarize
from towerrec.errors import DataError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    return write(tmp_path / "ml-100k", ML100K)


def test_info_prints_counts_and_the_histogram(capsys: pytest.CaptureFixture[str], ml100k: Path) -> None:
    code, out, err = run_cli(capsys, "data", "info", "movielens-100k", "--data-dir", str(ml100k))
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") >= 3}
    assert rows["users"] == "3" and rows["items"] == "3" and rows["interactions"] == "4"
    assert rows["density"] == "44.44%"  # 4 / (3 * 3)
    assert rows["time span"] == "1997-12-04 .. 1997-12-04"
    assert rows["per user"] == "min 1  median 1  max 2"
    assert "ratings" in out and "█" in out


def test_info_json(capsys: pytest.CaptureFixture[str], ml100k: Path) -> None:
    code, out, err = run_cli(capsys, "data", "info", "ml-100k", "--data-dir", str(ml100k), "--json")
    assert code == 0, err
    summary = json.loads(out)  # stdout holds nothing but the JSON
    assert summary["name"] == "movielens-100k" and len(summary["fingerprint"]) == 64
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 3, 4)
    assert summary["ratings"] == {"1": 1, "3": 1, "4": 1, "5": 1}
    assert summary["interactions_per_user"] == {"min": 1, "median": 1.0, "max": 2}
    assert "genres" in summary["item_columns"] and "occupation" in summary["user_columns"]


def test_prepare_caches_then_reuses_and_force_reparses(
    capsys: pytest.CaptureFixture[str], ml100k: Path, home: Path
) -> None:
    code, out, _ = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", str(ml100k))
    assert code == 0
    assert "parsed and cached" in out and str(home / "prepared") in out
    assert "4 interactions, 3 users, 3 items" in out
    _, out, _ = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", str(ml100k))
    assert "reused cache" in out
    _, out, _ = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", str(ml100k), "--force")
    assert "parsed and cached" in out


def test_info_reads_a_prepared_dataset_folder(capsys: pytest.CaptureFixture[str], ml100k: Path) -> None:
    folder = prepare_dataset("ml-100k", ml100k, progress=False).path
    code, out, err = run_cli(capsys, "data", "info", str(folder), "--json")
    assert code == 0, err
    assert json.loads(out)["interactions"] == 4


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[0].startswith("error: ") and all(line.startswith("hint: ") for line in lines[1:])
    return lines[0]


def test_bad_name_exits_1_with_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "data", "info", "movielens-7k")
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert "movielens-7k" in line and all(name in line for name in DATASET_NAMES) and "dataset.json" in line


def test_bad_file_exits_1_naming_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = write(tmp_path / "bad", {**ML100K, "u.data": "1\t10\t4\t881250949\n1\tten\t5\t881250950\n"})
    code, _, err = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", str(folder))
    assert code == 1
    assert f"{folder / 'u.data'}, line 2, field 'item_id'" in one_error_line(err)


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("prepare", "info"):
        code, out, _ = run_cli(capsys, "data", command, "--help")
        assert code == 0 and "Examples:" in out and f"towerrec data {command} " in out


def test_registry_resolves_names_folders_and_rejects_the_rest(ml100k: Path, tmp_path: Path) -> None:
    prepared = prepare_dataset("ML-100K", ml100k, progress=False)
    from_folder = load_dataset(str(prepared.path))
    assert from_folder.fingerprint == prepared.dataset.fingerprint
    assert from_folder.interactions.equals(prepared.dataset.interactions)
    with pytest.raises(DataError, match="--data-dir applies to MovieLens names only"):
        load_dataset(str(prepared.path), data_dir=ml100k)
    with pytest.raises(DataError, match="files of a MovieLens release"):  # tmp_path holds ml-100k/
        load_dataset(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no dataset.json"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_summary_without_ratings_or_side_tables() -> None:
    import polars as pl

    from towerrec.data.tables import Dataset

    inter = pl.DataFrame(
        {"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "rating": [None, None, None], "timestamp": [0, 86400, None]},
        schema={"user_id": pl.String, "item_id": pl.String, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    summary = summarize(Dataset("clicks", inter))
    assert summary["ratings"] is None and summary["item_columns"] == []
    assert summary["time_span"] == {"first": "1970-01-01", "last": "1970-01-02"}
    assert summary["density"] == pytest.approx(3 / 4)
    console = Console(record=True, width=100)
    render_summary(summary, console)
    text = console.export_text()
    assert "75.00%" in text and "ratings" not in text


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_100K.is_dir(), reason="../shared/datasets/ml-100k is absent")
def test_real_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "info", "movielens-100k", "--data-dir", str(REAL_100K), "--json")
    assert code == 0
    summary = json.loads(out)
    # 1,682 ids, 18 titles listed twice: merged by default
    assert (summary["interactions"], summary["users"], summary["items"]) == (100_000, 943, 1664)
    assert summary["density"] == pytest.approx(100_000 / (943 * 1664), abs=1e-4)
    assert summary["time_span"] == {"first": "1997-09-20", "last": "1998-04-22"}
