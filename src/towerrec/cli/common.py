"""Pieces every CLI module shares: the Typer sub-apps, consoles and options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

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
