"""Write a serving bundle (layout: :mod:`towerrec.serve.bundle`) from a run directory or a Python-built model.

``export_bundle(run_dir, out)`` exports a finished two-tower or sequential run: the
model comes from :func:`towerrec.runs.load_run`, the known users (train users;
for sequential runs every user with a timeline) from the run's data, read once.
``export_bundle(model=..., out=..., item_ids=..., candidate_features=...)``
exports any :class:`~towerrec.model.RetrievalModel` built in Python with its
catalogue, as simply as TFRS's ``BruteForce(model.user_model).index_from_dataset(...)``::

    export_bundle(model=model, out="bundle", item_ids=movie_ids,
                  candidate_features={"item": torch.arange(len(movie_ids))},
                  known_users={"ids": user_ids, "queries": {"user": torch.arange(len(user_ids))},
                               "seen": seen_movie_ids_per_user})
    load_bundle("bundle").recommend(user_ids[0], k=10)

The bundle is written to a marked scratch folder beside the target, loaded
once, and renamed into place, so a crash never leaves half a bundle.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file
from torch import Tensor

from towerrec import __version__, fsio
from towerrec.data.tables import item_aliases
from towerrec.errors import TowerrecError, first_line
from towerrec.index import BruteForceIndex, FaissIndex, Index
from towerrec.metrics.topk import CSR
from towerrec.model import CANDIDATE_INDEX, RetrievalModel
from towerrec.serve.bundle import BUNDLE_FORMAT_VERSION, MANIFEST, MODEL_FOLDER, bundle_files, load_bundle
from towerrec.serve.queries import QUERY_PREFIX, QueryBuilder, SequentialQueries, TensorQueries, TwoTowerQueries
from towerrec.pipeline import check_score
from towerrec.rules import BusinessRules
from towerrec.serve.ranking import (DEFAULT_CANDIDATES, check_candidates_count, ranker_parts, rule_tables,
                                    write_ranker, write_rules)

INDEX_KINDS = ("brute-force", "hnsw", "ivf", "ivfpq")
ITEM_COLUMNS = ("title", "year", "genres")
CHUNK = 8192


def run_candidate_embeddings(run) -> Tensor:
    """``[N, d]`` candidate embeddings of a run's catalogue, from the run directory alone.

    Raises:
        TowerrecError: the run's model is not a retrieval model (popularity, EASE).
    """
    if not isinstance(run.model, RetrievalModel):
        raise TowerrecError(
            f"{run.run_dir}: a {run.config.model.kind} model has no towers to export or index",
            hint="export a two-tower or sequential run (e.g. the 'default' preset)",
        )
    features = run.features.encode_candidates() if run.features is not None else {}
    return embed_candidates(run.model, features, len(run.catalogue))


@torch.no_grad()
def embed_candidates(model: RetrievalModel, features: Mapping[str, Tensor], num_items: int) -> Tensor:
    """``[N, d]`` float32 CPU embeddings of a catalogue from its ``[N, ...]`` candidate features.

    Each chunk's batch also carries ``candidate_index`` (catalogue positions), so models
    that embed by position (sequential models) need no features at all.
    """
    model.eval()
    device = model.device
    parts = []
    for start in range(0, num_items, CHUNK):
        stop = min(start + CHUNK, num_items)
        batch = {k: v[start:stop].to(device) for k, v in features.items()}
        batch[CANDIDATE_INDEX] = torch.arange(start, stop, device=device)
        parts.append(model.candidate_embeddings(batch).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 1)


def build_index(kind: str, embeddings: Tensor, ids, *, metadata: dict | None = None, **params: Any) -> Index:
    """An index of ``kind`` (brute-force | hnsw | ivf | ivfpq) over the embeddings."""
    if kind == "brute-force":
        if params:
            raise TowerrecError(f"the brute-force index takes no options, got {sorted(params)}")
        return BruteForceIndex(embeddings.float().contiguous(), ids, metadata=metadata)
    if kind in ("hnsw", "ivf", "ivfpq"):
        return FaissIndex(embeddings, ids, variant=kind, metadata=metadata, **params)
    raise TowerrecError(f"index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")


def export_bundle(
    run_dir: str | Path | None = None,
    out: str | Path | None = None,
    *,
    model: RetrievalModel | None = None,
    item_ids: Sequence[Any] | None = None,
    candidate_features: Mapping[str, Tensor] | None = None,
    candidate_embeddings: Tensor | None = None,
    titles: Sequence[Any] | None = None,
    known_users: Mapping[str, Any] | None = None,
    item_counts: Tensor | Sequence[float] | None = None,
    name: str = "python",
    index: str = "brute-force",
    index_params: dict[str, Any] | None = None,
    data=None,
    overwrite: bool = False,
    ranker: Any = None,
    ranker_features=None,
    candidates: int = DEFAULT_CANDIDATES,
    rules: str | Path | BusinessRules | None = None,
    score: str = "ranker",
    retrieval_weight: float = 1.0,
) -> Path:
    """Write a serving bundle to ``out`` and check that it loads: from a run, or from a model built in Python.

    A run: ``export_bundle(run_dir, out)`` (a finished two-tower or sequential run; ``data``:
    its prepared data if already in memory, else prepared from its config).

    Retrieve-then-rank: ``export_bundle(run_dir, out, ranker=RANKER_RUN, candidates=300, rules="rules.toml")``
    adds the ranking stage (:mod:`towerrec.serve.ranking`): the bundle then retrieves ``candidates``
    items per request, scores them with the ranker, applies the rules and keeps the top ``k``.

    A Python model: ``export_bundle(model=model, out=out, item_ids=..., candidate_features=...)``:

    Args:
        model: any :class:`~towerrec.model.RetrievalModel` whose class is importable where the
            bundle is loaded (it is saved with :func:`towerrec.save`).
        item_ids: the catalogue's N item ids (all int or all str, unique), in catalogue order.
        candidate_features: ``{key: [N, ...]}`` the catalogue's candidate features;
            ``model.candidate_embeddings`` embeds them here (each batch also holds
            ``candidate_index``: positions). Or:
        candidate_embeddings: ``[N, d]`` precomputed candidate embeddings.
        titles: N display titles (default: the ids as text).
        known_users: users answered by id: ``{"ids": U user ids, "queries": {key: [U, ...]}`` (each
            user's query batch for ``model.query_embeddings``), optionally ``"seen": U lists of item
            ids`` (excluded from their answers)}.
        item_counts: ``[N]`` interactions per item, for the popular fallback (default: how many known
            users saw each item).
        name: what ``/healthz`` reports as the bundle's source.
        index: brute-force | hnsw | ivf | ivfpq.
        index_params: options of a FAISS index (see :class:`~towerrec.index.FaissIndex`).
        overwrite: replace an existing bundle at ``out`` (never another folder).
        ranker: a ranking run's directory (``[model] kind = "ranking"``) or a
            :class:`~towerrec.model.RankingModel` (with ``ranker_features``), trained on the retriever's
            catalogue; runs only.
        ranker_features: the :class:`~towerrec.features.FittedFeatures` a Python ranker reads.
        candidates: how many retrieved items the ranker scores per request (1..100,000; default 300).
        rules: a business-rules TOML file or :class:`~towerrec.rules.BusinessRules`, checked against the
            data's item and user tables now and again at load; needs ``ranker``.
        score, retrieval_weight: the final score: ``"ranker"`` (the ranking score) or ``"sum"``
            (standardised ranking score + ``retrieval_weight`` x standardised retrieval score;
            :func:`towerrec.pipeline.combine_scores`).
    Returns:
        ``out``.
    Raises:
        TypeError / ValueError: wrong arguments (a non-retrieval model, sizes that disagree,
            duplicate ids, non-finite embeddings, unknown seen items, a ranker that cannot score), named.
        TowerrecError: ``out`` exists, is not a bundle, the run cannot be exported, the ranker is not a
            ranking model or was trained on another catalogue, or a rule names an unknown column.
    """
    if out is None:
        raise TypeError("export_bundle needs out= (the bundle folder to write)")
    out = Path(out)
    index_params = dict(index_params or {})
    candidates = check_candidates_count(candidates)
    score, retrieval_weight = check_score(score, retrieval_weight)
    if rules is not None and ranker is None:
        raise TypeError("rules= go with ranker=: rules are applied to the ranked candidates")
    if model is not None:
        if run_dir is not None:
            raise TypeError("give a run_dir or a model=, not both")
        if ranker is not None:
            raise TypeError("ranker= goes with a run export (export_bundle(run_dir, out, ranker=...))")
        _check_out(out, overwrite, protect=[])
        return _export_model(model, out, item_ids, candidate_features, candidate_embeddings, titles, known_users,
                             item_counts, name, index, index_params)
    python_only = {"item_ids": item_ids, "candidate_features": candidate_features,
                   "candidate_embeddings": candidate_embeddings, "titles": titles, "known_users": known_users,
                   "item_counts": item_counts}
    given = [k for k, v in python_only.items() if v is not None]
    if given:
        raise TypeError(f"{', '.join(given)} go with model=; a run's bundle takes them from the run")
    if run_dir is None:
        raise TypeError("export_bundle needs a run_dir, or model= with item_ids= and candidate features or embeddings")
    from towerrec.runs import load_run

    run = load_run(run_dir)
    _check_out(out, overwrite, protect=[run.run_dir])
    embeddings = run_candidate_embeddings(run)
    if run.config.model.kind == "sequential":
        parts = _sequential_run_parts(run, data)
    else:
        parts = _two_tower_run_parts(run, data, embeddings)
    dataset = parts.pop("dataset")
    source = {"run": run.run_dir.name, "run_name": run.config.name, "config_hash": run.meta.get("config_hash"),
              "data_fingerprint": run.meta.get("data_fingerprint"), "model_kind": run.config.model.kind,
              "test_metrics": _test_metrics(run.run_dir)}
    ranking = None
    if ranker is not None:
        latest = dataset.interactions["timestamp"].max() if "timestamp" in dataset.interactions.columns else None
        ranking = ranker_parts(ranker, ranker_features, run.catalogue["item_id"].to_list(), parts["user_ids"],
                               int(latest) if latest is not None else 0)
        if rules is not None:
            rules = rules if isinstance(rules, BusinessRules) else BusinessRules.load(rules)
            tables = rule_tables(rules, *_rule_tables(parts["items"], parts["user_ids"], dataset))
    with _staged(out) as staging:
        shutil.copy(run.run_dir / "config.toml", staging / "config.toml")
        extra = {}
        if ranking is not None:
            extra["ranker"] = write_ranker(staging, ranking, candidates, score, retrieval_weight)
            if rules is not None:
                extra["rules"] = write_rules(staging, rules, *tables)
        _write(staging, run.model, embeddings, index=index, index_params=index_params, source=source,
               extra=extra, **parts)
    return out


def _rule_tables(items: pl.DataFrame, user_ids: pl.Series, dataset) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The item table (catalogue order) and user table (known-user order) rules are checked against and read."""
    table = items.select("item_id")
    if dataset.items is not None:
        table = table.join(dataset.items, on="item_id", how="left", maintain_order="left")
    for column in items.columns:  # the bundle's display columns, when the data has no item table
        if column not in table.columns:
            table = table.with_columns(items[column])
    users = user_ids.rename("user_id").to_frame()
    if dataset.users is not None:
        side = dataset.users
        if side.schema["user_id"] != users.schema["user_id"]:
            side = side.with_columns(pl.col("user_id").cast(users.schema["user_id"], strict=False))
        users = users.join(side, on="user_id", how="left", maintain_order="left")
    return table, users


def _check_out(out: Path, overwrite: bool, protect: list[Path]) -> None:
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise TowerrecError(f"{out}: already exists", hint="pass --overwrite (overwrite=True) or choose another --out")
    fsio.check_replaceable(out, MANIFEST, what="bundle", protect=protect)


# ------------------------------------------------------------------ runs
def _two_tower_run_parts(run, data, embeddings: Tensor) -> dict[str, Any]:
    if data is None:
        from towerrec.recommend import open_run_with_data

        _, data = open_run_with_data(run.run_dir)
    if data.dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the data given is not the data this run was trained on")
    if data.num_items != embeddings.shape[0]:
        raise TowerrecError(f"{run.run_dir}: the run's catalogue and its data disagree in size", hint="retrain the run")
    interactions = data.dataset.interactions
    latest = interactions["timestamp"].max() if "timestamp" in interactions.columns else None
    history_length = None if data.history is None else int(data.history.shape[1])
    builder = TwoTowerQueries(run.features, int(latest) if latest is not None else 0, history_length)
    user_ids = run.features._user_ids
    return {"builder": builder, "user_ids": user_ids, "user_queries": builder.known_users(user_ids, data.history),
            "seen": data.seen, "item_counts": data.item_counts, "items": _items_frame(run.catalogue, data.dataset),
            "item_aliases": item_aliases(data.dataset), "dataset": data.dataset}


def _sequential_run_parts(run, data) -> dict[str, Any]:
    from towerrec.recommend import run_user_indices
    from towerrec.train.sequence_data import timeline_events

    dataset = getattr(data, "dataset", None)
    if dataset is None:
        from towerrec.recommend import run_dataset

        dataset = run_dataset(run)
    if dataset.fingerprint != run.meta.get("data_fingerprint"):
        raise TowerrecError(f"{run.run_dir}: the data given is not the data this run was trained on",
                            hint="retrain the run on the current data")
    catalogue = run.catalogue
    item_ids = np.asarray(catalogue["item_id"].to_list())
    events = timeline_events(dataset, item_ids, run.config.sequence.min_rating).with_row_index("__row")
    timelines = (events.sort(["user_id", "timestamp", "__row"])
                 .group_by("user_id", maintain_order=True).agg(pl.col("__item")))
    users = timelines["user_id"]
    lists = [np.asarray(t, dtype=np.int64) for t in timelines["__item"].to_list()]
    builder = SequentialQueries(run.config.sequence.max_length)
    queries = builder.known_users(lists, run_user_indices(run, users.to_list()))
    counts = torch.as_tensor(catalogue["train_count"].to_numpy().copy(), dtype=torch.float32)
    return {"builder": builder, "user_ids": users, "user_queries": queries, "seen": CSR.from_lists(lists),
            "item_counts": counts, "items": _items_frame(catalogue, dataset), "item_aliases": item_aliases(dataset),
            "dataset": dataset}


# ------------------------------------------------------------ Python models
def _export_model(model, out: Path, item_ids, candidate_features, candidate_embeddings, titles, known_users,
                  item_counts, name: str, index: str, index_params: dict[str, Any]) -> Path:
    if not isinstance(model, RetrievalModel):
        raise TypeError(f"model must be a towerrec.RetrievalModel (query and candidate embeddings), "
                        f"got {type(model).__name__}")
    model.get_config()  # TypeError now, naming the arguments, if the model cannot be saved
    if item_ids is None:
        raise TypeError("export_bundle(model=...) needs item_ids= (the catalogue's item ids, in order)")
    ids = _id_list(item_ids, "item_ids")
    n = len(ids)
    if (candidate_features is None) == (candidate_embeddings is None):
        raise TypeError("give exactly one of candidate_features= ({key: [N, ...]} tensors the model embeds) "
                        "or candidate_embeddings= ([N, d])")
    if candidate_embeddings is not None:
        embeddings = torch.as_tensor(candidate_embeddings).detach().float().cpu()
        if embeddings.dim() != 2 or embeddings.shape[0] != n:
            raise ValueError(f"candidate_embeddings must be [N, d] with N = len(item_ids) = {n}, "
                             f"got {list(embeddings.shape)}")
    else:
        if not isinstance(candidate_features, Mapping):
            raise TypeError("candidate_features must be a dict of [N, ...] tensors")
        features = {}
        for key, value in candidate_features.items():
            tensor = torch.as_tensor(value)
            if tensor.dim() == 0 or tensor.shape[0] != n:
                raise ValueError(f"candidate_features[{key!r}] has {tensor.shape[0] if tensor.dim() else 0} rows, "
                                 f"item_ids has {n}")
            features[key] = tensor
        try:
            embeddings = embed_candidates(model, features, n)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"model.candidate_embeddings failed on candidate_features {sorted(features)} "
                             f"({type(exc).__name__}: {first_line(exc)})") from None
        if embeddings.dim() != 2 or embeddings.shape[0] != n:
            raise ValueError(f"model.candidate_embeddings gave {list(embeddings.shape)}, expected [{n}, d]")
    if not torch.isfinite(embeddings).all():
        bad = int((~torch.isfinite(embeddings)).any(1).nonzero()[0])
        raise ValueError(f"candidate embeddings are not finite (NaN or infinity), e.g. item {ids[bad]!r}")
    if titles is not None:
        titles = list(titles)
        if len(titles) != n:
            raise ValueError(f"titles has {len(titles)} entries, item_ids has {n}")
    position = {v: p for p, v in enumerate(ids)}
    user_ids, user_queries, seen = _known_users(known_users, position, model, int(embeddings.shape[1]))
    counts = _item_counts(item_counts, seen, n)
    if _is_sequential(model):
        length = int(model.get_config().get("max_length", 0) or 0)
        if "history" in user_queries:
            length = int(user_queries["history"].shape[1])
        builder: QueryBuilder = SequentialQueries(length)
    else:
        builder = TensorQueries.like(user_queries)
    items = pl.DataFrame({"item_id": _series(ids),
                          "title": pl.Series([str(v) for v in (titles if titles is not None else ids)],
                                             dtype=pl.String)})
    source = {"run": name, "model_kind": type(model).__name__}
    with _staged(out) as staging:
        _write(staging, model, embeddings, builder=builder, user_ids=_series(user_ids), user_queries=user_queries,
               seen=seen, item_counts=counts, items=items, item_aliases={}, index=index, index_params=index_params,
               source=source)
    return out


