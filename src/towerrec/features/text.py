"""Text and multi-valued columns -> padded index matrices.

Titles become bags of lower-cased words ("Toy Story (1995)" -> toy, story):
text is first normalised to Unicode NFKC (fullwidth "Ａｌｉｃｅ" -> "Alice",
ligatures and compatibility forms folded), the trailing year is dropped
because ``movie_year`` carries it, and apostrophes of every spelling (ASCII
', typographic ’ ‘, modifier ʼ, prime ′, backtick, acute) are removed so
"Schindler's" and "Schindler’s" are the same one token. Words of every script
are kept (the word pattern is Unicode-aware). Lists are padded with index 0 to a fixed
width so a whole epoch is one int64 tensor.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from towerrec.features.vocab import Vocabulary

_TRAILING_YEAR = r"\s*\(\d{4}\)\s*$"
# ASCII apostrophe, left/right single quotation marks, single high-reversed-9, modifier letter
# apostrophe, prime, grave accent (backtick), acute accent
_APOSTROPHES = "['\u2018\u2019\u201b\u02bc\u2032`\u00b4]"


def tokenize(s: pl.Series) -> pl.Series:
    """String column -> List[String] of word tokens (null -> empty list).

    NFKC-normalised, lower-cased, trailing "(1995)" dropped, apostrophes removed,
    then every run of Unicode word characters is a token.
    """
    return (
        s.cast(pl.String)
        .fill_null("")
        .str.normalize("NFKC")
        .str.to_lowercase()
        .str.replace(_TRAILING_YEAR, "")
        .str.replace_all(_APOSTROPHES, "")
        .str.extract_all(r"\w+")
    )


def as_lists(s: pl.Series) -> pl.Series:
    """A multi-valued column as List: lists pass through, strings split on '|' (null -> empty)."""
    if isinstance(s.dtype, pl.List):
        return s.fill_null([])
    return s.cast(pl.String).fill_null("").str.split("|").list.filter(pl.element() != "")


def flatten(lists: pl.Series) -> pl.Series:
    """All non-null elements of a list column, in row order."""
    return lists.explode().drop_nulls()


def pad_lists(lists: pl.Series, vocab: Vocabulary, max_length: int) -> tuple[np.ndarray, int]:
    """int64 [n, max_length]: the first ``max_length`` elements of each row, looked up, 0-padded.

    Vectorised: one lookup over the flattened elements, then a scatter by
    (row, position). Returns the matrix and the number of OOV elements.
    """
    heads = lists.list.drop_nulls().list.head(max_length).fill_null([])
    lens = heads.list.len().to_numpy().astype(np.int64)
    idx, n_oov = vocab.lookup(flatten(heads))
    out = np.zeros((len(lists), max_length), dtype=np.int64)
    rows = np.repeat(np.arange(len(lists)), lens)
    starts = np.cumsum(lens) - lens
    pos = np.arange(len(idx)) - np.repeat(starts, lens)
    out[rows, pos] = idx
    return out, n_oov
