"""``towerrec train | evaluate | recommend | quickstart``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from towerrec.cli.app import app
from rich.markup import escape
from rich.text import Text

from towerrec.cli.common import (DataDirOption, DeviceOption, RunDataDirOption, TrackOption, check_folder_option, console,
                                 say)
from towerrec.errors import TowerrecError
from towerrec.config import MAX_COUNT, MULTI_TASK, RANKING_KINDS, RunConfig, load_config
from towerrec.presets import PRESETS, preset

RunsOption = Annotated[Path, typer.Option("--runs", help="Folder that holds run directories.")]
KS = (1, 5, 10, 50, 100)


DatasetOption = Annotated[
    Optional[str],
    typer.Option("--dataset", help="Run the config on another dataset: a MovieLens name or a dataset folder "
                 "(overrides \\[data] dataset; a folder drops the config's data_dir)."),
]


def _resolve_config(config: str, data_dir: Optional[Path], dataset: Optional[str] = None) -> RunConfig:
    cfg = preset(config) if config in PRESETS and not Path(config).is_file() else load_config(config)
    return with_data(cfg, data_dir, dataset)


def with_data(cfg: RunConfig, data_dir: Optional[Path], dataset: Optional[str]) -> RunConfig:
    """``cfg`` with ``--dataset`` / ``--data-dir`` applied (a dataset folder takes no data_dir)."""
    from towerrec.data.registry import is_release_name

    if dataset is not None:
        cfg = cfg.replace(data={"dataset": dataset, **({} if is_release_name(dataset) else {"data_dir": None})})
    if data_dir is not None:
        cfg = cfg.replace(data={"data_dir": str(data_dir)})
    return cfg


def metrics_table(title: str | Text, rows: dict[str, dict[str, float]], ks=KS) -> Table:
    """One row per model: top-K accuracy at each K."""
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for k in ks:
        table.add_column(f"top-{k}", justify="right")
    for name, metrics in rows.items():
        table.add_row(Text(name), *[f"{metrics.get(f'top_{k}_accuracy', float('nan')):.4f}" for k in ks])
    return table


@app.command()
def train(
    config: Annotated[str, typer.Argument(help="A TOML config file or a preset name: " + ", ".join(PRESETS)
                                           + ". Keys a file leaves out take the default preset's values.")],
    data_dir: DataDirOption = None,
    dataset: DatasetOption = None,
    runs: RunsOption = Path("runs"),
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if a finished run matches.")] = False,
    epochs: Annotated[Optional[int], typer.Option(min=1, max=MAX_COUNT, help="Override \\[train] epochs.")] = None,
    device: DeviceOption = "cpu",
    track: TrackOption = None,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, max=MAX_COUNT,
        help="Data-parallel processes on this machine: runs this command under torchrun with N processes "
             "(the global batch stays \\[train] batch_size; 1: one process).")] = 1,
) -> None:
    """Train the model a config describes (reusing a finished identical run, resuming an interrupted one).

    Examples:

      towerrec train configs/w1_basic.toml --data-dir ../shared/datasets/ml-100k

      towerrec train configs/w3_sasrec.toml --device cuda

      towerrec train default --epochs 5

      towerrec train configs/w1_basic.toml --dataset my-imported-folder/

      towerrec train configs/w1_default.toml --track tensorboard

      towerrec train configs/w1_basic.toml --nproc 2   (or: torchrun --nproc-per-node 2 -m towerrec train ...)
    """
    from towerrec.runs import train_run
    from towerrec.track import tracker_callbacks
    from towerrec.train import distributed

    check_folder_option(runs, "--runs")
    cfg = _resolve_config(config, data_dir, dataset)
    if epochs is not None:
        cfg = cfg.replace(train={"epochs": epochs})
    if track is not None:
        cfg = cfg.replace(track={"backend": track})
    if nproc > 1:
        if distributed.launched_with_torchrun():
            raise TowerrecError("--nproc was given to a process torchrun started",
                                hint="use either torchrun --nproc-per-node N or towerrec train --nproc N")
        from towerrec.devices import resolve_device

        resolve_device(device)  # an unavailable device is one line here, not an error in every process
        # the same command without --nproc, in every process (every option of this command, spelled out)
        argv = ["train", config, "--runs", str(runs), "--device", device,
                *(["--data-dir", str(data_dir)] if data_dir is not None else []),
                *(["--dataset", dataset] if dataset is not None else []),
                *(["--retrain"] if retrain else []), *(["--epochs", str(epochs)] if epochs is not None else []),
                *(["--track", track] if track is not None else [])]
        code = distributed.launch(argv, nproc)
        if code:
            raise TowerrecError(f"data-parallel training failed: torchrun exited with status {code}",
                                hint="the lines above name the failing process's error")
        return
    started_group = distributed.init_from_env(device)
    try:
        main = distributed.is_main_process()
        callbacks = tracker_callbacks(cfg.track, run_name=cfg.name, config=cfg) if main else []  # rank 0 tracks
        for callback in callbacks:
            say(f"tracking to {callback.tracker.location}")
        result = train_run(cfg, runs_root=runs, retrain=retrain, log=say if main else _quiet,
                           device=distributed.local_device(device), callbacks=callbacks)
    finally:
        if started_group:
            distributed.teardown()
    if main:
        _print_run_metrics(cfg.name, result.metrics, cfg.eval.ks)
        console.print(f"run directory: [bold]{escape(str(result.run_dir))}[/bold]", soft_wrap=True, highlight=False)  # paths stay copyable


def _quiet(message: str) -> None:
    """The log of a data-parallel process other than rank 0 (rank 0 says it all)."""


BASELINE_LABELS = {"global_mean": "global mean", "item_mean": "item mean"}  # rows of the mean train rating baselines
BASELINES_NOTE = "; indented: baselines, the global / each item's mean train rating"

Rows = dict[str, dict[str, float]] | list[tuple[str, dict[str, float]]]


def with_baselines(label: str, metrics: dict[str, float],
                   baselines: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """A model's row followed by one indented row per rating baseline (``metrics.json``'s ``ranking_baselines``:
    ``"  global mean"``, the mean train rating, and ``"  item mean"``, each item's)."""
    return [(label, metrics), *[(f"  {BASELINE_LABELS.get(name, name)}", m) for name, m in baselines.items()]]


