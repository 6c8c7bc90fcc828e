"""``towerrec tune``: an Optuna study over config fields, chosen on validation, each trial a cached run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from towerrec.cli.app import app
from towerrec.cli.common import DataDirOption, DeviceOption, TrackOption, check_folder_option, console, say
from towerrec.cli.train_cmd import DatasetOption, _resolve_config
from towerrec.config import MAX_COUNT
from towerrec.presets import PRESETS


@app.command()
def tune(
    config: Annotated[str, typer.Argument(help="The base config: a TOML file or a preset name: " + ", ".join(PRESETS)
                                           + ". Each trial changes the fields the space searches.")],
    space: Annotated[Path, typer.Option("--space", help="The search space (TOML): one [params.\"section.field\"] "
                                        "table per searched field, optional \\[study] defaults.")],
    trials: Annotated[int, typer.Option("--trials", min=1, max=MAX_COUNT,
                                        help="Finished trials the study should hold (a rerun resumes or adds).")],
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.001,
                                                     help="Start no new trial after this many seconds (the first trial always runs).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="The validation metric to optimise, e.g. "
                                                  "top_10_accuracy, ndcg@10, mrr, rmse (default: \\[study] metric, "
                                                  "else top_10_accuracy / rmse).")] = None,
    direction: Annotated[Optional[str], typer.Option("--direction", help="maximize | minimize (default: \\[study] "
                                                     "direction, else by metric).")] = None,
    study_dir: Annotated[Optional[Path], typer.Option("--study-dir", help="The study folder (default "
                                                      "studies/<config name>).")] = None,
    pruner: Annotated[Optional[str], typer.Option("--pruner", help="median | successive-halving | none (default: "
                                                  "\\[study] pruner, else median).")] = None,
    validation_fraction: Annotated[Optional[float], typer.Option(
        "--validation-fraction", help="Share carved from train for validation when the config has no validation "
        "split (default: \\[study] validation_fraction, else 0.1).")] = None,
    runs: Annotated[Path, typer.Option("--runs", "--runs-root", help="Folder that holds run directories "
                                       "(the trials' runs; `towerrec train best.toml --runs` the same).")] = Path("runs"),
    data_dir: DataDirOption = None,
    dataset: DatasetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    device: DeviceOption = "cpu",
    track: TrackOption = None,
) -> None:
    """Search config fields for the best validation metric; report the chosen config's test metrics once.

    Each trial is an ordinary run in the run cache: an identical trial is never trained twice and
    rerunning an interrupted study resumes it. Writes best.toml, results.md/.json and Optuna's plots
    (HTML + PNG) into the study folder.

    Examples:

      towerrec tune configs/w1_default.toml --space configs/spaces/w1.toml --trials 40

      towerrec tune configs/w3_tutorial_gru.toml --space my_space.toml --trials 20 --timeout 900 --pruner none

      towerrec tune configs/w1_default.toml --space my_space.toml --trials 10 --track tensorboard
    """
    from towerrec.tune import tune as run_study

    for folder, option in ((runs, "--runs"), (study_dir, "--study-dir")):
        if folder is not None:
            check_folder_option(folder, option)
    cfg = _resolve_config(config, data_dir, dataset)
    if track is not None:
        cfg = cfg.replace(track={"backend": track})
    try:
        result = run_study(cfg, space, trials=trials, timeout=timeout, metric=metric, direction=direction,
                           study_dir=study_dir, pruner=pruner, runs_root=runs, validation_fraction=validation_fraction,
                           progress=not quiet, device=device, log=say)
    except KeyboardInterrupt:
        say("study interrupted: run the same command again to resume it (the cut-off trial runs first)")
        raise
    params = ", ".join(f"{key} = {value:.6g}" if isinstance(value, float) else f"{key} = {value!r}"
                       for key, value in result.best_params.items())
    say(f"best trial #{result.best_trial}: {params}")
    say(f"validation {result.metric}: {result.best_value:.4f}")
    say("test (the chosen config, reported once): "
        + ", ".join(f"{name} {value:.4f}" for name, value in result.test_metrics.items()))
    for note in result.notes:
        say(f"note: {note}")
    for label in ("best_config", "results_md", "results_json"):
        console.print(f"{label.replace('_', ' ')}: [bold]{escape(str(result.outputs[label]))}[/bold]",
                      soft_wrap=True, highlight=False)
    console.print(f"study folder: [bold]{escape(str(result.study_dir))}[/bold]", soft_wrap=True, highlight=False)
