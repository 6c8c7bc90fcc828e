"""A run works from any folder and follows its data when it moves (rel-21)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_helpers import run_cli
from test_movielens import ML100K, write
from towerrec.config import load_config


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    project = tmp_path / "project"
    write(project / "data" / "ml", ML100K)
    monkeypatch.chdir(project)
    code, out, err = run_cli(capsys, "train", "popularity", "--data-dir", "data/ml", "--runs", "runs")
    assert code == 0, err
    (run_dir,) = (project / "runs").glob("popularity-*")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return run_dir


def test_the_run_stores_absolute_data_paths(trained: Path, tmp_path: Path) -> None:
    assert load_config(trained / "config.toml").data.data_dir == str(tmp_path / "project" / "data" / "ml")


@pytest.mark.parametrize("command", [["recommend", "--user", "1", "-k", "2"], ["evaluate"]])
def test_evaluate_and_recommend_work_from_another_folder(trained: Path, capsys, command: list[str]) -> None:
    code, out, err = run_cli(capsys, command[0], str(trained), *command[1:])
    assert code == 0, err


def test_moved_data_is_named_and_data_dir_points_the_run_at_it(trained: Path, tmp_path: Path, capsys) -> None:
    moved = tmp_path / "moved-ml"
    shutil.move(tmp_path / "project" / "data" / "ml", moved)
    code, _, err = run_cli(capsys, "recommend", str(trained), "--user", "1", "-k", "2")
    assert code == 1 and "no such file or folder" in err and "--data-dir" in err
    for command in (["recommend", "--user", "1", "-k", "2"], ["evaluate"]):
        code, out, err = run_cli(capsys, command[0], str(trained), *command[1:], "--data-dir", str(moved))
        assert code == 0, err
    other = write(tmp_path / "other", {**ML100K, "u.data": ML100K["u.data"].replace("881250952", "881250953")})
    code, _, err = run_cli(capsys, "evaluate", str(trained), "--data-dir", str(other))
    assert code == 1 and "changed since this run was trained" in err


@pytest.mark.parametrize("command", ["evaluate", "recommend", "export", "index"])
def test_commands_that_read_a_runs_data_accept_data_dir(command: str, capsys) -> None:
    args = [command, "recall", "--help"] if command == "index" else [command, "--help"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "--data-dir" in out


def test_an_imported_dataset_folder_run_follows_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    monkeypatch.chdir(tmp_path)
    rows = "".join(f"{u},{i}\n" for u in range(1, 6) for i in range(1, 8) if (u + i) % 3)
    (tmp_path / "r.csv").write_text("u,i\n" + rows)
    assert run_cli(capsys, "data", "import", "r.csv", "--user", "u", "--item", "i", "--out", "ds")[0] == 0
    (tmp_path / "c.toml").write_text('name = "pop"\n[model]\nkind = "popularity"\n[data]\ndataset = "ds"\n')
    assert run_cli(capsys, "train", "c.toml", "--runs", "runs")[0] == 0
    (run_dir,) = (tmp_path / "runs").glob("pop-*")
    assert load_config(run_dir / "config.toml").data.dataset == str(tmp_path / "ds")
    shutil.move(tmp_path / "ds", tmp_path / "ds-moved")
    code, _, err = run_cli(capsys, "evaluate", str(run_dir))
    assert code == 1 and "no such dataset folder" in err and "--data-dir" in err
    code, _, err = run_cli(capsys, "evaluate", str(run_dir), "--data-dir", "ds-moved")
    assert code == 0, err


def test_export_follows_moved_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    project = tmp_path / "project"
    write(project / "data" / "ml", ML100K)
    monkeypatch.chdir(project)
    code, _, err = run_cli(capsys, "train", "default", "--epochs", "1", "--data-dir", "data/ml", "--runs", "runs")
    assert code == 0, err
    (run_dir,) = (project / "runs").glob("default-*")
    shutil.move(project / "data" / "ml", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "export", str(run_dir), "--out", "bundle")
    assert code == 1 and "--data-dir" in err
    code, out, err = run_cli(capsys, "export", str(run_dir), "--out", "bundle", "--data-dir", "moved")
    assert code == 0, err
    assert (tmp_path / "bundle" / "bundle.json").is_file()
