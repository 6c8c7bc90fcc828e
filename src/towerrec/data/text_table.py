"""Read a delimited text table (CSV, TSV, ``user item`` .txt) as all-text columns.

The separator is sniffed from the first lines unless given (the file name's suffix is
only a first guess: a ``.txt`` of whitespace-separated ``user item`` lines reads like a
``.csv``). Every line must have as many fields as the header (or first line): a short
or long line is reported with its line number. A header that repeats a column name, a
header that looks like data (every field a number: the first data row would be lost),
and a binary file are errors. Values stay text: the importer types each column from
all its values.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import polars as pl

from towerrec import fsio
from towerrec.errors import DataError, first_line

WHITESPACE = "whitespace"
"""Separator value meaning "one or more spaces or tabs" (``--sep whitespace``)."""

SUFFIX_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
CANDIDATES = (",", "\t", ";", "|")
_NAMES = {",": "','", "\t": "tab", ";": "';'", "|": "'|'", WHITESPACE: "whitespace"}
_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": WHITESPACE,
            "spaces": WHITESPACE, "ws": WHITESPACE, " ": WHITESPACE, WHITESPACE: WHITESPACE}
_SAMPLE_LINES = 50
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_separator(value: str) -> str:
    """``--sep`` as given (``,``, ``tab``, ``\\t``, ``;``, ``|``, ``whitespace``) -> the separator.

    Raises:
        DataError: anything else (a separator must be one character, or ``whitespace``).
    """
    sep = _ALIASES.get(value.lower(), value)
    if sep != WHITESPACE and len(sep) != 1:
        raise DataError(f"--sep {value!r} is not one character",
                        hint="use ',', ';', '|', tab or whitespace")
    return sep


def separator_name(sep: str) -> str:
    return _NAMES.get(sep, repr(sep))


def read_text_table(
    path: str | Path, *, sep: str | None = None, header: bool = True, columns: list[str] | None = None,
    one_column: bool = False,
) -> tuple[pl.DataFrame, str]:
    """All-String columns of the text table at ``path``, and the separator used.

    Args:
        sep: one character or :data:`WHITESPACE`; ``None`` sniffs it.
        header: the first line names the columns. Without it the columns are named by
            ``columns`` or, when that is ``None``, by position: ``"1"``, ``"2"``, ...
        columns: names for a headerless file's columns (implies ``header=False``).
        one_column: a file that no separator splits is a one-column table (an id-only
            item table), not an error.

    Raises:
        DataError: not a text file, separator not recognisable, a repeated column name,
            a header made of numbers, a line with the wrong number of fields (its line
            number is given; line 1 is the first line of the file).
    """
    path = Path(path)
    with fsio.io_errors(path):
        raw = path.read_bytes()
    text = _decode(raw, path)
    if columns is not None:
        header = False
    lines = _sample(text)
    if not lines:
        raise DataError("the file is empty", file=path)
    if sep is None:
        sep = sniff_separator(lines, SUFFIX_SEPARATORS.get(path.suffix.lower()), path, one_column=one_column)
    first = _split(lines[0], sep)
    width = len(first)
    if header:
        _check_header(first, path)
        names = first
    else:
        if columns is not None and len(columns) != width:
            raise DataError(f"--columns names {len(columns)} column(s) but line 1 has {width} fields",
                            file=path, hint=f"give {width} names, in the file's order")
        names = list(columns) if columns is not None else [str(i) for i in range(1, width + 1)]
        _check_header(names, path, given=True)
    data = text.encode("utf-8")
    if sep == WHITESPACE:  # one tab between fields, none around them; never quoted
        data = re.sub(rb"(?m)^[ \t]+|[ \t]+(?=\r?$)", b"", data)
        data = re.sub(rb"[ \t]+", b"\t", data)
    polars_sep = "\t" if sep == WHITESPACE else sep
    quoted = sep != WHITESPACE and '"' in text
    if not quoted:
        _check_widths(data, polars_sep, width, path, sep)
    try:
        frame = pl.read_csv(
            data, separator=polars_sep, has_header=header, infer_schema=False,
            quote_char='"' if quoted else None, new_columns=None if header else names,
        )  # fmt: skip
    except pl.exceptions.PolarsError as exc:
        raise _locate_width(text, sep, width, path) or DataError(
            f"cannot read: {first_line(exc)}", file=path
        ) from None
    if header:
        frame.columns = names
    return frame, sep


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\x00" in raw[:65536]:
        raise DataError("not a text table (it holds binary data)", file=path,
                        hint="give a CSV/TSV/whitespace-separated text file, or a .parquet file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # older exports are latin-1 (e.g. "Café")
        return raw.decode("latin-1")


def _sample(text: str) -> list[str]:
    lines = []
    for line in io.StringIO(text):
        if line.strip():
            lines.append(line.rstrip("\r\n"))
            if len(lines) >= _SAMPLE_LINES:
                break
    return lines


def _split(line: str, sep: str) -> list[str]:
    if sep == WHITESPACE:
        return line.split()
    return next(csv.reader([line], delimiter=sep))


def sniff_separator(lines: list[str], preferred: str | None, path: Path, *, one_column: bool = False) -> str:
    """The separator for ``lines`` (a sample from the top of the file).

    The suffix's separator (``preferred``: ``,`` for .csv) wins when it splits the first
    line into 2 or more fields. Otherwise the candidate (``,`` tab ``;`` ``|``, then
    whitespace) that splits the most sample lines into one common width of 2 or more
    is chosen; a stray ragged line is then reported by the width check, not here. With
    ``one_column``, a file that no separator splits at all is one column.
    """
    if preferred is not None and len(_split(lines[0], preferred)) >= 2:
        return preferred
    best, best_share = None, 0.0
    for sep in [*CANDIDATES, WHITESPACE]:
        try:
            widths = [len(_split(line, sep)) for line in lines]
        except csv.Error:
            continue
        common = max(set(widths), key=widths.count)
        share = widths.count(common) / len(widths)
        if common >= 2 and widths[0] == common and share > best_share:
            best, best_share = sep, share
    if best is None and one_column and all(len(_split(line, sep)) == 1 for sep in CANDIDATES for line in lines):
        return preferred or CANDIDATES[0]  # one column (e.g. an id-only item table): nothing to separate
    if best is None or best_share < 0.8:
        raise DataError(
            "cannot tell how the fields are separated (no separator splits the first lines alike into 2 or more fields)",
            file=path,
            hint="pass --sep (',', ';', '|', tab or whitespace)",
        )
    return best


def _check_header(names: list[str], path: Path, given: bool = False) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(names, 1):
        if name in seen:
            where = "--columns" if given else "the header"
            raise DataError(
                f"column {name!r} appears twice in {where} (positions {seen[name]} and {position})",
                file=path, line=None if given else 1, hint="give each column its own name",
            )  # fmt: skip
        seen[name] = position
    if not given and names and all(_NUMBER.fullmatch(n.strip()) for n in names):
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise DataError(
            f"line 1 ({shown}) looks like data, not a header: it would be dropped",
            file=path,
            hint="pass --no-header (columns are then named 1, 2, ...) or --columns user,item,... to name them",
        )


def _check_widths(data: bytes, sep: str, width: int, path: Path, shown_sep: str) -> None:
    """Vectorized: every non-blank line has ``width`` fields (unquoted files only)."""
    lines = pl.read_csv(data, has_header=False, separator="\x00", quote_char=None, schema={"line": pl.String},
                        truncate_ragged_lines=True)
    line = pl.col("line").str.strip_chars_end("\r")
    fields = line.str.count_matches(re.escape(sep), literal=False) + 1
    bad = lines.select(((fields != width) & (line.str.strip_chars() != "")).fill_null(False)).to_series().arg_true()
    if len(bad):
        index = int(bad[0])
        found = int(lines.select(fields).to_series()[index])
        raise _width_error(path, index + 1, width, found, shown_sep)


def _locate_width(text: str, sep: str, width: int, path: Path) -> DataError | None:
    """Scan the (quoted) file for the first line whose field count differs from ``width``."""
    if sep == WHITESPACE:
        rows = ((n, line.split()) for n, line in enumerate(io.StringIO(text), 1))
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        rows = ((reader.line_num, row) for row in reader)
    try:
        for n, row in rows:
            if row and any(field.strip() for field in row) and len(row) != width:
                return _width_error(path, n, width, len(row), sep)
    except csv.Error as exc:
        return DataError(f"malformed quoting ({exc})", file=path)
    return None


def _width_error(path: Path, line: int, width: int, found: int, sep: str) -> DataError:
    extra = " (truncated line?)" if found < width else ""
    return DataError(f"expected {width} fields separated by {separator_name(sep)}, found {found}{extra}",
                     file=path, line=line)
