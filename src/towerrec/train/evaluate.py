"""Full-catalogue evaluation of any retrieval model, under both protocols, in one scoring pass.

The same code evaluates two-tower models and baselines on prepared data
(:class:`~towerrec.train.prepared.PreparedData`) and sequential models on sequence
data (:class:`~towerrec.train.sequence_data.SequenceData`): a split's examples give
query batches (``select``), the data gives the catalogue's candidate features
(``catalogue``) and each example's known items (``known_items``).

``seen_excluded`` removes each user's known items from the ranking (what a user
experiences); ``tfrs`` is the TFRS tutorials' protocol, where a model that
memorises train items wastes its top slots on them. Both come from the same
score chunks (queries are scored once), and memory is bounded by one chunk of
scores: query embeddings and exclusions are built per chunk, never for all
queries at once. Tied scores never count for the target
(:class:`towerrec.metrics.topk.TargetRanks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from towerrec.config import RankingConfig, ranking_metric_names
from towerrec.devices import resolve_device
from towerrec.metrics.ranking import auc, list_metrics, mae, rmse
from towerrec.metrics.topk import (
    DEFAULT_KS,
    SCORE_BUDGET,
    Ties,
    rank_targets,
    summarize,
)
from towerrec.models.baselines import EASEModel
from towerrec.model import CANDIDATE_INDEX
from towerrec.train.models import EVAL_CHUNK, catalogue_embeddings, query_embeddings
from towerrec.train.prepared import EncodedExamples, PreparedData, ranking_labels
from towerrec.train.sequence_data import SequenceData, SequenceExamples

Data = PreparedData | SequenceData
Examples = EncodedExamples | SequenceExamples
PROTOCOLS = ("seen_excluded", "tfrs")


@torch.no_grad()
def evaluate_protocols(
    model: nn.Module,
    data: Data,
    examples: Examples,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    protocols: Sequence[str] = PROTOCOLS,
    ties: Ties = "random",
    score_budget: int = SCORE_BUDGET,
) -> dict[str, dict[str, float]]:
    """Metrics of one split under each protocol (``"seen_excluded"``, ``"tfrs"``).

    Args:
        model: a two-tower, sequential or baseline model.
        data: the prepared (or sequence) data the model was trained on.
        examples: the split to evaluate (``data.test`` or ``data.validation``).
        ks: cut-offs; K at or above the catalogue size gives top-K accuracy 1.
        protocols: which protocols to compute, from :data:`PROTOCOLS`.
        ties: ``"random"`` (expected metrics under a random order of tied items) or ``"pessimistic"``.
        score_budget: most scores held at once (rows of a chunk * catalogue size).
    Returns:
        protocol -> ``top_{k}_accuracy``, ``ndcg@{k}``, ``mrr``.
    """
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; valid: {list(PROTOCOLS)}")
    known = data.known_items(examples)
    ranks = rank_targets(
        scorer(model, data, examples, known),
        examples.targets,
        data.num_items,
        protocols={name: known if name == "seen_excluded" else None for name in protocols},
        score_budget=score_budget,
    )
    return {name: summarize(ranks[name], ks, ties=ties) for name in protocols}


def scorer(model: nn.Module, data: Data, examples: Examples, known):
    """``scores(start, stop)`` -> [stop - start, N] scores of those examples against the catalogue.

    EASE scores a query as the sum of B's rows over the user's known items (a
    sparse product, never a dense [Q, N] history); embedding models embed the
    chunk's queries and multiply by the catalogue embeddings computed once.
    """
    if isinstance(model, EASEModel):
        return lambda start, stop: model.score_histories(known(start, stop))
    candidates_t = catalogue_embeddings(model, data.catalogue, data.num_items).T.contiguous()

    def scores(start: int, stop: int) -> Tensor:
        return query_embeddings(model, examples, slice(start, stop)) @ candidates_t

    return scores


def evaluate_examples(
    model: nn.Module,
    data: Data,
    examples: Examples,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_seen: bool = True,
    ties: Ties = "random",
) -> dict[str, float]:
    """Metrics of one split under one protocol (see :func:`evaluate_protocols`)."""
    protocol = "seen_excluded" if exclude_seen else "tfrs"
    return evaluate_protocols(model, data, examples, ks=ks, protocols=(protocol,), ties=ties)[protocol]


def evaluate_both_protocols(
    model: nn.Module, data: Data, examples: Examples, ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """``{"seen_excluded": ..., "tfrs": ...}`` metrics for one split, from one scoring pass."""
    return evaluate_protocols(model, data, examples, ks=ks)


def popularity_metrics(
    data: Data,
    examples: Examples,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_seen: bool = True,
    ties: Ties = "random",
) -> dict[str, float]:
    """The popularity baseline (``data.item_counts``: training events per item) under one protocol,
    without building a model (the W3 benchmark's popularity rows)."""
    counts = data.item_counts.float()

    def scores(start: int, stop: int) -> Tensor:
        return counts.expand(stop - start, -1).clone()

    protocol = "seen_excluded" if exclude_seen else "tfrs"
    known = data.known_items(examples)
    ranks = rank_targets(scores, examples.targets, data.num_items,
                         protocols={protocol: known if exclude_seen else None})
    return summarize(ranks[protocol], ks, ties=ties)


@torch.no_grad()
def ranking_scores(model: nn.Module, data: PreparedData, examples: EncodedExamples) -> Tensor:
    """``[n]`` scores (on the CPU) of a ranking model for each example's (query, target item) pair, in chunks
    (eval mode; a model without a catalogue is given ``data.catalogue`` first)."""
    if hasattr(model, "set_catalogue") and not getattr(model, "has_catalogue", True):
        model.set_catalogue(data.catalogue, data.item_counts)
    model.eval()
    device = resolve_device(None, model)
    parts = []
    for start in range(0, len(examples), EVAL_CHUNK):
        rows = slice(start, min(start + EVAL_CHUNK, len(examples)))
        batch = {**examples.select(rows), CANDIDATE_INDEX: examples.targets[rows]}
        parts.append(model.score({k: v.to(device) for k, v in batch.items()}).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def evaluate_ranking(model: nn.Module, data: PreparedData, examples: EncodedExamples,
                     settings: RankingConfig) -> dict[str, float]:
    """Ranking metrics of one split: each example's (user, rated item) pair is scored once.

    ``rmse`` / ``mae`` of the scores against the ratings (rating regression: ``label = "rating"``,
    ``loss = "mse"``); ``auc`` of the scores separating items rated >= ``threshold`` from the rest (with
    ``label = "binary"``: label 1 from label 0); ``ndcg@K`` (``settings.ks``) and ``mrr`` over each user's
    items of the split, graded by their ratings (or labels where there are none), from
    :mod:`towerrec.metrics.ranking`. A metric that is undefined on the split (AUC with one class) is NaN.
    """
    return ranking_metrics(ranking_scores(model, data, examples), examples, settings)


def ranking_metrics(scores: Tensor, examples: EncodedExamples, settings: RankingConfig) -> dict[str, float]:
    """:func:`evaluate_ranking`'s metrics of given ``[n]`` scores, one per example of the split (a model's or a
    baseline's)."""
    ratings = examples.ratings if examples.ratings is not None else torch.full((len(examples),), float("nan"))
    labels = ranking_labels(settings, ratings)
    names = ranking_metric_names(settings)
    metrics: dict[str, float] = {}
    if "rmse" in names:
        metrics["rmse"] = float(rmse(scores, labels))
        metrics["mae"] = float(mae(scores, labels))
    positive = labels >= 0.5 if settings.label == "binary" else ratings >= settings.threshold
    metrics["auc"] = float(auc(scores, positive.float())) if 0 < int(positive.sum()) < len(positive) else float("nan")
    graded = torch.where(torch.isnan(ratings), labels, ratings)
    groups = examples.user_groups if examples.user_groups is not None else examples.user_rows
    try:
        metrics.update({k: float(v) for k, v in list_metrics(scores, graded, groups, ks=settings.ks).items()})
    except ValueError:  # no user has a positive label on this split: NDCG and MRR are undefined
        metrics.update({name: float("nan") for name in names if name == "mrr" or name.startswith("ndcg@")})
    return metrics


def rating_baseline_scores(data: PreparedData, examples: EncodedExamples) -> dict[str, Tensor]:
    """``{"global_mean": [n], "item_mean": [n]}`` predicted ratings of the split's examples: the mean train
    rating, and each target item's mean train rating (unshrunk; the global mean for an item without train
    ratings). Train examples without a rating (NaN) are left out. Empty when train has no ratings."""
    train = data.train
    if train.ratings is None or not bool((~torch.isnan(train.ratings)).any()):
        return {}
    rated = ~torch.isnan(train.ratings)
    ratings = train.ratings[rated].double()
    items = train.targets[rated]
    mean = float(ratings.mean())
    sums = torch.zeros(data.num_items, dtype=torch.float64).index_add_(0, items, ratings)
    counts = torch.zeros(data.num_items, dtype=torch.float64).index_add_(0, items, torch.ones_like(ratings))
    item_means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.tensor(mean, dtype=torch.float64))
    return {"global_mean": torch.full((len(examples),), mean, dtype=torch.float64).float(),
            "item_mean": item_means[examples.targets].float()}


def ranking_baselines(data: PreparedData, examples: EncodedExamples,
                      settings: RankingConfig) -> dict[str, dict[str, float]]:
    """The project's baselines beside a rating model: ``{"global_mean": metrics, "item_mean": metrics}`` of
    :func:`rating_baseline_scores` on the split, by :func:`ranking_metrics` (a constant's NDCG and MRR are the
    tie-aware expectations; the item mean ranks each user's items by their mean rating). Only for rating
    regression (``label = "rating"``, ``loss = "mse"``); otherwise, or without train ratings, ``{}``."""
    if settings.label != "rating" or settings.loss != "mse":
        return {}
    return {name: ranking_metrics(scores, examples, settings)
            for name, scores in rating_baseline_scores(data, examples).items()}
