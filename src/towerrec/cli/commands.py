"""Imports every command module so its commands register on the Typer apps."""

from towerrec.cli import data_cmd, data_gen_cmd, train_cmd  # noqa: F401
from towerrec.cli import serve_cmd  # noqa: F401
from towerrec.cli import experiment_cmd  # noqa: F401
from towerrec.cli import tune_cmd  # noqa: F401
