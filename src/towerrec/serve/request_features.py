"""Type and range checks for a new user's feature values, before the query tower sees them.

A request's ``features`` object maps user columns to JSON values. The rules:

- ``null`` (or an absent key) is unknown: the OOV bucket / the train mean; a missing
  ``timestamp`` is the bundle's latest train timestamp;
- ``true`` / ``false`` are never feature values (JSON booleans are not numbers or ids);
- a numeric column (one read by a bucketized or normalized feature, e.g. ``timestamp``,
  ``age``) takes a finite JSON number, or a string holding one; ``timestamp`` also takes
  an ISO 8601 date or date-time (``"2024-01-01"``, ``"1998-04-01T12:00:00+02:00"``; UTC when
  no offset is given), turned into epoch seconds as ``data import`` does;
- integer user columns take whole numbers within their type (``age`` Int32: up to 2**31 - 1);
  ``timestamp`` takes any number within the signed 64-bit range of epoch seconds;
- values outside the train range are clipped to it by the fitted transforms
  (:mod:`towerrec.features.numeric`), so a finite value always gives a finite query.

Violations raise :class:`~towerrec.errors.RequestError` naming the JSON field
(``features.timestamp``); the HTTP service answers them with 422.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from towerrec.errors import RequestError, shorten

INT64 = (-(2**63), 2**63 - 1)


def check_feature_value(name: str, value: Any, *, numeric: bool, integer: tuple[int, int] | None) -> Any:
    """``value`` checked (and an ISO ``timestamp`` converted to epoch seconds); raises RequestError.

    ``integer`` is the (low, high) range of an integer column (None for float and id columns).
    """
    field = f"features.{name}"
    if value is None:
        return None
    if isinstance(value, bool):
        raise RequestError(field, f"{str(value).lower()} is not a valid value (send a number or a string)")
    if not numeric:
        if isinstance(value, float):
            raise RequestError(field, f"{shorten(value)} is not an id (send an integer or a string)")
        return value
    sent = value
    if isinstance(value, str):
        value = _number_from_text(name, value, field)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(field, f"{shorten(sent) if isinstance(sent, str) else _spelled(value)} is not a finite number")
    if not isinstance(value, (int, float)):
        raise RequestError(field, f"{shorten(value)} is not a number")
    if integer is not None:
        if not integer[0] <= value <= integer[1]:
            bits = "64-bit" if integer == INT64 else f"{integer[1].bit_length() + 1}-bit"
            raise RequestError(field, f"{shorten(value)} does not fit a {bits} integer"
                               + (" (epoch seconds)" if name == "timestamp" else ""))
        if isinstance(value, float) and not value.is_integer() and name != "timestamp":
            raise RequestError(field, f"{shorten(value)} is not an integer")
    return value


def _number_from_text(name: str, text: str, field: str) -> float | int:
    stripped = text.strip()
    try:
        return int(stripped) if stripped.lstrip("+-").isdigit() and len(stripped) < 40 else float(stripped)
    except ValueError:
        pass
    if name == "timestamp":
        try:
            moment = datetime.fromisoformat(stripped.replace("Z", "+00:00") if stripped.endswith("Z") else stripped)
        except ValueError:
            raise RequestError(field, f"{shorten(text)} is neither epoch seconds nor an ISO 8601 date "
                               "(e.g. 1998-04-01 or 1998-04-01T12:00:00Z)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp())
    raise RequestError(field, f"{shorten(text)} is not a number")


def _spelled(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
