"""Imports every command module so its commands register on the Typer apps."""

from towerrec.cli import data_cmd  # noqa: F401
