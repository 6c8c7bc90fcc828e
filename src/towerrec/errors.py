"""User-facing errors: each names what is wrong and where, and carries a hint.

The CLI prints these as one red line (plus the hint); anything else is a bug
and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

SHORT = 30  # characters of a value kept in a message


def shorten(value: Any, limit: int = SHORT) -> str:
    """``value`` for an error message, never longer than about ``limit`` + 25 characters.

    Strings are quoted (``'12x'``); a longer value is cut with ``…`` and followed by its size,
    counted in digits when it is a number: ``'9999999999…' (1,000,000 digits)``. Other values
    use ``str()``. Messages must never echo a field of unbounded size.
    """
    if isinstance(value, bool) or not isinstance(value, (str, bytes, int)):
        text = str(value)
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
    if isinstance(value, int):
        value = int(value)  # a subclass (IntEnum, ...) prints as the number
        try:
            text = str(value)
        except ValueError:  # more digits than Python will print: estimate the count
            digits = int(value.bit_length() * math.log10(2)) + 1
            return f"an integer of about {digits:,} digits"
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text.lstrip('-')):,} digits)"
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)  # np.str_ -> str
    if len(value) <= limit:
        return repr(value)
    body = value.strip().lstrip("+-")
    unit = "digits" if body.isdigit() else "characters"
    size = len(body) if unit == "digits" else len(value)
    return f"{value[:limit] + '…'!r} ({size:,} {unit})"


def shorten_text(text: str, limit: int = 300) -> str:
    """A library's message for ours: every run of more than ``SHORT`` non-blank characters
    (a value it echoed) cut to ``SHORT`` with its length, and the whole cut to ``limit``."""
    text = re.sub(rf"\S{{{SHORT + 1},}}", lambda m: f"{m.group(0)[:SHORT]}… ({len(m.group(0)):,} characters)", text)
    return text if len(text) <= limit else text[:limit] + "…"


def listing(values: Sequence[Any], most: int = 5, show: Callable[[Any], str] = str) -> str:
    """``values`` for a message: the first ``most`` through ``show``, then how many more (``a, b and 3 more``)."""
    shown = ", ".join(show(v) for v in values[:most])
    return shown + (f" and {len(values) - most:,} more" if len(values) > most else "")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (a library's, for ours), cut to ``limit``;
    its type name when the message is empty."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fits_int64(digits: str) -> bool:
    """Whether an integer literal (``[+-]?\\d+``) fits a signed 64-bit integer; cheap for any length."""
    body = digits.lstrip("+-").lstrip("0")
    if len(body) > 19:
        return False
    return -(2**63) <= int(digits) < 2**63


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


class RequestError(TowerrecError):
    """An invalid value in a request (HTTP body or Python call), located by its JSON field.

    ``field`` is dotted (``features.timestamp``); the message starts with it.
    """

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}", hint)
        self.field = field


class ServingError(TowerrecError):
    """The model cannot answer a valid request (e.g. its query embedding is not finite): a server fault."""


class DownloadError(TowerrecError):
    """A download failed or did not match its pinned checksum."""


class ConfigError(TowerrecError):
    """A configuration names an unknown key or holds an invalid value."""