def _is_sequential(model) -> bool:
    from towerrec.models.sequential import SequentialModel

    return isinstance(model, SequentialModel)


@torch.no_grad()
def _known_users(known_users, position: dict, model, dim: int) -> tuple[list, dict[str, Tensor], CSR]:
    """(ids, {key: [U, ...]}, seen CSR of positions) of ``known_users``, checked; the model embeds a few."""
    if known_users is None:
        return [], {}, CSR.from_lists([])
    if not isinstance(known_users, Mapping) or "ids" not in known_users or "queries" not in known_users:
        raise TypeError('known_users must be {"ids": [...], "queries": {key: [U, ...]}, "seen": [[item id, ...]]}')
    unknown_keys = sorted(set(known_users) - {"ids", "queries", "seen"})
    if unknown_keys:
        raise TypeError(f"known_users takes ids, queries and seen; got {unknown_keys}")
    ids = _id_list(known_users["ids"], "known_users['ids']")
    count = len(ids)
    if not isinstance(known_users["queries"], Mapping) or not known_users["queries"]:
        raise TypeError("known_users['queries'] must be a non-empty dict {key: [U, ...] tensor}")
    queries = {}
    for key, value in known_users["queries"].items():
        tensor = torch.as_tensor(value).detach().cpu().contiguous()
        if tensor.dim() == 0 or tensor.shape[0] != count:
            raise ValueError(f"known_users['queries'][{key!r}] has {tensor.shape[0] if tensor.dim() else 0} rows, "
                             f"known_users['ids'] has {count}")
        queries[key] = tensor
    seen_ids = known_users.get("seen")
    if seen_ids is None:
        seen = CSR.from_lists([[] for _ in range(count)])
    else:
        seen_ids = list(seen_ids)
        if len(seen_ids) != count:
            raise ValueError(f"known_users['seen'] has {len(seen_ids)} lists, known_users['ids'] has {count}")
        lists = []
        for user, items in zip(ids, seen_ids):
            items = items.tolist() if isinstance(items, (np.ndarray, Tensor)) else list(items)
            missing = [i for i in items if i not in position]
            if missing:
                raise ValueError(f"known_users['seen'] of user {user!r} lists item id(s) {missing[:5]} "
                                 "that are not in item_ids")
            lists.append(sorted({position[i] for i in items}))
        seen = CSR.from_lists(lists)
    sample = {k: v[:8].to(model.device) for k, v in queries.items()}
    model.eval()
    try:
        embedded = model.query_embeddings(sample)
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"model.query_embeddings failed on known_users['queries'] {sorted(queries)} "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
    if embedded.dim() != 2 or embedded.shape[1] != dim:
        raise ValueError(f"model.query_embeddings gave {list(embedded.shape)}; candidate embeddings have {dim} dims")
    return ids, queries, seen


