"""``towerrec experiment``: one model per feature set, cached, charted, tabulated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from towerrec.cli.app import app
from towerrec.cli.common import DataDirOption, DeviceOption, TrackOption, check_folder_option, console, say
from towerrec.config import MAX_COUNT, MAX_WIDTH, RANKING_KINDS
from towerrec.errors import ConfigError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def experiment(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="An experiment TOML ([experiment] plus RunConfig sections).")
    ] = None,
    data_dir: DataDirOption = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name or folder (overrides \\[data] dataset).")] = None,
    split: Annotated[Optional[str], typer.Option(help="tfrs-random | temporal | leave-last-out.")] = None,
    feature_set: Annotated[
        Optional[list[str]],
        typer.Option("--feature-set", "-f", help="Repeat: none | timestamp | timestamp,movie_title_text | ..."),
    ] = None,
    num_epochs: Annotated[Optional[int], typer.Option("--num-epochs", min=1, max=MAX_COUNT, help="Epochs per model.")] = None,
    embedding_size: Annotated[Optional[int], typer.Option("--embedding-size", min=1, max=MAX_WIDTH, help="Embedding dimension.")] = None,
    layer_sizes: Annotated[
        Optional[str], typer.Option("--layer-sizes", help="Dense layers of each tower: --layer-sizes 64 32 (or 64,32).")
    ] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=1, max=MAX_COUNT, help="Evaluate every N epochs.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train every model again, even if cached.")] = False,
    recommend_for_user: Annotated[
        Optional[str], typer.Option("--recommend-for-user", help="Print this user's top movies and each model's top 10.")
    ] = None,
    include_seen: Annotated[
        Optional[bool], typer.Option("--include-seen/--exclude-seen", help="Recommendations: keep movies the user rated.")
    ] = None,
    item_features: Annotated[
        Optional[Path], typer.Option("--item-features", help="CSV/Parquet of extra item columns (e.g. length).")
    ] = None,
    on: Annotated[Optional[str], typer.Option("--on", help="The item-id column of --item-features.")] = None,
    item_feature_default: Annotated[
        Optional[list[str]],
        typer.Option("--item-feature-default", help="COLUMN=VALUE for items the table lacks (length defaults to 90)."),
    ] = None,
    recipe: Annotated[
        Optional[str], typer.Option(help="towerrec (default: Adam, temperature, logQ) or tfrs (the peer's Adagrad recipe).")
    ] = None,
    name: Annotated[Optional[str], typer.Option(help="Experiment name (run and output folder names).")] = None,
    runs: Annotated[Optional[Path], typer.Option("--runs", help="Folder that holds run directories.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where the chart and tables go (default experiments/NAME).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    device: DeviceOption = "cpu",
    track: TrackOption = None,
) -> None:
    """Train one model per feature set and compare them: curves (HTML + PNG), a results table, recommendations.

    A finished model with the same configuration AND data is reused (say --retrain to train again);
    an interrupted one resumes from its checkpoint.

    Examples:

      towerrec experiment --config configs/w2_ml100k.toml --data-dir ../shared/datasets/ml-100k

      towerrec experiment --num-epochs 20 --feature-set none --feature-set timestamp \\
          --feature-set timestamp,movie_title_text --layer-sizes 64 32 --eval-every 5 --recommend-for-user 1

      towerrec experiment -c configs/w2_ml100k.toml --item-features lengths.csv --on movie_id \\
          --feature-set timestamp,movie_title_text,movie_genres,movie_length

      towerrec experiment -c configs/w2_ml100k.toml --track mlflow
    """
    from towerrec.experiments.runner import ExperimentConfig, load_experiment, run_experiment
    from towerrec.experiments.report import recommendations_markdown, results_markdown

    sizes = _layer_sizes(layer_sizes, list(ctx.args))
    for folder, option in ((runs, "--runs"), (out, "--out")):
        if folder is not None:
            check_folder_option(folder, option)
    exp = load_experiment(config) if config is not None else ExperimentConfig()
    data = {
        "data_dir": None if data_dir is None else str(data_dir),
        "dataset": dataset,
        "split": split,
        "item_features": None if item_features is None else str(item_features),
        "item_features_on": on,
        "item_feature_defaults": list(item_feature_default) if item_feature_default else None,
    }
    exp = exp.with_changes(
        name=name,
        recipe=recipe,
        feature_sets=tuple(feature_set) if feature_set else None,
        num_epochs=num_epochs,
        embedding_size=embedding_size,
        layer_sizes=sizes,
        eval_every=eval_every,
        recommend_for_user=recommend_for_user,
        include_seen=include_seen,
        runs_dir=None if runs is None else str(runs),
        out_dir=None if out is None else str(out),
        overrides={"data": data, "track": {"backend": track}},
    )
    if exp.overrides.get("model", {}).get("kind") in RANKING_KINDS:
        raise ConfigError("towerrec experiment compares retrieval models' feature sets by top-K accuracy; "
                          f"[model] kind = {exp.overrides['model']['kind']!r} is not one",
                          hint="train ranking configs with `towerrec train CONFIG` (one per config)")
    result = run_experiment(exp, retrain=retrain, progress=not quiet, log=say, device=device)
    console.print(results_markdown(exp, result.runs), markup=False, highlight=False, soft_wrap=True)
    if result.recommendations is not None:
        console.print(recommendations_markdown(result.recommendations), markup=False, highlight=False, soft_wrap=True)
    reused = sum(r.reused for r in result.runs)
    console.print(f"{len(result.runs)} model(s), {reused} reused from cache, in {result.wall_seconds:.1f} s")
    for label, path in result.outputs.items():
        console.print(f"{label}: [bold]{escape(str(path))}[/bold]", soft_wrap=True, highlight=False)


def _layer_sizes(first: Optional[str], extra: list[str]) -> Optional[tuple[int, ...]]:
    """``--layer-sizes 64 32`` arrives as "64" plus the extra argument "32"; "64,32" works too."""
    if first is None:
        if extra:
            raise ConfigError(f"unexpected argument(s) {extra}", hint="see towerrec experiment --help")
        return None
    parts = [p for p in first.replace(",", " ").split() if p] + extra
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--layer-sizes takes positive integers, got {' '.join(parts)!r}",
                          hint="e.g. --layer-sizes 64 32") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--layer-sizes takes positive integers, got {' '.join(parts)!r}")
    return sizes
