"""User-facing errors: each names what is wrong and where, and carries a hint.

The CLI prints these as one red line (plus the hint); anything else is a bug
and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class TowerrecError(Exception):
    """An error the user can act on. ``hint`` says what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class DataError(TowerrecError):
    """Bad input data, located by file, line (1-based) and field when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        full = f"{', '.join(where)}: {message}" if where else message
        super().__init__(full, hint)
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field


class DownloadError(TowerrecError):
    """A download failed or did not match its pinned checksum."""


class ConfigError(TowerrecError):
    """A configuration names an unknown key or holds an invalid value."""
