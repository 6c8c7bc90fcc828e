"""``towerrec index build | index recall``, ``towerrec export``, ``towerrec serve``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from towerrec.cli.app import app
from towerrec.cli.common import RunDataDirOption, check_folder_option, console, say
from towerrec.config import MAX_WIDTH

index_app = typer.Typer(
    help="Build candidate indexes (brute force, FAISS HNSW / IVF / IVF-PQ) and measure their recall.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(index_app, name="index")

RunDir = Annotated[Path, typer.Argument(help="A finished run directory written by `towerrec train`.")]
KindOption = Annotated[str, typer.Option("--kind", help="brute-force | hnsw | ivf | ivfpq")]
HnswM = Annotated[Optional[int], typer.Option("--hnsw-m", min=2, max=1024, help="HNSW: links per node (default 32).")]
EfConstruction = Annotated[Optional[int], typer.Option("--ef-construction", min=1, max=1_000_000, help="HNSW: build beam width (default 128).")]
EfSearch = Annotated[Optional[int], typer.Option("--ef-search", min=1, max=1_000_000, help="HNSW: query beam width (default 256).")]
Nlist = Annotated[Optional[int], typer.Option("--nlist", min=1, max=10**8, help="IVF: number of lists (default ~4·sqrt(N)).")]
Nprobe = Annotated[Optional[int], typer.Option("--nprobe", min=1, max=10**8, help="IVF: lists searched per query (default nlist/16).")]
PqM = Annotated[Optional[int], typer.Option("--pq-m", min=1, max=MAX_WIDTH, help="IVF-PQ: bytes per vector (default dim/4).")]
Refine = Annotated[Optional[int], typer.Option("--refine", min=0, max=10_000, help="IVF-PQ: re-score refine·k candidates exactly (0 off).")]


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _check_kind(kind: str, params: dict[str, Any]) -> None:
    from towerrec.errors import TowerrecError
    from towerrec.serve.export import INDEX_KINDS

    if kind not in INDEX_KINDS:
        raise TowerrecError(f"--kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")
    if kind == "brute-force" and params:
        raise TowerrecError(f"{', '.join('--' + p.replace('_', '-') for p in params)} apply to FAISS indexes only")


@index_app.command("build")
def index_build(
    run_dir: RunDir,
    kind: KindOption = "hnsw",
    out: Annotated[Optional[Path], typer.Option("--out", help="Index folder (default RUN_DIR/index-KIND).")] = None,
    hnsw_m: HnswM = None,
    ef_construction: EfConstruction = None,
    ef_search: EfSearch = None,
    nlist: Nlist = None,
    nprobe: Nprobe = None,
    pq_m: PqM = None,
    refine: Refine = None,
) -> None:
    """Index a run's candidate embeddings and save the index (FAISS binary + JSON, never pickled).

    Examples:

      towerrec index build runs/default-... --kind hnsw

      towerrec index build runs/default-... --kind ivf --nlist 256 --nprobe 32 --out my-index/
    """
    from towerrec.runs import load_run
    from towerrec.serve.export import build_index, run_candidate_embeddings, write_index

    params = _params(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist,
                     nprobe=nprobe, pq_m=pq_m, refine=refine)
    _check_kind(kind, params)
    if out is not None:
        check_folder_option(out, "--out")
    run = load_run(run_dir)
    embeddings = run_candidate_embeddings(run)
    started = time.perf_counter()
    index = build_index(kind, embeddings, run.catalogue["item_id"].to_list(), metadata={"run": run.run_dir.name}, **params)
    seconds = time.perf_counter() - started
    folder = out or run.run_dir / f"index-{kind}"
    write_index(index, folder)  # replaces only an index folder towerrec wrote, by rename
    console.print(f"{kind} index of {index.num_candidates:,} items x {embeddings.shape[1]} dims built in {seconds:.2f} s")
    console.print(f"saved to [bold]{escape(str(folder))}[/bold]", highlight=False, soft_wrap=True)


@index_app.command("recall")
def index_recall(
    run_dir: RunDir,
    kind: KindOption = "hnsw",
    k: Annotated[int, typer.Option("-k", min=1, max=100_000, help="Recall@K against brute force.")] = 100,
    queries: Annotated[int, typer.Option("--queries", min=1, max=10**9, help="Held-out (test split) queries to use, at most.")] = 1000,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen/--include-seen", help="Exclude train items.")] = True,
    hnsw_m: HnswM = None,
    ef_construction: EfConstruction = None,
    ef_search: EfSearch = None,
    nlist: Nlist = None,
    nprobe: Nprobe = None,
    pq_m: PqM = None,
    refine: Refine = None,
    data_dir: RunDataDirOption = None,
) -> None:
    """Recall@K of an approximate index against brute force, on the run's held-out test queries.

    Recall@K = |approximate top-K ∩ exact top-K| / K, averaged over queries; also
    prints each index's queries per second on one batch.

    Examples:

      towerrec index recall runs/default-... --kind hnsw -k 100

      towerrec index recall runs/default-... --kind ivf --nprobe 8
    """
    import torch

    from towerrec.errors import TowerrecError
    from towerrec.index import BruteForceIndex
    from towerrec.recommend import open_run_with_data
    from towerrec.serve.export import build_index, run_candidate_embeddings
    from towerrec.train.models import query_embeddings

    params = _params(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist,
                     nprobe=nprobe, pq_m=pq_m, refine=refine)
    _check_kind(kind, params)
    if queries < 1:
        raise TowerrecError(f"--queries must be ≥ 1, got {queries}")
    run, data = open_run_with_data(run_dir, data_dir)
    embeddings = run_candidate_embeddings(run).float()
    ids = run.catalogue["item_id"].to_list()
    examples = data.test
    chosen = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0))[:queries].sort().values
    query = query_embeddings(run.model, examples).float()[chosen]
    exclude = data.exclusions_for(examples.user_rows[chosen]) if exclude_seen else None
    if exclude is not None:
        left = data.num_items - torch.diff(exclude.indptr).max()
        k = min(k, int(left))
    exact = BruteForceIndex(embeddings, ids)
    started = time.perf_counter()
    approximate = build_index(kind, embeddings, ids, **params)
    build_seconds = time.perf_counter() - started

    def timed(index):
        t = time.perf_counter()
        found = index.search(query, k, exclude_positions=exclude)
        return found, len(query) / (time.perf_counter() - t)

    truth, exact_qps = timed(exact)
    found, approx_qps = timed(approximate)
    rows = torch.arange(len(query)).unsqueeze(1) * (1 << 40)
    recall = torch.isin(rows + found.indices, rows + truth.indices).double().mean().item()
    console.print(
        f"{kind}: recall@{k} = [bold]{recall:.4f}[/bold] against brute force over {len(query):,} test queries "
        f"({data.num_items:,} items; build {build_seconds:.2f} s; "
        f"{approx_qps:,.0f} queries/s vs brute force {exact_qps:,.0f}/s, batched)"
    )


@app.command("export")
def export(
    run_dir: RunDir,
    out: Annotated[Path, typer.Option("--out", help="The bundle folder to write.")],
    index: Annotated[str, typer.Option("--index", help="brute-force | hnsw | ivf | ivfpq")] = "brute-force",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle (only a folder holding a towerrec bundle.json).")] = False,
    hnsw_m: HnswM = None,
    ef_construction: EfConstruction = None,
    ef_search: EfSearch = None,
    nlist: Nlist = None,
    nprobe: Nprobe = None,
    pq_m: PqM = None,
    refine: Refine = None,
    data_dir: RunDataDirOption = None,
    rerank: Annotated[Optional[Path], typer.Option("--rerank", help="A ranking run (\\[model] kind = \"ranking\") that re-ranks the retrieved candidates; trained on the same catalogue.")] = None,
    candidates: Annotated[int, typer.Option("--candidates", min=1, max=100_000, help="With --rerank: items retrieved and scored by the ranker per request.")] = 300,
    rules: Annotated[Optional[Path], typer.Option("--rules", help="With --rerank: a business-rules TOML file applied after ranking, before the top-K cut.")] = None,
    score: Annotated[str, typer.Option("--score", help="With --rerank: the final score: ranker (the ranking score) or sum (both stages' scores, standardised per request, added).")] = "ranker",
    retrieval_weight: Annotated[float, typer.Option("--retrieval-weight", help="With --score sum: the weight of the standardised retrieval score.")] = 1.0,
) -> None:
    """Export a trained two-tower or sequential (GRU / SASRec) run to a self-contained serving bundle.

    The bundle holds the model (saved by towerrec.save: JSON + safetensors), the
    candidate embeddings, the index, item metadata, each known user's seen items
    and query (features and history; a sequential run's timelines) and, for
    two-tower runs, the vocabularies new users' features need: serving needs
    nothing else, and loading never unpickles. Python-built models are exported
    with towerrec.serve.export_bundle(model=...).

    With --rerank, the bundle also holds a ranking run (its model, features and
    known users' ranker queries) and, with --rules, the business rules: each
    request then retrieves --candidates items, ranks them, applies the rules and
    keeps the top K.

    Examples:

      towerrec export runs/default-... --out bundles/ml100k

      towerrec export runs/default-... --out bundles/ml100k-hnsw --index hnsw --ef-search 128

      towerrec export runs/default-... --out bundles/ml100k-ranked --rerank runs/ranking-... --candidates 300 --rules rules.toml
    """
    from towerrec.errors import TowerrecError
    from towerrec.serve.export import export_bundle

    params = _params(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist,
                     nprobe=nprobe, pq_m=pq_m, refine=refine)
    _check_kind(index, params)
    if rules is not None and rerank is None:
        raise TowerrecError("--rules go with --rerank: rules are applied to the ranked candidates")
    if score not in ("ranker", "sum"):
        raise TowerrecError(f"--score {score!r} is not one of ranker, sum")
    started = time.perf_counter()
    export_bundle(run_dir, out, index=index, index_params=params, overwrite=overwrite,
                  data=None if data_dir is None else _run_data(run_dir, data_dir),
                  ranker=rerank, candidates=candidates, rules=rules, score=score, retrieval_weight=retrieval_weight)
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    console.print(f"bundle written to [bold]{escape(str(out))}[/bold] ({size / 1e6:.1f} MB, "
                  f"{time.perf_counter() - started:.1f} s)", highlight=False, soft_wrap=True)
    say(f"serve it with: towerrec serve {out}")


def _run_data(run_dir: Path, data_dir: Path):
    """A run's data (prepared or sequence data, by its kind) read from ``data_dir`` (its new place),
    checked against the run's fingerprint."""
    from towerrec.recommend import open_run_with_data

    return open_run_with_data(run_dir, data_dir)[1]


@app.command("serve")
def serve(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `towerrec export`.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    threads: Annotated[int, typer.Option("--threads", min=1, max=4096, help="Torch/FAISS threads per batch.")] = 1,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="Batch concurrent requests that need the query tower (new users).")] = True,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
    device: Annotated[str, typer.Option("--device", help="Where the model and query embedding run: cpu, cuda, cuda:1 (the index stays on the CPU).")] = "cpu",
) -> None:
    """Answer top-K requests over HTTP (FastAPI + uvicorn); docs at /docs.

    Endpoints: GET /healthz, GET /recommend?user_id=..&k=..&exclude_seen=true,
    POST /recommend (new users: features and/or history), GET /similar?item_id=..&k=..

    Examples:

      towerrec serve bundles/ml100k --port 8000

      curl '127.0.0.1:8000/recommend?user_id=42&k=5'
    """
    import torch
    import uvicorn

    from towerrec.errors import TowerrecError
    from towerrec.serve.app import create_app

    if not 0 < port < 65536:
        raise TowerrecError(f"--port {port} is not a TCP port")
    if threads < 1:
        raise TowerrecError(f"--threads must be ≥ 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    application = create_app(bundle, batching=batching, device=device)
    info = application.state.bundle.manifest
    ranker = info.get("ranker")
    stage = (f", re-ranked by [bold]{escape(str(ranker.get('run')))}[/bold] over {ranker.get('candidates'):,} "
             f"candidates{' with rules' if info.get('rules') else ''}") if ranker else ""
    console.print(
        f"serving [bold]{escape(str(info.get('run')))}[/bold] ({info.get('num_items'):,} items{stage}) on "
        f"http://{host}:{port} (docs: http://{host}:{port}/docs)"
    )
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)
