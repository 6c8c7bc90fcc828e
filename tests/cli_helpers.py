"""Run the ``towerrec`` CLI in-process from a test and capture what it printed."""

from __future__ import annotations

import pytest

from towerrec.cli.app import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``towerrec ARGS...`` (paths and numbers are passed as text) -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def run_cli_text(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``towerrec ARGS...`` -> (exit code, stdout + stderr)."""
    code, out, err = run_cli(capsys, *args)
    return code, out + err
