"""``towerrec data synth`` and ``towerrec data import``: make a dataset folder from a generator or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.text import Text

from towerrec.cli.common import console, data_app
from towerrec.config import MAX_WIDTH, SEED_MAX
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write: new, empty, or a towerrec dataset (replaced once the new one is complete).")]


@data_app.command("synth")
def synth(
    out: OutOption,
    users: Annotated[int, typer.Option("--users", min=1, max=10**9, help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option("--items", min=1, max=10**9, help="Number of items.")] = 500,
    interactions: Annotated[
        int, typer.Option("--interactions", min=1, max=10**11, help="Number of (user, item) events (at least 1).")
    ] = 50_000,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Random seed (0..2**32-1): the same seed gives the same data.")
    ] = 0,
    genres: Annotated[int, typer.Option("--genres", min=1, max=10_000, help="Number of genres.")] = 12,
    dim: Annotated[int, typer.Option("--dim", min=1, max=MAX_WIDTH, help="Size of the planted latent factors.")] = 8,
) -> None:
    """Generate a synthetic dataset in the MovieLens shape, with planted structure.

    Users and items have latent factors, item popularity is Zipf-like, genres and
    demographics follow the factors, and tastes drift over time, so both two-tower
    and sequence models have something to learn and a popularity baseline is beatable.

    [bold]Examples:[/bold]

      towerrec data synth --users 1000 --items 500 --interactions 50000 --out synth/

      towerrec data synth --users 100000 --items 20000 --interactions 10000000 --seed 1 --out big/
    """
    from towerrec.data.synthetic import make_synthetic

    _check_out(out)
    dataset = make_synthetic(users, items, interactions, seed=seed, num_genres=genres, dim=dim)
    _save(dataset, out)


@data_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="Interactions table: .csv, .tsv or .parquet.")],
    out: OutOption,
    user: Annotated[str, typer.Option("--user", help="Column holding the user id.")],
    item: Annotated[str, typer.Option("--item", help="Column holding the item id.")],
    timestamp: Annotated[
        Optional[str],
        typer.Option("--timestamp", help="Column with epoch seconds or ISO dates; needed by time-ordered splits."),
    ] = None,
    rating: Annotated[Optional[str], typer.Option("--rating", help="Column with a numeric rating.")] = None,
    item_features: Annotated[
        Optional[Path], typer.Option("--item-features", help="Item table (CSV/Parquet): title, year, genres, extras.")
    ] = None,
    user_features: Annotated[
        Optional[Path], typer.Option("--user-features", help="User table (CSV/Parquet): age, gender, extras.")
    ] = None,
    on: Annotated[
        Optional[list[str]],
        typer.Option(
            "--on",
            help="Id column of the feature tables: COL for both, or items=COL / users=COL "
            "(repeatable). Default: the --item / --user column name.",
        ),
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Dataset name (default: the file name).")] = None,
    sep: Annotated[
        Optional[str],
        typer.Option("--sep", help="Field separator of a text table: ',', ';', '|', tab or whitespace (default: sniffed)."),
    ] = None,
    no_header: Annotated[
        bool, typer.Option("--no-header", help="The first line is data: columns are named 1, 2, ... (or by --columns).")
    ] = False,
    columns: Annotated[
        Optional[str], typer.Option("--columns", help="Names for a headerless file's columns, e.g. user,item,rating,ts.")
    ] = None,
    timestamp_unit: Annotated[
        str, typer.Option("--timestamp-unit", help="Unit of numeric epoch timestamps: s, ms, us or ns.")
    ] = "s",
    dedupe: Annotated[
        str,
        typer.Option("--dedupe", help="Repeated (user, item) rows: none (keep all), keep-first or keep-last (in time)."),
    ] = "none",
) -> None:
    """Import your own interactions table, with optional item and user feature tables.

    Text tables may be comma, tab, semicolon, pipe or whitespace separated (sniffed, or
    --sep). Ids that are all integers become integers, others stay strings. A bad value
    is reported with its file, line and column. Repeated (user, item) rows and events
    sharing their user's timestamp are counted and reported.

    [bold]Examples:[/bold]

      towerrec data import ratings.csv --user user_id --item movie_id --timestamp ts --rating stars --out mydata/

      towerrec data import events.parquet --user uid --item sku --item-features products.csv --on items=sku --out shop/

      towerrec data import pairs.txt --no-header --user 1 --item 2 --out pairs/

      towerrec data import clicks.csv --columns user,item,ts --user user --item item --timestamp ts --timestamp-unit ms --dedupe keep-last --out clicks/
    """
    from towerrec.data.importer import DEDUPE, TIMESTAMP_UNITS, import_interactions
    from towerrec.data.text_table import parse_separator

    if timestamp_unit not in TIMESTAMP_UNITS:
        raise ConfigError(f"--timestamp-unit {timestamp_unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
    if dedupe not in DEDUPE:
        raise ConfigError(f"--dedupe {dedupe!r} is not one of {', '.join(DEDUPE)}")
    names = None
    if columns is not None:
        names = [c.strip() for c in columns.split(",")]
        if not all(names):
            raise ConfigError(f"--columns {columns!r}: every column needs a name", hint="e.g. --columns user,item,rating")
    keys = _join_keys(on or [])
    inputs = tuple(p for p in (file, item_features, user_features) if p is not None)
    _check_out(out, inputs)
    dataset = import_interactions(
        file,
        user_col=user,
        item_col=item,
        timestamp_col=timestamp,
        rating_col=rating,
        item_features=item_features,
        user_features=user_features,
        item_key=keys.get("items"),
        user_key=keys.get("users"),
        name=name,
        sep=None if sep is None else parse_separator(sep),
        header=not no_header,
        columns=names,
        timestamp_unit=timestamp_unit,
        dedupe=dedupe,
    )
    if dataset.interactions.height == 0:
        raise DataError("no data rows", file=file, hint="the table needs at least one (user, item) row below its header")
    _save(dataset, out, inputs)
    _report_repeats(dataset, dedupe)


def _report_repeats(dataset: Dataset, dedupe: str) -> None:
    """Say how many repeated (user, item) rows and same-timestamp ties the table has."""
    from towerrec.data.summary import repeats

    removed = dataset.meta.get("import", {}).get("duplicates_removed", 0)
    if removed:
        console.print(f"--dedupe {dedupe}: removed {removed:,} repeated (user, item) rows", highlight=False)
    for line in repeats_lines(repeats(dataset.interactions)):
        console.print(Text("note: ", style="yellow") + Text(line), highlight=False, soft_wrap=True)


def repeats_lines(counts: dict) -> list[str]:
    """Human lines for :func:`towerrec.data.summary.repeats` (empty when nothing repeats)."""
    lines = []
    if counts["repeated_pairs"]:
        lines.append(f"{counts['repeated_pairs']:,} rows repeat an earlier (user, item) pair "
                     f"({counts['pairs_repeated']:,} pairs); all are kept: --dedupe keep-first|keep-last keeps one")
    if counts["timestamp_ties"]:
        lines.append(f"{counts['timestamp_ties']:,} rows share their user's timestamp with another row: "
                     "time-ordered splits and sequences keep them in file order")
    return lines


def _join_keys(values: list[str]) -> dict[str, str]:
    """``--on COL`` applies to both tables; ``--on items=COL`` / ``users=COL`` to one."""
    keys: dict[str, str] = {}
    for value in values:
        side, sep, column = value.partition("=")
        if not sep:
            keys.setdefault("items", value)
            keys.setdefault("users", value)
        elif side in ("items", "users") and column:
            keys[side] = column
        else:
            raise ConfigError(f"--on {value!r}: expected COL, items=COL or users=COL")
    return keys


def _check_out(out: Path, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse a --out that would destroy foreign files, before any work starts."""
    from towerrec.data.store import MANIFEST, TABLE_FILES
    from towerrec.fsio import check_replaceable

    check_replaceable(out, MANIFEST, what="dataset", protect=inputs, known=TABLE_FILES)


def _save(dataset: Dataset, out: Path, inputs: tuple[Path, ...] = ()) -> None:
    from towerrec.data.store import save_dataset

    save_dataset(dataset, out, protect=inputs)
    tables = ", ".join(
        f"{label} {frame.height:,}"
        for label, frame in (("item rows", dataset.items), ("user rows", dataset.users))
        if frame is not None
    )
    console.print(
        f"wrote [bold]{escape(str(out))}[/bold]: {dataset.interactions.height:,} interactions, "
        f"{dataset.num_users:,} users, {dataset.num_items:,} items" + (f" ({tables})" if tables else ""),
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"fingerprint {dataset.fingerprint[:16]}", style="dim", highlight=False, soft_wrap=True)
