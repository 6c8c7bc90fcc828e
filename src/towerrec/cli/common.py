"""Pieces every CLI module shares: the Typer sub-apps, consoles and options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

data_app = typer.Typer(
    help="Download, import, generate and inspect datasets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="Read an already-downloaded folder or zip instead of downloading (no network is touched).",
    ),
]

RunDataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="Where the run's data is now, if it moved since training: the MovieLens folder or zip, or the "
        "dataset folder. The data must still match the run's fingerprint.",
    ),
]

DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the model runs: cpu (default), cuda, cuda:1, mps... Not part of the configuration "
        "(a run trained on a GPU is the same run).",
    ),
]

TrackOption = Annotated[
    Optional[str],
    typer.Option(
        "--track",
        help="Track the run(s) with none | tensorboard | mlflow (overrides \\[track] backend; files under \\[track] "
        "dir, default runs/track; see docs/tracking.md).",
    ),
]


def check_folder_option(folder: Path, option: str) -> None:
    """Refuse a folder option (``--runs``, ``--out``) that names a file, before any work starts."""
    from towerrec.errors import TowerrecError

    if folder.exists() and not folder.is_dir():
        raise TowerrecError(f"{option} {folder} is a file, not a folder",
                            hint=f"choose a folder for {option} (it is created if missing)")


def say(message: str) -> None:
    """Print a line verbatim: paths, names and titles may hold ``[...]``, which is not markup."""
    console.print(Text(message), highlight=False, soft_wrap=True)
