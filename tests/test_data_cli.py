"""`towerrec data prepare` and `towerrec data info` on fixture files."""

import json

import pytest

from test_movielens import SHARED, write_100k
from towerrec.cli.app import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out + out.err


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))


def test_info_prints_counts(capsys, tmp_path):
    folder = write_100k(tmp_path / "ml-100k")
    code, out = run_cli(capsys, "data", "info", "movielens-100k", "--data-dir", str(folder))
    assert code == 0, out
    assert "interactions" in out and "3" in out and "density" in out


def test_info_json(capsys, tmp_path):
    folder = write_100k(tmp_path / "ml-100k")
    code, out = run_cli(capsys, "data", "info", "ml-100k", "--data-dir", str(folder), "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["interactions"] == 3 and summary["users"] == 2 and summary["items"] == 2


def test_prepare_then_info_from_cache(capsys, tmp_path):
    folder = write_100k(tmp_path / "ml-100k")
    code, out = run_cli(capsys, "data", "prepare", "movielens-100k", "--data-dir", str(folder))
    assert code == 0, out
    assert str(tmp_path / "home") in out.replace("\n", "")


def test_bad_name_is_one_red_line(capsys):
    code, out = run_cli(capsys, "data", "info", "movielens-7k")
    assert code == 1
    assert "error:" in out and "Traceback" not in out


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").is_file(), reason="../shared/datasets/ml-100k absent")
def test_real_info(capsys):
    code, out = run_cli(capsys, "data", "info", "movielens-100k", "--data-dir", str(SHARED / "ml-100k"), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["interactions"] == 100_000 and summary["users"] == 943 and summary["items"] == 1682
    assert abs(summary["density"] - 0.063) < 0.001