def _item_counts(item_counts, seen: CSR, n: int) -> Tensor:
    if item_counts is None:
        return torch.bincount(seen.indices, minlength=n).float()
    counts = torch.as_tensor(item_counts, dtype=torch.float32).detach().cpu()
    if counts.shape != (n,) or not torch.isfinite(counts).all() or bool((counts < 0).any()):
        raise ValueError(f"item_counts must be [N] = [{n}] finite non-negative counts, got shape {list(counts.shape)}")
    return counts


def _id_list(values, name: str) -> list:
    """Ids as a list of Python ints or strs (all of one kind, unique, at least one for items)."""
    values = values.tolist() if isinstance(values, (np.ndarray, Tensor, pl.Series)) else list(values)
    if all(isinstance(v, str) for v in values):
        pass
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        values = [int(v) for v in values]
    else:
        raise ValueError(f"{name} must be all integers or all strings")
    if name == "item_ids" and not values:
        raise ValueError("item_ids is empty: a bundle needs a catalogue")
    if len(set(values)) != len(values):
        seen: set = set()
        duplicate = next(v for v in values if v in seen or seen.add(v))
        raise ValueError(f"{name} must be unique; {duplicate!r} appears more than once")
    return values


def _series(ids: list) -> pl.Series:
    return pl.Series("user_id", ids, dtype=pl.String if ids and isinstance(ids[0], str) else pl.Int64)


