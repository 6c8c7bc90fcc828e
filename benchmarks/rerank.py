"""Retrieve-then-rank on the W1 split (issue 15, item 6): the final top-10 of retrieval alone vs the
retrieval -> ranking (-> business rules) pipeline, seen items excluded.

Protocol. MovieLens-100K, tfrs-random 80/20 split, seed 42 (configs/w1_default.toml's data settings).
Retriever: configs/w1_default.toml (towerrec's best two-tower model). Ranker: chosen ON VALIDATION, never
on test: with ``--select`` every ranker variant of :data:`VARIANTS` and every final-score mode of
:data:`MODES` is trained / evaluated with the last 10% (of all ratings) of the train portion held out as
validation (the retriever too); the best validation NDCG@10 is committed as
configs/rerank_ranker_ml100k.toml (+ the mode, :data:`CHOSEN`). The default run then trains the retriever
and that ranker on the whole 80% train portion and reports test figures once.

Metrics, per user with at least one held-out item rated >= 4 (and known in train), over the final list
of K = 10 (each user's train items excluded; ``candidates`` = 300 retrieved):

- ``ndcg@10``: graded by the held-out rating r of each held-out item (gain 2^r - 1, log2 discount,
  TF-Ranking's default); ideal DCG from ALL the user's held-out items (not only the retrieved ones).
- ``ndcg@10_liked``: binary relevance, an item rated >= 4.
- ``hits@10``: held-out items rated >= 4 in the list (mean count per user); ``recall@10``: those hits
  over min(10, the user's held-out items rated >= 4).

Usage::

    python benchmarks/rerank.py [--data-root ../shared/datasets] [--runs runs-bench]      # test figures
    python benchmarks/rerank.py --select                                                  # validation grid
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, REPO, machine, machine_line, write_results  # noqa: E402

from towerrec.config import RunConfig, config_from_dict, load_config  # noqa: E402
from towerrec.pipeline import RetrieveThenRank, combine_scores, ranking_scores  # noqa: E402
from towerrec.recommend import user_examples  # noqa: E402
from towerrec.rules import BusinessRules  # noqa: E402
from towerrec.runs import train_run  # noqa: E402
from towerrec.train.prepared import PreparedData  # noqa: E402

RETRIEVER = REPO / "configs" / "w1_default.toml"
RANKER = REPO / "configs" / "rerank_ranker_ml100k.toml"
RULES = REPO / "configs" / "rules" / "ml100k_family.toml"
VALIDATION_FRACTION = 0.1
CANDIDATES = 300
K = 10
LIKED = 4.0

#: Ranker variants tried on validation: overrides laid over configs/rerank_ranker_ml100k.toml.
VARIANTS: dict[str, dict[str, Any]] = {
    "rating-mse": {"ranking": {"label": "rating", "loss": "mse", "negatives": 0}},
    "liked-bce-4neg": {"ranking": {"label": "binary", "loss": "bce", "threshold": 4.0, "negatives": 4}},
}
#: Final-score modes tried on validation: (score, retrieval_weight).
MODES: list[tuple[str, float]] = [("ranker", 0.0), ("sum", 0.5), ("sum", 1.0), ("sum", 2.0)]
#: What --select chose (validation NDCG@10), used for the test figures.
CHOSEN = {"variant": "liked-bce-4neg", "score": "sum", "retrieval_weight": 2.0}


def merged(config: RunConfig, overrides: dict[str, Any], name: str) -> RunConfig:
    """``config`` with ``overrides`` (section -> keys) laid over it, renamed."""
    values = copy.deepcopy(config.to_dict())
    for section, keys in overrides.items():
        values.setdefault(section, {}).update(keys)
    values["name"] = name
    return config_from_dict(values)


def with_validation(config: RunConfig) -> RunConfig:
    return merged(config, {"data": {"validation_fraction": VALIDATION_FRACTION}}, config.name + "-val")


def train(config: RunConfig, args) -> tuple[Any, PreparedData, float]:
    config = merged(config, {"data": {"data_dir": str(args.data_root)}}, config.name)
    started = time.perf_counter()
    result = train_run(config, runs_root=args.runs, progress=False, log=lambda m: print("  " + m))
    from towerrec.runs import load_run

    run = load_run(result.run_dir)
    data = result.data
    return run, data, time.perf_counter() - started


def heldout(data: PreparedData, part: pl.DataFrame) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Evaluated users' train rows and their held-out (catalogue positions, ratings)."""
    frame = part.select("user_id", "item_id", "rating").group_by("user_id", maintain_order=True).agg("item_id", "rating")
    rows = data.features.user_index(frame["user_id"].to_numpy())
    keep, items, ratings = [], [], []
    for row, ids, rated in zip(rows.tolist(), frame["item_id"].to_list(), frame["rating"].to_list()):
        rated = np.asarray(rated, dtype=np.float64)
        if row < 0 or not (rated >= LIKED).any():
            continue
        keep.append(row)
        items.append(data.features.item_index(np.asarray(ids)))
        ratings.append(rated)
    return np.asarray(keep, dtype=np.int64), items, ratings


