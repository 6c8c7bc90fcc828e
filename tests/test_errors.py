"""``towerrec.errors.shorten``: messages never echo a value of unbounded size (rel-04)."""

import pytest

from towerrec.errors import DataError, shorten


@pytest.mark.parametrize("value, expected", [
    ("12x", "'12x'"),
    ("9" * 1_000_000, "'" + "9" * 30 + "…' (1,000,000 digits)"),
    ("-" + "9" * 40, "'-" + "9" * 29 + "…' (40 digits)"),
    ("ab" * 100, "'" + "ab" * 15 + "…' (200 characters)"),
    (10**50, "1" + "0" * 29 + "… (51 digits)"),
    (42, "42"),
    (1.5, "1.5"),
    (b"\xff" * 100, "'" + "\ufffd" * 30 + "…' (100 characters)"),
])
def test_shorten(value, expected):
    assert shorten(value) == expected


def test_shorten_numpy_values_without_their_repr():
    import numpy as np

    assert (shorten(np.int64(17701)), shorten(np.str_("ab")), shorten(np.float64(1.5))) == ("17701", "'ab'", "1.5")


def test_shorten_an_integer_too_long_to_print():
    assert shorten(10**100_000) == "an integer of about 100,001 digits"


def test_located_error_with_a_huge_value_stays_short():
    err = DataError(f"{shorten('9' * 10**6)} is too large for a 64-bit integer", file="u.data", line=301,
                    field="timestamp")
    assert str(err) == "u.data, line 301, field 'timestamp': '" + "9" * 30 + "…' (1,000,000 digits) is too large for a 64-bit integer"
