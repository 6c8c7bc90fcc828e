"""Where towerrec keeps downloads, prepared data and runs."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$TOWERREC_HOME`` or ``~/.cache/towerrec``."""
    env = os.environ.get("TOWERREC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "towerrec"


def downloads_dir() -> Path:
    return home() / "downloads"


def prepared_dir() -> Path:
    return home() / "prepared"
