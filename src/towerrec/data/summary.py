"""What a dataset holds, in numbers: the first thing to check before training on it.

:func:`summarize` returns plain JSON-ready values (for ``--json`` and tests);
:func:`render_summary` draws the same numbers as a Rich table.
"""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
from rich.console import Console
from rich.table import Table
from rich.text import Text

from towerrec.data.tables import Dataset


def summarize(dataset: Dataset) -> dict:
    """Counts, density, rating histogram, time span and interactions per user."""
    inter = dataset.interactions
    users, items, n = dataset.num_users, dataset.num_items, inter.height
    per_user = inter.group_by("user_id").len()["len"]
    ratings = inter["rating"].drop_nulls()
    stamps = inter["timestamp"].drop_nulls()
    return {
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "users": users,
        "items": items,
        "interactions": n,
        "density": n / (users * items) if users and items else 0.0,
        "ratings": _histogram(ratings) if len(ratings) else None,
        "time_span": {"first": _iso_date(stamps.min()), "last": _iso_date(stamps.max())} if len(stamps) else None,
        "interactions_per_user": {
            "min": int(per_user.min()),
            "median": float(per_user.median()),
            "max": int(per_user.max()),
        }
        if n
        else None,
        "item_columns": [] if dataset.items is None else dataset.items.columns,
        "user_columns": [] if dataset.users is None else dataset.users.columns,
        **repeats(inter),
    }


def repeats(interactions: pl.DataFrame) -> dict[str, int]:
    """Repeated (user, item) rows and same-timestamp ties of an interactions table.

    ``repeated_pairs``: rows whose (user, item) pair occurred on an earlier row;
    ``pairs_repeated``: pairs that occur more than once; ``timestamp_ties``: rows that
    share their user's timestamp with at least one other row (their order in time is
    then the file's). Rows without a timestamp are not ties.
    """
    pairs = interactions.group_by("user_id", "item_id").len()
    stamped = interactions.filter(pl.col("timestamp").is_not_null())
    ties = stamped.group_by("user_id", "timestamp").len().filter(pl.col("len") > 1)
    return {
        "repeated_pairs": interactions.height - pairs.height,
        "pairs_repeated": pairs.filter(pl.col("len") > 1).height,
        "timestamp_ties": int(ties["len"].sum()) if ties.height else 0,
    }


def _histogram(ratings: pl.Series) -> dict[str, int]:
    counts = ratings.value_counts(sort=False, name="count").sort(ratings.name)
    return {f"{value:g}": int(count) for value, count in counts.iter_rows()}


def _iso_date(seconds: int) -> str:
    """The UTC date of epoch ``seconds``; a value no calendar date has is shown raw, flagged."""
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).date().isoformat()
    except (ValueError, OverflowError, OSError):
        return f"{seconds} (out of range as epoch seconds)"


def render_summary(summary: dict, console: Console) -> None:
    """Print ``summary`` (from :func:`summarize`) as a table plus a rating histogram."""
    table = Table(title=Text(f"dataset {summary['name']}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("users", f"{summary['users']:,}")
    table.add_row("items", f"{summary['items']:,}")
    table.add_row("interactions", f"{summary['interactions']:,}")
    table.add_row("density", f"{summary['density']:.2%}")
    if summary["time_span"]:
        table.add_row("time span", f"{summary['time_span']['first']} .. {summary['time_span']['last']}")
    if summary["interactions_per_user"]:
        per = summary["interactions_per_user"]
        table.add_row("per user", f"min {per['min']:,}  median {per['median']:g}  max {per['max']:,}")
    for side in ("item", "user"):
        if summary[f"{side}_columns"]:
            table.add_row(f"{side} columns", Text(", ".join(summary[f"{side}_columns"])))
    if summary.get("repeated_pairs"):
        table.add_row("repeated pairs", f"{summary['repeated_pairs']:,} rows repeat an earlier (user, item) pair "
                      f"({summary['pairs_repeated']:,} pairs)")
    if summary.get("timestamp_ties"):
        table.add_row("timestamp ties", f"{summary['timestamp_ties']:,} rows share their user's timestamp")
    if summary["fingerprint"]:
        table.add_row("fingerprint", summary["fingerprint"][:16])
    console.print(table)
    if summary["ratings"]:
        hist = Table(title="ratings", title_justify="left", show_edge=False)
        hist.add_column("rating", justify="right")
        hist.add_column("count", justify="right")
        hist.add_column("")
        top = max(summary["ratings"].values())
        for value, count in summary["ratings"].items():
            hist.add_row(value, f"{count:,}", "█" * max(1, round(30 * count / top)))
        console.print(hist)