def ranking_table(title: str | Text, rows: Rows) -> Table:
    """One row per model (or split, or baseline; ``rows``: label -> metrics, or (label, metrics) pairs): its
    ranking metrics (RMSE, MAE, AUC, NDCG@K, MRR; those it has)."""
    pairs = list(rows.items()) if isinstance(rows, dict) else rows
    order = ["rmse", "mae", "auc"]
    names = [n for n in order if any(n in m for _, m in pairs)]
    ndcg = sorted({n for _, m in pairs for n in m if n.startswith("ndcg@")}, key=lambda n: int(n[5:]))
    names += ndcg + (["mrr"] if any("mrr" in m for _, m in pairs) else [])
    labels = {"rmse": "RMSE", "mae": "MAE", "auc": "AUC", "mrr": "MRR"}
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for n in names:
        table.add_column(labels.get(n, n.replace("ndcg", "NDCG")), justify="right")
    for name, metrics in pairs:
        table.add_row(Text(name), *[f"{metrics[n]:.4f}" if n in metrics else "" for n in names])
    return table


def multitask_table(title: str | Text, test: dict[str, dict[str, float]], ks=KS) -> Table:
    """A multi-task run's one table: a row per protocol, top-K accuracy at each K, then the RMSE of the predicted
    ratings (the same in both rows; MAE, AUC and the rated items' NDCG are in the run's metrics.json)."""
    table = Table(title=title, title_justify="left")
    table.add_column("protocol")
    for k in ks:
        table.add_column(f"top-{k}", justify="right")
    rating = [n for n in ("rmse",) if n in test["ranking"]]
    for n in rating:
        table.add_column(n.upper(), justify="right")
    for protocol, label in (("seen_excluded", "seen excl."), ("tfrs", "TFRS")):
        table.add_row(label, *[f"{test[protocol].get(f'top_{k}_accuracy', float('nan')):.4f}" for k in ks],
                      *[f"{test['ranking'][n]:.4f}" for n in rating])
    return table


