"""``towerrec train | evaluate | recommend | quickstart``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from towerrec.cli.app import app
from towerrec.cli.common import DataDirOption, console
from towerrec.config import RunConfig, load_config
from towerrec.presets import PRESETS, preset

RunsOption = Annotated[Path, typer.Option("--runs", help="Folder that holds run directories.")]
KS = (1, 5, 10, 50, 100)


def _resolve_config(config: str, data_dir: Optional[Path]) -> RunConfig:
    cfg = preset(config) if config in PRESETS and not Path(config).is_file() else load_config(config)
    if data_dir is not None:
        cfg = cfg.replace(data={"data_dir": str(data_dir)})
    return cfg


def metrics_table(title: str, rows: dict[str, dict[str, float]], ks=KS) -> Table:
    """One row per model: top-K accuracy at each K."""
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for k in ks:
        table.add_column(f"top-{k}", justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *[f"{metrics.get(f'top_{k}_accuracy', float('nan')):.4f}" for k in ks])
    return table


@app.command()
def train(
    config: Annotated[str, typer.Argument(help="A TOML config file or a preset name: " + ", ".join(PRESETS))],
    data_dir: DataDirOption = None,
    runs: RunsOption = Path("runs"),
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if a finished run matches.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Override [train] epochs.")] = None,
) -> None:
    """Train the model a config describes (reusing a finished identical run, resuming an interrupted one).

    Examples:

      towerrec train configs/w1_basic.toml --data-dir ../shared/datasets/ml-100k

      towerrec train default --epochs 5
    """
    from towerrec.runs import train_run

    cfg = _resolve_config(config, data_dir)
    if epochs is not None:
        cfg = cfg.replace(train={"epochs": epochs})
    result = train_run(cfg, runs_root=runs, retrain=retrain, log=console.print)
    _print_run_metrics(cfg.name, result.metrics)
    console.print(f"run directory: [bold]{result.run_dir}[/bold]")


def _print_run_metrics(name: str, metrics: dict) -> None:
    test = metrics["test"]
    console.print(metrics_table("test, seen items excluded", {name: test["seen_excluded"]}))
    console.print(metrics_table("test, TFRS protocol (seen items not excluded)", {name: test["tfrs"]}))
    if "examples_per_s" in metrics:
        console.print(f"trained in {metrics['train_seconds']:.1f} s, {metrics['examples_per_s']:,.0f} examples/s")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `towerrec train`.")],
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="TFRS protocol: do not exclude the user's train items.")
    ] = False,
    split: Annotated[str, typer.Option(help="test or validation")] = "test",
) -> None:
    """Evaluate a trained run over the full catalogue.

    Examples:

      towerrec evaluate runs/default-2b557534c045-1a2b3c4d

      towerrec evaluate runs/w1-tutorial-... --include-seen
    """
    from towerrec.errors import TowerrecError
    from towerrec.recommend import open_run_with_data
    from towerrec.train.evaluate import evaluate_examples

    run, data = open_run_with_data(run_dir)
    examples = {"test": data.test, "validation": data.validation}.get(split)
    if examples is None:
        raise TowerrecError(f"split {split!r} does not exist for this run", hint="use --split test")
    metrics = evaluate_examples(run.model, data, examples, ks=run.config.eval.ks, exclude_seen=not include_seen)
    protocol = "TFRS protocol" if include_seen else "seen items excluded"
    console.print(metrics_table(f"{split}, {protocol}", {run.config.name: metrics}, run.config.eval.ks))
    extra = {k: v for k, v in metrics.items() if not k.startswith("top_")}
    console.print("  ".join(f"{k} {v:.4f}" for k, v in extra.items()))


@app.command()
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `towerrec train`.")],
    user: Annotated[list[str], typer.Option("--user", "-u", help="User id (repeat for several).")],
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen/--include-seen", help="Leave out items the user has in train.")
    ] = True,
    fallback: Annotated[
        Optional[str], typer.Option(help="'popular': recommend popular items to unknown users instead of failing.")
    ] = None,
) -> None:
    """Print the top-k items for one or more users.

    Examples:

      towerrec recommend runs/default-... --user 42 -k 10

      towerrec recommend runs/default-... --user 99999 --fallback popular
    """
    from towerrec.errors import TowerrecError
    from towerrec.recommend import open_run_with_data, recommend as _recommend

    if fallback not in (None, "popular"):
        raise TowerrecError(f"--fallback {fallback!r} is not supported", hint="use --fallback popular")
    run, data = open_run_with_data(run_dir)
    for u, recs in _recommend(run, data, user, k=k, exclude_seen=exclude_seen, fallback=fallback).items():
        console.print(f"[bold]top {k} for user {u}[/bold]")
        for rank, rec in enumerate(recs, 1):
            console.print(f"  {rank:>3}. {rec.title}  [dim](id {rec.item_id}, score {rec.score:.3f})[/dim]")


@app.command()
def quickstart(
    data_dir: DataDirOption = None,
    runs: RunsOption = Path("runs"),
    user: Annotated[str, typer.Option(help="Whose recommendations to print.")] = "42",
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if cached.")] = False,
) -> None:
    """Workload W1 end to end: MovieLens-100K, two-tower model, test metrics beside popularity, top 3 for a user.

    Downloads MovieLens-100K (checksum-verified) unless --data-dir names a copy.

    Examples:

      towerrec quickstart --data-dir ../shared/datasets/ml-100k

      towerrec quickstart
    """
    from towerrec.recommend import open_run_with_data, recommend as _recommend
    from towerrec.runs import train_run

    rows_excluded, rows_tfrs = {}, {}
    last_dir = None
    for name in ("popularity", "default"):
        cfg = preset(name)
        if data_dir is not None:
            cfg = cfg.replace(data={"data_dir": str(data_dir)})
        result = train_run(cfg, runs_root=runs, retrain=retrain, log=console.print)
        rows_excluded[name] = result.metrics["test"]["seen_excluded"]
        rows_tfrs[name] = result.metrics["test"]["tfrs"]
        last_dir = result.run_dir
    console.print(metrics_table("MovieLens-100K test (20%), full catalogue, seen items excluded", rows_excluded))
    console.print(metrics_table("same, TFRS protocol (seen items not excluded)", rows_tfrs))
    run, data = open_run_with_data(last_dir)
    recs = _recommend(run, data, [user], k=3)[user]
    console.print(f"[bold]top 3 for user {user}:[/bold] " + "; ".join(r.title for r in recs))
    console.print(f"run directory: {last_dir}")
