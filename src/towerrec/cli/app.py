"""Entry point of the ``towerrec`` command.

Errors a user can fix (:class:`~towerrec.errors.TowerrecError`) print as one
red line plus a hint; ``--debug`` (or ``TOWERREC_DEBUG=1``) shows tracebacks.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated, Optional

import typer
from rich.text import Text

from towerrec import __version__
from towerrec.cli.common import data_app, err_console
from towerrec.errors import TowerrecError

app = typer.Typer(
    name="towerrec",
    help=(
        "Retrieval-and-ranking recommenders in PyTorch.\n\n"
        "Examples:\n\n"
        "  towerrec data info movielens-100k --data-dir ../shared/datasets/ml-100k\n\n"
        "  towerrec data synth --users 1000 --items 500 --interactions 50000 --out synth/"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"towerrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Retrieval-and-ranking recommenders in PyTorch."""


def _load_command_modules() -> None:
    # Imported for their side effect: each registers its commands on the apps.
    from towerrec.cli import commands  # noqa: F401


def _say(label: str, style: str, text: str) -> None:
    """One stderr line: a styled label, then the user's text verbatim (no markup parsing)."""
    err_console.print(Text(label, style=style), Text(text), highlight=False, soft_wrap=True)


def _report(error: TowerrecError) -> None:
    """A user error as its "error:" line plus its "hint:" line."""
    _say("error:", "bold red", error.message)
    if error.hint:
        _say("hint:", "yellow", error.hint)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (slow index settings, duplicate titles, ...) as one "warning:" line, verbatim."""
    _say("warning:", "yellow", str(message))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exits with 0 on success, 1 on a user error, 2 on a usage error."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TOWERREC_DEBUG") == "1"
    warnings.showwarning = _show_warning
    _load_command_modules()
    try:
        # Standalone mode prints usage errors itself and exits; our errors propagate.
        app(args=args, prog_name="towerrec")
    except TowerrecError as exc:
        if debug:
            raise
        _report(exc)
        sys.exit(1)
    except OSError as exc:  # backstop: readers and writers wrap their own, naming the path
        if debug:
            raise
        from towerrec.fsio import io_error

        _report(io_error(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as exc:  # a bug: keep it to one line unless debugging
        if debug:
            raise
        _say("internal error:", "bold red", f"{type(exc).__name__}: {exc}")
        err_console.print("[yellow]hint:[/yellow] run again with --debug for the traceback", highlight=False)
        sys.exit(1)