def _print_run_metrics(name: str, metrics: dict, ks=KS) -> None:
    """The run's test tables: top-K accuracy per K of its ``[eval] ks`` under both protocols, (ranking
    runs) its ranking metrics on test and validation, or (multi-task runs) top-K accuracy and RMSE in one."""
    test = metrics["test"]
    if "ranking" in test and "tfrs" in test:
        console.print(multitask_table(Text(f"{name}, test: top-K accuracy over the catalogue; rating error of "
                                           "the rated pairs"), test, ks))
        if "ranking_baselines" in test:
            console.print("rating baselines, test RMSE: " + ", ".join(
                f"{BASELINE_LABELS.get(n, n)} {m['rmse']:.4f}" for n, m in test["ranking_baselines"].items()),
                highlight=False)
    elif "ranking" in test:
        title = "ranking metrics (each user's rated items of the split)"
        if "ranking_baselines" in test:
            title += BASELINES_NOTE
        rows = [row for split in ("test", "validation") if split in metrics
                for row in with_baselines(f"{name} ({split})", metrics[split]["ranking"],
                                          metrics[split].get("ranking_baselines", {}))]
        console.print(ranking_table(title, rows))
    else:
        console.print(metrics_table("test, seen items excluded", {name: test["seen_excluded"]}, ks))
        console.print(metrics_table("test, TFRS protocol (seen items not excluded)", {name: test["tfrs"]}, ks))
    if "examples_per_s" in metrics:
        console.print(f"trained in {metrics['train_seconds']:.1f} s, {metrics['examples_per_s']:,.0f} examples/s")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `towerrec train`.")],
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="TFRS protocol: do not exclude the user's train items.")
    ] = False,
    split: Annotated[str, typer.Option(help="test or validation")] = "test",
    data_dir: RunDataDirOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Evaluate a trained run (any kind): retrieval runs over the full catalogue (top-K accuracy, NDCG, MRR),
    ranking runs on each user's rated items (RMSE, MAE, AUC, NDCG@K, MRR).

    Examples:

      towerrec evaluate runs/default-2b557534c045-1a2b3c4d

      towerrec evaluate runs/w1-tutorial-... --include-seen
    """
    from towerrec.errors import TowerrecError
    from towerrec.recommend import open_run_with_data
    from towerrec.train.evaluate import evaluate_examples

    run, data = open_run_with_data(run_dir, data_dir, device=device)
    examples = {"test": data.test, "validation": data.validation}.get(split)
    if examples is None:
        raise TowerrecError(f"split {split!r} does not exist for this run", hint="use --split test")
    if run.config.model.kind in RANKING_KINDS:
        from towerrec.train.evaluate import evaluate_ranking, ranking_baselines

        if include_seen:
            console.print("note: --include-seen has no effect: a ranking run scores each user's rated items",
                          highlight=False)
        ranking = evaluate_ranking(run.model, data, examples, run.config.ranking)  # type: ignore[arg-type]
        baselines = ranking_baselines(data, examples, run.config.ranking)  # type: ignore[arg-type]
        console.print(ranking_table(f"{split}, ranking metrics (each user's rated items)"
                                    + (BASELINES_NOTE if baselines else ""),
                                    with_baselines(run.config.name, ranking, baselines)))
        return
    metrics = evaluate_examples(run.model, data, examples, ks=run.config.eval.ks, exclude_seen=not include_seen)
    protocol = "TFRS protocol" if include_seen else "seen items excluded"
    console.print(metrics_table(f"{split}, {protocol}", {run.config.name: metrics}, run.config.eval.ks))
    extra = {k: v for k, v in metrics.items() if not k.startswith("top_")}
    console.print("  ".join(f"{k} {v:.4f}" for k, v in extra.items()))
    if run.config.model.kind == MULTI_TASK:  # its rating head too
        from towerrec.train.evaluate import evaluate_ranking, ranking_baselines

        ranking = evaluate_ranking(run.model, data, examples, run.config.ranking)  # type: ignore[arg-type]
        baselines = ranking_baselines(data, examples, run.config.ranking)  # type: ignore[arg-type]
        console.print(ranking_table(f"{split}, rating head (each user's rated items)"
                                    + (BASELINES_NOTE if baselines else ""),
                                    with_baselines(run.config.name, ranking, baselines)))


@app.command()
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `towerrec train`.")],
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", help="User id (repeat for several).")] = None,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Every user of the training data, in one batched pass.")
    ] = False,
    k: Annotated[int, typer.Option("-k", help="How many items (fewer when fewer unseen items are left).")] = 10,
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen/--include-seen", help="Leave out items the user has in train.")
    ] = True,
    fallback: Annotated[
        Optional[str], typer.Option(help="'popular': recommend popular items to unknown users instead of failing.")
    ] = None,
    history: Annotated[
        Optional[str],
        typer.Option(help="Sequential runs: an explicit item history, oldest first, e.g. 1,2,3 "
                          "(unknown ids: \\[sequence] unknown_items; longer than max_length: most recent kept)."),
    ] = None,
    data_dir: RunDataDirOption = None,
    at: Annotated[
        Optional[int],
        typer.Option("--at", help="Query time (Unix seconds) for models with a timestamp feature; "
                                  "default: the dataset's latest timestamp."),
    ] = None,
    device: DeviceOption = "cpu",
    rerank: Annotated[
        Optional[Path],
        typer.Option("--rerank", help="A ranking run (\\[model] kind = \"ranking\") that re-ranks this run's "
                                      "candidates (retrieve-then-rank; prints both stages' scores)."),
    ] = None,
    candidates: Annotated[
        int, typer.Option("--candidates", min=1, max=MAX_COUNT, help="With --rerank: items retrieved per user.")
    ] = 300,
    rules: Annotated[
        Optional[Path],
        typer.Option("--rules", help="With --rerank: a business-rules TOML file (exclusions, allow/deny lists, "
                                     "diversity caps), applied after ranking, before the top-k cut."),
    ] = None,
    score: Annotated[
        str, typer.Option("--score", help="With --rerank: order by the ranking score ('ranker') or by the sum of "
                                          "both stages' per-list standardised scores ('sum').")
    ] = "ranker",
    retrieval_weight: Annotated[
        float, typer.Option("--retrieval-weight", help="With --score sum: the retrieval score's weight.")
    ] = 1.0,
) -> None:
    """Print the top-k items for one or more users, or (sequential runs) for an item history.

    A user with fewer than k unseen items left gets those left (flagged); an unknown
    user fails the call unless --fallback popular, which serves them popular items.

    Examples:

      towerrec recommend runs/default-... --user 42 -k 10

      towerrec recommend runs/default-... --all-users -k 10

      towerrec recommend runs/default-... --user 99999 --fallback popular

      towerrec recommend runs/w2-timestamp-... --user 42 --at 893286638

      towerrec recommend runs/w3-sasrec-... --history 50,181,172 -k 10

      towerrec recommend runs/default-... --rerank runs/ranker-... --candidates 300 --rules rules.toml --user 42
    """
    from towerrec.config import load_config
    from towerrec.errors import TowerrecError
    from towerrec.recommend import open_run_with_data, recommend as _recommend

    if fallback not in (None, "popular"):
        raise TowerrecError(f"--fallback {fallback!r} is not supported", hint="use --fallback popular")
    if not user and history is None and not all_users:
        raise TowerrecError("say whose recommendations: --user ID, --all-users (or, for sequential runs, --history 1,2,3)")
    if rerank is not None:
        _recommend_reranked(run_dir, rerank, user or [], all_users, k=k, candidates=candidates, rules=rules,
                            score=score, retrieval_weight=retrieval_weight, exclude_seen=exclude_seen,
                            fallback=fallback, history=history, data_dir=data_dir, at=at, device=device)
        return
    given = [name for name, value in (("--rules", rules), ("--score", score != "ranker" or None),
                                      ("--candidates", candidates != 300 or None),
                                      ("--retrieval-weight", retrieval_weight != 1.0 or None)) if value]
    if given:
        raise TowerrecError(f"{', '.join(given)} work(s) with --rerank RANKING_RUN", hint="add --rerank")
    config_path = Path(run_dir) / "config.toml"
    if config_path.is_file() and load_config(config_path).model.kind in RANKING_KINDS:
        raise TowerrecError(f"{run_dir} is a ranking run: it scores given candidates, it does not retrieve them",
                            hint="recommend with a retrieval run (two-tower, sequential, baseline)")
    if config_path.is_file() and load_config(config_path).model.kind == "sequential":
        if at is not None:
            console.print("note: --at has no effect: sequential runs have no timestamp feature", highlight=False)
        _recommend_sequential(run_dir, user or [], history, k, exclude_seen, fallback, data_dir, all_users, device)
        return
    if history is not None:
        raise TowerrecError("--history works with sequential runs ([model] kind = \"sequential\")",
                            hint="use --user ID for this run")
    run, data = open_run_with_data(run_dir, data_dir, device=device)
    users = list(user or [])
    if all_users:
        users += [str(u) for u in data.features.user_ids.tolist()]
    from towerrec.recommend import query_time, uses_query_time

    if uses_query_time(data):
        when = "given by --at" if at is not None else "the dataset's latest timestamp; --at TIMESTAMP to change"
        console.print(f"query time: {query_time(data, at)} ({when})", highlight=False, soft_wrap=True)
    elif at is not None:
        console.print("note: --at has no effect: this model has no timestamp feature", highlight=False)
    results = _recommend(run, data, users, k=k, exclude_seen=exclude_seen, fallback=fallback, at=at)
    print_recommendations({f"user {u}": recs for u, recs in results.items()}, k, exclude_seen)


def _recommend_reranked(run_dir: Path, ranker_dir: Path, users: list[str], all_users: bool, *, k: int,
                        candidates: int, rules: Optional[Path], score: str, retrieval_weight: float,
                        exclude_seen: bool, fallback: Optional[str], history: Optional[str],
                        data_dir: Optional[Path], at: Optional[int], device: str) -> None:
    """``recommend --rerank``: retrieve-then-rank (:class:`towerrec.pipeline.RetrieveThenRank`), both scores printed."""
    from towerrec.errors import TowerrecError
    from towerrec.pipeline import SCORE_MODES, RetrieveThenRank

    if score not in SCORE_MODES:
        raise TowerrecError(f"--score {score!r} is not a score mode", hint=f"use one of: {', '.join(SCORE_MODES)}")
    if history is not None:
        raise TowerrecError("--history does not work with --rerank: retrieve-then-rank serves known users",
                            hint="use --user ID")
    if fallback is not None:
        raise TowerrecError("--fallback does not work with --rerank: retrieve-then-rank serves known users")
    pipeline = RetrieveThenRank.open(run_dir, ranker_dir, data_dir=data_dir, device=device, rules=rules,
                                     candidates=candidates, score=score, retrieval_weight=retrieval_weight)
    users = list(users) + ([str(u) for u in pipeline.data.features.user_ids.tolist()] if all_users else [])
    results = pipeline.recommend(users, k, exclude_seen=exclude_seen, at=at)
    lines = []
    for who, items in results.items():
        note = f" (only {len(items)} items left)" if len(items) < k else ""
        lines.append(f"top {k} for user {who}{note} (retrieved {candidates}, re-ranked"
                     f"{', rules applied' if rules else ''})")
        for rank, item in enumerate(items, 1):
            combined = f", final {item.score:.3f}" if score != "ranker" else ""
            lines.append(f"  {rank:>3}. {item.title}  (id {item.item_id}, ranking {item.ranking_score:.3f}, "
                         f"retrieval {item.retrieval_score:.3f} #{item.retrieval_rank}{combined})")
    console.file.write("\n".join(lines) + ("\n" if lines else ""))
    console.file.flush()


def print_recommendations(results: dict, k: int, exclude_seen: bool = True) -> None:
    """Every list under a "top k for ..." heading (noting lists cut short), as one write to the terminal.

    Titles and ids are printed verbatim. Styled on a terminal; piped output is written as
    plain text in one go (943 users x 10 items: milliseconds, not the seconds markup takes).
    """
    from rich.markup import escape

    plain, styled = [], []
    for who, recs in results.items():
        note = ""
        if len(recs) < k:
            note = f" (only {len(recs)} {'unseen items' if exclude_seen else 'items'} left)"
        plain.append(f"top {k} for {who}{note}")
        styled.append(f"[bold]top {k} for {escape(who)}[/bold]" + (f"[yellow]{note}[/yellow]" if note else ""))
        for rank, rec in enumerate(recs, 1):
            plain.append(f"  {rank:>3}. {rec.title}  (id {rec.item_id}, score {rec.score:.3f})")
            styled.append(f"  {rank:>3}. {escape(str(rec.title))}  [dim](id {escape(str(rec.item_id))}, "
                          f"score {rec.score:.3f})[/dim]")
    if not plain:
        return
    if console.is_terminal:
        console.print("\n".join(styled), highlight=False, soft_wrap=True)
    else:
        console.file.write("\n".join(plain) + "\n")
        console.file.flush()


def _recommend_sequential(run_dir: Path, users: list[str], history: Optional[str], k: int, exclude_seen: bool,
                          fallback: Optional[str], data_dir: Optional[Path] = None, all_users: bool = False,
                          device: str = "cpu") -> None:
    from towerrec.recommend import (
        history_to_indices, open_run, parse_history, recommend_from_histories, user_histories,
    )

    run = open_run(run_dir, data_dir, device)
    histories: dict[str, list[int]] = {}
    if users or all_users:
        found = user_histories(run, users, fallback=fallback, all_users=all_users)[0]
        histories.update({f"user {u}": h for u, h in found.items()})
        users = list(found)
    if history is not None:
        histories["history"] = history_to_indices(
            parse_history(history, run.catalogue), run.catalogue, unknown=run.config.sequence.unknown_items,
            aliases=run.item_aliases,
            warn=lambda m: console.print(f"[yellow]warning:[/yellow] {escape(m)}", highlight=False, soft_wrap=True))
    results = recommend_from_histories(run, histories, k=k, exclude_seen=exclude_seen, fallback=fallback,
                                       users={f"user {u}": u for u in users})
    print_recommendations(results, k, exclude_seen)


@app.command()
def quickstart(
    data_dir: DataDirOption = None,
    dataset: DatasetOption = None,
    runs: RunsOption = Path("runs"),
    user: Annotated[
        Optional[str], typer.Option(help="Whose recommendations to print (default 42, or the data's first user).")
    ] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if cached.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Workload W1 end to end: MovieLens-100K (or --dataset), two-tower model, test metrics beside popularity,
    top 3 for a user.

    Downloads MovieLens-100K (checksum-verified) unless --data-dir names a copy.

    Examples:

      towerrec quickstart --data-dir ../shared/datasets/ml-100k

      towerrec quickstart

      towerrec quickstart --dataset my-imported-folder/
    """
    from towerrec.recommend import open_run_with_data, recommend as _recommend
    from towerrec.runs import train_run

    check_folder_option(runs, "--runs")
    rows_excluded, rows_tfrs = {}, {}
    last_dir = None
    for name in ("popularity", "default"):
        cfg = with_data(preset(name), data_dir, dataset)
        result = train_run(cfg, runs_root=runs, retrain=retrain, log=say, device=device)
        rows_excluded[name] = result.metrics["test"]["seen_excluded"]
        rows_tfrs[name] = result.metrics["test"]["tfrs"]
        last_dir = result.run_dir
    label = "MovieLens-100K" if dataset is None else Path(dataset).name
    console.print(metrics_table(Text(f"{label} test (20%), full catalogue, seen items excluded"), rows_excluded))
    console.print(metrics_table("same, TFRS protocol (seen items not excluded)", rows_tfrs))
    run, data = open_run_with_data(last_dir, device=device)
    if user is None:
        known = [str(u) for u in data.features.user_ids.tolist()]
        user = "42" if "42" in known or not known else known[0]
    recs = _recommend(run, data, [user], k=3)[user]
    console.print(f"[bold]top 3 for user {escape(user)}:[/bold] " + escape("; ".join(str(r.title) for r in recs)),
                  highlight=False, soft_wrap=True)
    say(f"run directory: {last_dir}")
