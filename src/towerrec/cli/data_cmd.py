"""``towerrec data prepare`` and ``towerrec data info``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from towerrec.cli.common import DataDirOption, console, data_app
from towerrec.data.registry import DATASET_NAMES, prepare_dataset
from towerrec.data.summary import render_summary, summarize

_NAMES = ", ".join(DATASET_NAMES)


@data_app.command(
    "prepare",
    help=(
        "Download (or read --data-dir), verify, parse and cache a MovieLens dataset.\n\n"
        f"NAME is one of {_NAMES} (aliases: ml-100k, ml-1m, ...). Later commands read the "
        "Parquet cache; a changed source file is parsed again.\n\n"
        "Examples:\n\n"
        "  towerrec data prepare movielens-100k\n\n"
        "  towerrec data prepare ml-100k --data-dir ../shared/datasets/ml-100k\n\n"
        "  towerrec data prepare movielens-1m --data-dir ~/Downloads/ml-1m.zip --force\n\n"
        "A movie listed under several ids (18 titles in ML-100K) is merged into its lowest id; "
        "--keep-duplicate-titles keeps them apart (configs: \\[data] duplicate_titles = \"keep\")."
    ),
)
def prepare(
    name: Annotated[str, typer.Argument(help="MovieLens dataset name or alias.", show_default=False)],
    data_dir: DataDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Parse again even if a cached copy exists.")] = False,
    keep_duplicate_titles: Annotated[
        bool, typer.Option("--keep-duplicate-titles", help="Keep a title listed under several ids as separate items.")
    ] = False,
) -> None:
    prepared = prepare_dataset(name, data_dir, progress=True, force=force,
                               duplicate_titles="keep" if keep_duplicate_titles else "merge")
    ds = prepared.dataset
    state = "reused cache" if prepared.hit else "parsed and cached"
    console.print(f"[green]{escape(ds.name)}[/green]: {state} at {escape(str(prepared.path))}", highlight=False,
                  soft_wrap=True)
    counts = f"{ds.interactions.height:,} interactions, {ds.num_users:,} users, {ds.num_items:,} items"
    console.print(counts, highlight=False)
    twins = (ds.meta.get("duplicate_titles") or {}).get("ids") or {}
    if twins and prepared.hit:  # a fresh parse has just warned about them
        from towerrec.data.movielens import duplicate_titles_message

        message = duplicate_titles_message(ds.name, twins, ds.meta["duplicate_titles"].get("mode", "merge"))
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


@data_app.command(
    "info",
    help=(
        "Summarize a dataset: counts, density, rating histogram, time span, interactions per user.\n\n"
        f"NAME_OR_FOLDER is one of {_NAMES} (prepared on first use) or a dataset folder "
        "(one holding dataset.json).\n\n"
        "Examples:\n\n"
        "  towerrec data info movielens-100k --data-dir ../shared/datasets/ml-100k\n\n"
        "  towerrec data info ml-1m --json\n\n"
        "  towerrec data info path/to/dataset-folder"
    ),
)
def info(
    name_or_folder: Annotated[str, typer.Argument(help="Dataset name, alias or folder.", show_default=False)],
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    dataset = prepare_dataset(name_or_folder, data_dir, progress=not as_json).dataset
    summary = summarize(dataset)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        render_summary(summary, console)
