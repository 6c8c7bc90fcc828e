"""``towerrec.errors.shorten``: messages never echo a value of unbounded size (rel-04)."""

import pytest

from towerrec.errors import DataError, fits_int64, shorten, shorten_text


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


def test_shorten_text_cuts_echoed_values_in_a_library_message():
    text = shorten_text("could not parse `" + "9" * 10**6 + "` as dtype i64")
    assert text == "could not parse `" + "9" * 29 + "… (1,000,002 characters) as dtype i64"
    assert len(shorten_text("word " * 1000)) == 301


@pytest.mark.parametrize("digits, fits", [("9223372036854775807", True), ("9223372036854775808", False),
                                          ("-9223372036854775808", True), ("-9223372036854775809", False),
                                          ("000000000000000000000001", True), ("9" * 10**6, False)])
def test_fits_int64(digits, fits):
    assert fits_int64(digits) is fits


def test_first_line_of_a_library_message() -> None:
    from towerrec.errors import first_line

    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("bad header\nsecond line")) == "bad header"
    assert first_line(ValueError("x" * 500), limit=20) == "x" * 19 + "…"


def test_listing_names_the_first_values_and_counts_the_rest() -> None:
    from towerrec.errors import listing, shorten

    assert listing(["a.txt"]) == "a.txt"
    assert listing([f"f{i}" for i in range(8)], 3) == "f0, f1, f2 and 5 more"
    assert listing(["dd42", 7], show=shorten) == "'dd42', 7"
