"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``TOWERREC_HOME`` under the test's tmp_path (no cache or download is shared between tests).

    A module uses it for every test with ``pytestmark = pytest.mark.usefixtures("home")``.
    """
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