def quality(lists: np.ndarray, items: list[np.ndarray], ratings: list[np.ndarray]) -> dict[str, float]:
    """Mean NDCG@K (graded, and binary on liked items), hits@K and recall@K of ``[users, K]`` position lists."""
    discount = 1.0 / np.log2(np.arange(2, K + 2))
    graded, liked_ndcg, hits, recall = [], [], [], []
    for row, (positions, rated) in enumerate(zip(items, ratings)):
        rating_of = dict(zip(positions.tolist(), rated.tolist()))
        chosen = [p for p in lists[row].tolist() if p >= 0]
        gains = np.array([2.0 ** rating_of.get(p, 0.0) - 1.0 for p in chosen])
        ideal = np.sort(2.0 ** rated - 1.0)[::-1][:K]
        graded.append(float((gains * discount[: len(gains)]).sum() / (ideal * discount[: len(ideal)]).sum()))
        liked = {p for p, r in rating_of.items() if r >= LIKED}
        binary = np.array([1.0 if p in liked else 0.0 for p in chosen])
        ideal_binary = discount[: min(K, len(liked))].sum()
        liked_ndcg.append(float((binary * discount[: len(binary)]).sum() / ideal_binary))
        hits.append(float(binary.sum()))
        recall.append(float(binary.sum() / min(K, len(liked))))
    return {"ndcg@10": float(np.mean(graded)), "ndcg@10_liked": float(np.mean(liked_ndcg)),
            "hits@10": float(np.mean(hits)), "recall@10": float(np.mean(recall)), "users": len(items)}


def top_k(final: np.ndarray, valid: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.broadcast_to(np.arange(final.shape[1]), final.shape), -final, ~valid), axis=1)[:, :K]
    return np.where(np.take_along_axis(valid, order, axis=1), order, -1)


def evaluate(retrieval_run, data: PreparedData, ranker_runs: dict[str, tuple[Any, PreparedData]],
             part: pl.DataFrame, modes: list[tuple[str, float]], rules: BusinessRules | None = None) -> dict[str, Any]:
    """Figures of retrieval alone and of every (ranker, mode) on the held-out ``part``."""
    rows, items, ratings = heldout(data, part)
    out: dict[str, Any] = {}
    first = next(iter(ranker_runs.values()))
    pipeline = RetrieveThenRank(retrieval_run.model, first[0].model, data, ranker_data=first[1],
                                candidates=CANDIDATES)
    started = time.perf_counter()
    candidates, retrieved = pipeline.retrieve(rows)
    retrieve_s = time.perf_counter() - started
    valid = candidates >= 0
    lists = np.where(valid[:, :K], candidates[:, :K], -1)
    out["retrieval"] = {**quality(lists, items, ratings), "seconds": round(retrieve_s, 2)}
    compiled = None if rules is None else rules.compile(data.dataset.items, data.dataset.users,
                                                        catalogue_ids=data.catalogue_ids)
    for name, (run, ranker_data) in ranker_runs.items():
        RetrieveThenRank(retrieval_run.model, run.model, data, ranker_data=ranker_data)  # catalogue check, set_catalogue
        started = time.perf_counter()
        ranker_rows = ranker_data.features.user_index(data.features.user_ids[rows])
        queries = user_examples(ranker_data, ranker_rows).select(slice(None))
        ranked = ranking_scores(run.model, queries, candidates)
        score_s = time.perf_counter() - started
        for score, weight in modes:
            final = combine_scores(retrieved, ranked, valid, score, weight)
            picked = top_k(final, valid)
            label = f"{name} / {score}" + (f" w={weight:g}" if score == "sum" else "")
            out[label] = {**quality(np.where(picked >= 0, np.take_along_axis(candidates, np.maximum(picked, 0), 1), -1),
                                    items, ratings), "rank_seconds": round(score_s, 2)}
            if compiled is not None:
                matches = compiled.user_matches(data.features.user_ids[rows].tolist())
                chosen = compiled.select_batch(candidates, final, K, matches)
                positions = np.where(chosen >= 0, np.take_along_axis(candidates, np.maximum(chosen, 0), 1), -1)
                out[label + " + rules"] = quality(positions, items, ratings)
    return out