# ------------------------------------------------------------------ writing
def _write(staging: Path, model, embeddings: Tensor, *, builder: QueryBuilder, user_ids: pl.Series,
           user_queries: dict[str, Tensor], seen: CSR, item_counts: Tensor, items: pl.DataFrame,
           item_aliases: dict[str, Any], index: str, index_params: dict[str, Any], source: dict[str, Any],
           extra: dict[str, Any] | None = None) -> None:
    """Every bundle file but config.toml (and the ranking stage's), and bundle.json with ``extra`` entries
    (checksums are added by :func:`_staged`)."""
    from towerrec.saving import write_model_files
    from towerrec.train.checkpoint import save_json

    embeddings = embeddings.float().contiguous()
    started = time.perf_counter()
    built = build_index(index, embeddings, items["item_id"].to_list(), metadata={"run": source["run"]},
                        **index_params)
    built.save(staging / "index")
    index_seconds = time.perf_counter() - started
    write_model_files(model, staging / MODEL_FOLDER)
    builder.save(staging)
    save_file({"embeddings": embeddings, "item_counts": item_counts.float().contiguous()},
              str(staging / "candidates.safetensors"))
    users = {"seen_indptr": seen.indptr.contiguous(), "seen_indices": seen.indices.contiguous()}
    users.update({QUERY_PREFIX + k: v.detach().cpu().contiguous() for k, v in user_queries.items()})
    save_file(users, str(staging / "users.safetensors"))
    user_ids.rename("user_id").to_frame().write_parquet(staging / "users.parquet")
    items.write_parquet(staging / "items.parquet")
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": "towerrec-bundle",
        "towerrec_version": __version__,
        **source,
        **builder.facts(),
        "model_class": json.loads((staging / MODEL_FOLDER / "model.json").read_text())["class"],
        "dim": int(embeddings.shape[1]),
        "num_items": int(embeddings.shape[0]),
        "num_users": seen.num_rows,
        "user_id_type": "int" if user_ids.dtype.is_integer() else "str",
        "item_id_type": "int" if items.schema["item_id"].is_integer() else "str",
        "index": {"kind": built.kind, "variant": getattr(built, "variant", None),
                  "build_seconds": round(index_seconds, 3)},
        "item_aliases": item_aliases,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    save_json(manifest, staging / MANIFEST)


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A marked scratch folder beside ``out``, swapped in only if the body succeeds and the bundle loads.

    The body writes the bundle's files and ``bundle.json``; this adds the SHA-256 of
    every file to the manifest, loads the result (refusing to publish a bundle that
    does not load), then replaces ``out`` by rename (:func:`towerrec.fsio.replace_dir`:
    only a towerrec bundle is ever replaced, and the old one stays whole until the new
    one is in place). Two exports to one folder are serialised by a file lock.
    """
    with fsio.replacing(out, MANIFEST, what="bundle") as staging:
        with fsio.io_errors(staging):
            yield staging
        seal_bundle(staging)
        load_bundle(staging)


def seal_bundle(folder: Path) -> None:
    """Record the SHA-256 of every file of the bundle in ``folder`` in its ``bundle.json``."""
    from towerrec.train.checkpoint import load_json, save_json

    manifest = load_json(folder / MANIFEST)
    manifest["checksums"] = fsio.checksums(folder, bundle_files(folder))
    save_json(manifest, folder / MANIFEST)


def write_index(index: Index, folder: Path) -> Path:
    """Save ``index`` to ``folder`` atomically, replacing only an index folder towerrec wrote.

    Raises:
        TowerrecError: ``folder`` holds anything but a towerrec index, or is not writable.
    """
    from towerrec.index.base import MANIFEST as INDEX_MANIFEST

    folder = Path(folder)
    fsio.check_replaceable(folder, INDEX_MANIFEST, what="index")
    with fsio.replacing(folder, INDEX_MANIFEST, what="index") as staging:
        index.save(staging)
    return folder


def _items_frame(catalogue: pl.DataFrame, dataset) -> pl.DataFrame:
    frame = catalogue.select("item_id", "title")
    items = dataset.items
    if items is not None:
        extra = [c for c in ITEM_COLUMNS if c in items.columns and c not in frame.columns]
        if extra:
            frame = frame.join(items.select("item_id", *extra), on="item_id", how="left", maintain_order="left")
    return frame


def _test_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return metrics.get("test", {}).get("seen_excluded", {})
    except (OSError, ValueError, AttributeError):
        return {}
