"""User text reaches the terminal verbatim: ``[train]``, ``[bold]`` in names and paths are not markup (rel-15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run_cli
from test_movielens import ML100K, write


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_config_errors_keep_their_section(tmp_path: Path, capsys) -> None:
    (tmp_path / "typo.toml").write_text("[train]\nepochz = 3\n")
    code, _, err = run_cli(capsys, "train", "typo.toml")
    assert code == 1 and "error: typo.toml: unknown key(s) ['epochz'] in [train]; valid keys:" in err


def test_a_file_name_with_brackets_is_printed_as_is(tmp_path: Path, capsys) -> None:
    (tmp_path / "ratings[bold].csv").write_text("user,item\n1,a\n2,\n")
    code, _, err = run_cli(capsys, "data", "import", "ratings[bold].csv", "--user", "user", "--item", "item",
                           "--out", "ds2")
    assert code == 1 and "error: ratings[bold].csv, line 3, field 'item': missing value" in err
    (tmp_path / "ratings[bold].csv").write_text("user,item\n1,a\n2,b\n")
    code, out, _ = run_cli(capsys, "data", "import", "ratings[bold].csv", "--user", "user", "--item", "item",
                           "--name", "set[red]", "--out", "out[bold]")
    assert code == 0 and "wrote out[bold]:" in out
    code, out, _ = run_cli(capsys, "data", "info", "out[bold]")
    assert code == 0 and "dataset set[red]" in out


def test_run_names_and_paths_with_brackets(tmp_path: Path, capsys) -> None:
    write(tmp_path / "ml", ML100K)
    (tmp_path / "c.toml").write_text('name = "pop[bold]"\n[model]\nkind = "popularity"\n[data]\ndata_dir = "ml"\n')
    code, out, _ = run_cli(capsys, "train", "c.toml", "--runs", "runs[x]")
    assert code == 0, out
    assert "pop[bold]" in out and "run directory: runs[x]/pop[bold]-" in out
    code, out, _ = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", "ml")
    assert code == 0 and "movielens-100k" in out


@pytest.mark.parametrize("command, section", [("train", "[train] epochs"), ("train", "[track] backend"),
                                              ("tune", "[study] metric"), ("experiment", "[data] dataset")])
def test_option_help_keeps_its_config_sections(capsys, monkeypatch, command: str, section: str) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option, so the section is not wrapped apart
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and section in out