def table(rows: dict[str, dict[str, float]], title: str) -> str:
    lines = [f"### {title}", "", "| lists | NDCG@10 (graded) | NDCG@10 (rated >= 4) | hits@10 (rated >= 4) | recall@10 |",
             "|---|---:|---:|---:|---:|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['ndcg@10_liked']:.4f} | {m['hits@10']:.3f} | "
                     f"{m['recall@10']:.4f} |")
    return "\n".join(lines)


def select(args) -> None:
    base = load_config(RANKER)
    retriever, data, seconds = train(with_validation(load_config(RETRIEVER)), args)
    print(f"retriever trained/reused in {seconds:.0f} s")
    rankers = {}
    for name, overrides in VARIANTS.items():
        run, ranker_data, seconds = train(with_validation(merged(base, overrides, f"rerank-{name}")), args)
        print(f"ranker {name} trained/reused in {seconds:.0f} s")
        rankers[name] = (run, ranker_data)
    figures = evaluate(retriever, data, rankers, data.split.validation, MODES)
    best = max((k for k in figures if k != "retrieval"), key=lambda k: figures[k]["ndcg@10"])
    payload = {"protocol": "validation: the last 10% of all ratings of the W1 train portion; models trained on the rest",
               "candidates": CANDIDATES, "k": K, "variants": VARIANTS, "modes": MODES, "figures": figures,
               "best": best, "machine": machine()}
    markdown = "\n".join([
        "# Retrieve-then-rank: ranker and score-mode selection on VALIDATION (W1 train portion)", "",
        machine_line(payload["machine"]), "",
        f"Retriever configs/w1_default.toml and each ranker trained on the W1 train portion minus its last "
        f"{VALIDATION_FRACTION:.0%} (of all ratings), which is the validation set; {CANDIDATES} candidates, "
        f"top {K}, train items excluded. Users with a validation item rated >= 4: {figures['retrieval']['users']}.", "",
        table(figures, "validation"), "", f"Best by validation NDCG@10 (graded): **{best}**.", ""])
    write_results("rerank_selection", payload, markdown)


def final(args) -> None:
    variant = CHOSEN["variant"]
    retriever, data, retriever_s = train(load_config(RETRIEVER), args)
    ranker, ranker_data, ranker_s = train(load_config(RANKER), args)
    modes = [(CHOSEN["score"], CHOSEN["retrieval_weight"])]
    if CHOSEN["score"] != "ranker":
        modes.insert(0, ("ranker", 0.0))
    figures = evaluate(retriever, data, {variant: (ranker, ranker_data)}, data.split.test, modes,
                       rules=BusinessRules.load(RULES))
    chosen = f"{variant} / {CHOSEN['score']}" + (f" w={CHOSEN['retrieval_weight']:g}" if CHOSEN["score"] == "sum" else "")
    gain = figures[chosen]["ndcg@10"] - figures["retrieval"]["ndcg@10"]
    payload = {"protocol": "W1 split (tfrs-random 80/20, seed 42), test; ranker + mode chosen on validation "
                           "(rerank_selection.json)", "candidates": CANDIDATES, "k": K, "chosen": CHOSEN,
               "retriever": str(RETRIEVER.relative_to(REPO)), "ranker": str(RANKER.relative_to(REPO)),
               "figures": figures, "ndcg@10_gain": gain, "machine": machine()}
    markdown = "\n".join([
        "# Retrieve-then-rank on the W1 split (test)", "", machine_line(payload["machine"]), "",
        f"Retriever configs/w1_default.toml, ranker configs/rerank_ranker_ml100k.toml ({variant}), both trained "
        f"on the 80% train portion; {CANDIDATES} candidates per user, final top {K}, train items excluded; users "
        f"with a test item rated >= 4: {figures['retrieval']['users']}. The ranker and the final score "
        f"({CHOSEN['score']}" + (f", retrieval weight {CHOSEN['retrieval_weight']:g}" if CHOSEN["score"] == "sum" else "")
        + ") were chosen on validation (rerank_selection.md), not on test. '+ rules': "
        "configs/rules/ml100k_family.toml applied before the cut.", "",
        table(figures, "test"), "",
        f"Retrieve-then-rank vs retrieval alone, NDCG@10 (graded): {gain:+.4f} "
        f"({'raised' if gain > 0 else 'NOT raised'}).", ""])
    write_results("rerank", payload, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=Path, default=REPO / "runs-bench")
    parser.add_argument("--select", action="store_true", help="run the validation grid instead of the test figures")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    (select if args.select else final)(args)


if __name__ == "__main__":
    main()
