"""Ordinary I/O problems are one located error line, never "internal error" (rel-22)."""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path

import pytest

from test_movielens import ML100K, write
from towerrec.cli.app import main
from towerrec.config import load_config
from towerrec.data.movielens import load_movielens
from towerrec.errors import ConfigError, DataError

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root ignores permission bits


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code or 0, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


def test_unreadable_u_data_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "perm", ML100K)
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "u.data":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr("towerrec.fsio.sha256_file", lambda path: "0" * 64)
    code, err = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", "perm")
    assert code == 1
    assert error_line(err) == "error: perm/u.data: permission denied"
    assert "hint: check the file's permissions" in err


@pytest.mark.skipif(ROOT, reason="root reads files whatever their permission bits")
def test_unreadable_u_data_really_chmod_000(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path / "perm", ML100K)
    (folder / "u.data").chmod(0)
    try:
        code, err = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", "perm")
    finally:
        (folder / "u.data").chmod(0o644)
    assert code == 1 and error_line(err) == "error: perm/u.data: permission denied"


def _crc_zip(tmp_path: Path) -> Path:
    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, text in ML100K.items():
            zf.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    raw = bytearray(stored.read_bytes())
    i = raw.find(b"\t") - 1  # the last digit of u.data's first user id
    raw[i] = ord("9") if raw[i] != ord("9") else ord("8")
    crc = tmp_path / "crc.zip"
    crc.write_bytes(bytes(raw))
    return crc


def test_zip_member_with_a_bad_crc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _crc_zip(tmp_path)
    code, err = run_cli(capsys, "data", "prepare", "ml-100k", "--data-dir", "crc.zip")
    assert code == 1
    assert error_line(err) == "error: crc.zip: member ml-100k/u.data is corrupt (CRC mismatch)"
    with pytest.raises(DataError, match="CRC mismatch"):
        load_movielens("ml-100k", tmp_path / "crc.zip", progress=False)


def test_runs_naming_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "ml", ML100K)
    (tmp_path / "runsfile").write_text("x\n")
    code, err = run_cli(capsys, "train", "popularity", "--data-dir", "ml", "--runs", "runsfile")
    assert code == 1 and error_line(err) == "error: --runs runsfile is a file, not a folder"


def test_unwritable_runs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "ml", ML100K)
    real = Path.mkdir

    def denied(self: Path, *args, **kwargs) -> None:
        if "ro-runs" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    code, err = run_cli(capsys, "train", "popularity", "--data-dir", "ml", "--runs", "ro-runs")
    line = error_line(err)
    assert code == 1 and line.startswith("error: ro-runs") and line.endswith(": permission denied")


@pytest.mark.parametrize("command", [["data", "synth", "--users", "10", "--items", "10", "--interactions", "40"],
                                     ["data", "import", "ratings.csv", "--user", "u", "--item", "i"]])
def test_out_naming_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    (tmp_path / "ratings.csv").write_text("u,i\n1,2\n")
    (tmp_path / "outfile").write_text("x\n")
    code, err = run_cli(capsys, *command, "--out", "outfile")
    assert code == 1 and error_line(err) == "error: --out outfile: is a file, not a folder"


def test_binary_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00\x01")
    code, err = run_cli(capsys, "train", "binary.toml")
    assert code == 1 and error_line(err).startswith("error: binary.toml: not a UTF-8 text file")
    with pytest.raises(ConfigError, match="binary.toml: not a UTF-8 text file"):
        load_config(tmp_path / "binary.toml")


def test_unreadable_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.toml").write_text("[train]\nepochs = 1\n")

    def denied(self: Path, *args, **kwargs) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError, match=r"c\.toml: permission denied"):
        load_config("c.toml")


def test_a_stray_oserror_is_still_one_located_line(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's last-resort handler: an OSError no reader wrapped prints like a wrapped one."""
    import towerrec.data.registry as registry

    def broken(*args, **kwargs):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "some/where")

    monkeypatch.setattr(registry, "prepare_dataset", broken)
    monkeypatch.setattr("towerrec.cli.data_cmd.prepare_dataset", broken)
    code, err = run_cli(capsys, "data", "info", "movielens-100k")
    assert code == 1 and error_line(err) == "error: some/where: is a folder, not a file"


@pytest.mark.parametrize("option", ["--runs", "--out"])
def test_experiment_folder_options_naming_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 option: str) -> None:
    (tmp_path / "afile").write_text("x\n")
    code, err = run_cli(capsys, "experiment", "--num-epochs", "1", option, "afile")
    assert code == 1 and error_line(err) == f"error: {option} afile is a file, not a folder"


def test_unwritable_experiment_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from towerrec.experiments.report import write_results
    from towerrec.errors import TowerrecError

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(TowerrecError, match=r"out: permission denied"):
        write_results(None, [], tmp_path / "out")
