"""Retrieve-then-rank: a retrieval model proposes candidates, a ranking model orders them, business rules
filter them, the list is cut to ``k``.

The stages (each result keeps both stages' scores):

1. **retrieval**: the retriever's query embedding against the whole catalogue (exact dot product,
   :class:`~towerrec.index.BruteForceIndex`), the user's train items and ``exclude_ids`` excluded,
   the best ``candidates`` (default 300) kept;
2. **ranking**: :meth:`RankingModel.score <towerrec.model.RankingModel.score>` over the
   ``[users, candidates]`` ``candidate_index`` batch with the ranker's own query features;
3. **final score**: ``score="ranker"`` orders by the ranking score; ``score="sum"`` by
   ``z(ranking) + retrieval_weight * z(retrieval)``, each score standardised over the user's
   candidates (mean 0, standard deviation 1), so that a rating, a logit and a cosine / temperature
   score can be added whatever their scales (a rating-only ranker tends to push obscure films rated
   highly by the few who saw them; the retrieval score carries how likely the user is to pick the film);
4. **rules** (:mod:`towerrec.rules`) and the top-``k`` cut.

:class:`RetrieveThenRank` runs all of it for many users at once (evaluation, the CLI);
:func:`rerank` is the stage 2-4 core on candidates already retrieved (what a bundle calls).
A ranker trained on another catalogue than the retriever is refused (its candidate indices would
name other items).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from towerrec.devices import resolve_device
from towerrec.errors import TowerrecError, listing, shorten
from towerrec.index.brute_force import BruteForceIndex
from towerrec.model import CANDIDATE_INDEX, RankingModel, RetrievalModel
from towerrec.recommend import known_user_rows, open_run_with_data, user_examples
from towerrec.rules import BusinessRules, CompiledRules
from towerrec.train.models import catalogue_embeddings, query_embeddings
from towerrec.train.prepared import PreparedData

#: How the final order is computed from the two stages' scores (see the module docstring).
SCORE_MODES = ("ranker", "sum")
#: (user, candidate) pairs the ranker scores per call.
SCORE_CHUNK = 65_536


@dataclass
class RankedItem:
    """One item of a final list.

    ``score``: what the list is ordered by (the ranking score, or the standardised sum);
    ``retrieval_score``: the retriever's dot product; ``ranking_score``: the ranker's prediction (a
    rating, a logit...); ``retrieval_rank``: its 1-based place among the retrieved candidates.
    """

    item_id: Any
    title: str
    score: float
    retrieval_score: float
    ranking_score: float
    retrieval_rank: int


@dataclass
class RankedLists:
    """The final lists of a batch of users, all ``[users, k]`` (``-1`` / NaN past a row's ``counts``).

    ``items``: catalogue positions; ``candidates``: indices into the retrieved candidates (their
    retrieval rank - 1); ``scores``: final scores; ``retrieval_scores`` / ``ranking_scores``: each stage's.
    """

    items: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    retrieval_scores: np.ndarray
    ranking_scores: np.ndarray
    counts: np.ndarray


def check_same_catalogue(retriever_ids: Sequence[Any] | np.ndarray, ranker_ids: Sequence[Any] | np.ndarray, *,
                         retriever: str = "the retriever", ranker: str = "the ranker") -> None:
    """Refuse a ranker whose catalogue (item ids in catalogue order) is not the retriever's.

    Raises:
        TowerrecError: the sizes differ, or the first position where the ids differ (named).
    """
    a, b = list(np.asarray(retriever_ids).tolist()), list(np.asarray(ranker_ids).tolist())
    if a == b:
        return
    hint = "train the ranker on the retriever's data: the same dataset, [data] filters and split"
    if len(a) != len(b):
        raise TowerrecError(f"{ranker} was trained on another catalogue than {retriever}: {len(b):,} items, "
                            f"not {len(a):,}", hint=hint)
    first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    raise TowerrecError(f"{ranker} was trained on another catalogue than {retriever}: catalogue position "
                        f"{first} holds item {shorten(b[first])}, not {shorten(a[first])}", hint=hint)


def combine_scores(retrieval: np.ndarray, ranking: np.ndarray, valid: np.ndarray, score: str = "ranker",
                   retrieval_weight: float = 1.0) -> np.ndarray:
    """``[users, n]`` final scores of candidates from both stages' ``[users, n]`` scores (see :data:`SCORE_MODES`).

    ``valid`` (``[users, n]`` bool) marks real candidates; standardising (``"sum"``) uses only those,
    and a list whose scores are all equal standardises to 0.

    Raises:
        ValueError: an unknown ``score`` mode; a ranking score that is NaN or infinite for a real candidate.
    """
    if score not in SCORE_MODES:
        raise ValueError(f"score must be one of {', '.join(SCORE_MODES)}, got {score!r}")
    if not np.isfinite(ranking[valid]).all():
        raise ValueError("the ranker gave NaN or infinite scores: it diverged, or its inputs are broken")
    if score == "ranker":
        return np.where(valid, ranking, -np.inf)
    return np.where(valid, _standardise(ranking, valid) + retrieval_weight * _standardise(retrieval, valid), -np.inf)


def _standardise(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    kept = np.where(valid, values, 0.0)
    mean = kept.sum(axis=1, keepdims=True) / count
    spread = np.sqrt((np.where(valid, values - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    return np.where(valid, (values - mean) / np.where(spread > 0, spread, 1.0), 0.0)


@torch.no_grad()
def ranking_scores(ranker: RankingModel, queries: dict[str, Tensor], candidates: np.ndarray) -> np.ndarray:
    """``[users, n]`` float64 ranking scores of candidates (``[users, n]`` catalogue positions, ``-1`` padding,
    scored as position 0 and to be ignored), from the ranker's query batch ``queries`` (``[users, ...]``).

    Scored in chunks of users (at most :data:`SCORE_CHUNK` pairs per call), on the ranker's device.

    Raises:
        TypeError: ``ranker`` is not a :class:`~towerrec.model.RankingModel`.
        ValueError: the ranker's scores are not shaped like ``candidate_index``.
    """
    if not isinstance(ranker, RankingModel):
        raise TypeError(f"the ranker must be a towerrec RankingModel, got {type(ranker).__name__}")
    ranker.eval()
    device = resolve_device(None, ranker)
    users, n = candidates.shape
    out = np.zeros((users, n), dtype=np.float64)
    step = max(1, SCORE_CHUNK // max(n, 1))
    index = torch.from_numpy(np.where(candidates < 0, 0, candidates).astype(np.int64))
    for start in range(0, users, step):
        stop = min(start + step, users)
        batch = {key: value[start:stop].to(device) for key, value in queries.items()}
        batch[CANDIDATE_INDEX] = index[start:stop].to(device)
        scores = ranker.score(batch)
        if tuple(scores.shape) != (stop - start, n):
            raise ValueError(f"{type(ranker).__name__}.score gave shape {list(scores.shape)} for a candidate_index of "
                             f"shape {[stop - start, n]}: scores must be shaped like candidate_index")
        out[start:stop] = scores.float().cpu().numpy()
    return out


def rerank(ranker: RankingModel, queries: dict[str, Tensor], candidates: np.ndarray, retrieval_scores: np.ndarray,
           k: int, *, rules: CompiledRules | None = None, user_rules: np.ndarray | None = None,
           score: str = "ranker", retrieval_weight: float = 1.0) -> RankedLists:
    """Stages 2-4 on retrieved candidates: rank them, combine the scores, apply the rules, cut to ``k``.

    Args:
        ranker: the ranking model (eval mode is set; it must hold its catalogue).
        queries: the ranker's query batch, ``[users, ...]`` tensors (no ``candidate_index``).
        candidates: ``[users, n]`` int catalogue positions from retrieval, best first (``-1``: none).
        retrieval_scores: ``[users, n]`` their retrieval scores.
        k: final list length (≥ 1).
        rules: compiled business rules over the same catalogue (None: no rules).
        user_rules: ``[users, num_rules]`` from :meth:`CompiledRules.user_matches` (None: only the rules
            without user conditions apply).
        score, retrieval_weight: the final score (:func:`combine_scores`).
    Returns:
        :class:`RankedLists`.
    Raises:
        ValueError: shapes that disagree, ``k`` < 1, an unknown score mode, non-finite ranking scores.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    retrieval_scores = np.asarray(retrieval_scores, dtype=np.float64)
    if candidates.ndim != 2 or retrieval_scores.shape != candidates.shape:
        raise ValueError(f"candidates and retrieval_scores must both be [users, n], got {candidates.shape} "
                         f"and {retrieval_scores.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    if score not in SCORE_MODES:
        raise ValueError(f"score must be one of {', '.join(SCORE_MODES)}, got {score!r}")
    valid = candidates >= 0
    ranked = ranking_scores(ranker, queries, candidates)
    final = combine_scores(retrieval_scores, ranked, valid, score, retrieval_weight)
    if rules is None:
        rules_applied = _top(final, valid, k)
    else:
        rules_applied = rules.select_batch(candidates, final, k, user_rules)
    chosen = rules_applied >= 0
    safe = np.where(chosen, rules_applied, 0)

    def pick(values: np.ndarray, fill: float) -> np.ndarray:
        return np.where(chosen, np.take_along_axis(values, safe, axis=1), fill)

    return RankedLists(items=pick(candidates, -1).astype(np.int64), candidates=rules_applied,
                       scores=pick(final, math.nan), retrieval_scores=pick(retrieval_scores, math.nan),
                       ranking_scores=pick(ranked, math.nan), counts=chosen.sum(axis=1))


def _top(final: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """``[users, k]`` indices of the best ``k`` valid scores (ties: candidate order), ``-1`` past the last."""
    users, n = final.shape
    order = np.lexsort((np.broadcast_to(np.arange(n), (users, n)), -final, ~valid), axis=1)[:, :k]
    kept = np.take_along_axis(valid, order, axis=1)
    out = np.full((users, k), -1, dtype=np.int64)
    out[:, : order.shape[1]] = np.where(kept, order, -1)
    return out


def check_score(score: Any, retrieval_weight: Any) -> tuple[str, float]:
    """The final-score mode (``"ranker"`` | ``"sum"``) and the retrieval weight, checked.

    Raises:
        ValueError: an unknown mode or a weight that is not a finite number.
    """
    if score not in SCORE_MODES:
        raise ValueError(f"score must be one of {', '.join(SCORE_MODES)}, got {score!r}")
    if isinstance(retrieval_weight, bool) or not isinstance(retrieval_weight, (int, float)) or \
            not math.isfinite(retrieval_weight):
        raise ValueError(f"retrieval_weight must be a finite number, got {retrieval_weight!r}")
    return score, float(retrieval_weight)


class RetrieveThenRank:
    """Retrieval of ``candidates`` items per user, re-ranked by a ranking model, filtered by business rules.

    Args:
        retriever: a :class:`~towerrec.model.RetrievalModel` (a two-tower or baseline run's model).
        ranker: a :class:`~towerrec.model.RankingModel` over the same catalogue.
        data: the retriever's prepared data (its query features, train items to exclude, catalogue).
        ranker_data: the ranker's prepared data (default: ``data``); its catalogue must be ``data``'s.
        candidates: items retrieved per user (N ≥ 1).
        rules: :class:`~towerrec.rules.BusinessRules` (compiled against the data's item and user
            tables) or already :class:`~towerrec.rules.CompiledRules`; None: no rules.
        score, retrieval_weight: the final score (:func:`combine_scores`).
        names: how the retriever and ranker are named in messages (e.g. their run folders).

    Raises:
        TowerrecError: the ranker's catalogue is not the retriever's (:func:`check_same_catalogue`).
        ConfigError: rules that do not fit the item / user tables.
        TypeError / ValueError: models of the wrong kind, ``candidates`` < 1, an unknown score mode.
    """

    def __init__(self, retriever: RetrievalModel, ranker: RankingModel, data: PreparedData, *,
                 ranker_data: PreparedData | None = None, candidates: int = 300,
                 rules: BusinessRules | CompiledRules | None = None, score: str = "ranker",
                 retrieval_weight: float = 1.0, names: tuple[str, str] = ("the retriever", "the ranker")) -> None:
        if not isinstance(retriever, RetrievalModel):
            raise TypeError(f"the retriever must be a towerrec RetrievalModel, got {type(retriever).__name__}")
        if not isinstance(ranker, RankingModel):
            raise TypeError(f"the ranker must be a towerrec RankingModel, got {type(ranker).__name__}")
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
            raise ValueError(f"candidates must be an integer ≥ 1, got {candidates!r}")
        score, retrieval_weight = check_score(score, retrieval_weight)
        ranker_data = data if ranker_data is None else ranker_data
        check_same_catalogue(data.catalogue_ids, ranker_data.catalogue_ids, retriever=names[0], ranker=names[1])
        self.retriever, self.ranker, self.data, self.ranker_data = retriever, ranker, data, ranker_data
        self.candidates, self.score, self.retrieval_weight = int(candidates), score, float(retrieval_weight)
        if hasattr(ranker, "set_catalogue"):
            ranker.set_catalogue(ranker_data.catalogue, ranker_data.item_counts)
        if isinstance(rules, BusinessRules):
            rules = rules.compile(data.dataset.items, data.dataset.users, catalogue_ids=data.catalogue_ids)
        elif rules is not None and not isinstance(rules, CompiledRules):
            raise TypeError(f"rules must be BusinessRules or CompiledRules, got {type(rules).__name__}")
        if rules is not None:
            check_same_catalogue(data.catalogue_ids, rules.catalogue_ids, retriever=names[0],
                                 ranker="the rules' catalogue")
        self.rules = rules
        self._index: BruteForceIndex | None = None

    @classmethod
    def open(cls, retrieval_run: str | Path, ranking_run: str | Path, *, data_dir: str | Path | None = None,
             device: str | None = None, rules: str | Path | BusinessRules | None = None,
             **options: Any) -> RetrieveThenRank:
        """The pipeline of two finished runs (each re-prepares its data from its config; see
        :func:`towerrec.recommend.open_run_with_data`); ``rules``: a rules TOML file or rules.
        ``options``: ``candidates``, ``score``, ``retrieval_weight``.

        Raises:
            TowerrecError: a run that cannot be opened, a ranker run whose model is not a ranking model,
                catalogues that differ; ConfigError: bad rules.
        """
        retrieval, data = open_run_with_data(retrieval_run, data_dir, device=device)
        ranking, ranker_data = open_run_with_data(ranking_run, data_dir, device=device)
        if not isinstance(retrieval.model, RetrievalModel):
            raise TowerrecError(f"{retrieval.run_dir}: not a retrieval run ({type(retrieval.model).__name__})",
                                hint="give a two-tower, multi-task or baseline run as RUN and the ranking run to --rerank")
        if not isinstance(ranking.model, RankingModel):
            raise TowerrecError(f"{ranking.run_dir}: not a ranking run ({type(ranking.model).__name__})",
                                hint="train one with [model] kind = \"ranking\" (or a multi-task model)")
        if not isinstance(data, PreparedData) or not isinstance(ranker_data, PreparedData):
            raise TowerrecError("retrieve-then-rank needs two-tower or baseline retrieval runs, not sequential ones")
        if isinstance(rules, (str, Path)):
            rules = BusinessRules.load(rules)
        return cls(retrieval.model, ranking.model, data, ranker_data=ranker_data, rules=rules,
                   names=(str(retrieval.run_dir), str(ranking.run_dir)), **options)

    def _catalogue_index(self) -> BruteForceIndex:
        if self._index is None:
            embeddings = catalogue_embeddings(self.retriever, self.data.catalogue, self.data.num_items)
            self._index = BruteForceIndex(embeddings, self.data.catalogue_ids)
        return self._index

    def retrieve(self, rows: np.ndarray, *, exclude_seen: bool = True,
                 exclude_positions: Sequence[Sequence[int]] | None = None,
                 at: int | None = None, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: ``([users, N] catalogue positions, [users, N] retrieval scores)`` of train users ``rows``
        (``[users]`` rows of ``data.features.user_ids``), best first, ``-1`` / ``-inf`` past the items left.

        ``exclude_positions``: more catalogue positions to leave out, one list per user. ``count``: N,
        how many to retrieve (default: ``candidates``).
        """
        rows = np.asarray(rows, dtype=np.int64)
        wanted = self.candidates if count is None else int(count)
        if rows.size == 0:
            return np.zeros((0, wanted), dtype=np.int64), np.zeros((0, wanted))
        examples = user_examples(self.data, rows, at)
        queries = query_embeddings(self.retriever, examples)
        lists = [[] for _ in range(rows.size)]
        if exclude_seen:
            seen = self.data.exclusions_for(torch.from_numpy(rows))
            indptr, indices = seen.indptr.tolist(), seen.indices.numpy()
            lists = [indices[indptr[u]:indptr[u + 1]].tolist() for u in range(rows.size)]
        if exclude_positions is not None:
            lists = [list(a) + list(b) for a, b in zip(lists, exclude_positions)]
        found = self._catalogue_index().search(queries, wanted, exclude_positions=lists)
        positions = found.indices.cpu().numpy().astype(np.int64)
        scores = found.scores.float().cpu().numpy().astype(np.float64)
        width = positions.shape[1]
        valid = np.arange(width)[None, :] < found.counts.numpy()[:, None]
        out_positions = np.full((rows.size, wanted), -1, dtype=np.int64)
        out_scores = np.full((rows.size, wanted), -np.inf)
        out_positions[:, :width] = np.where(valid, positions, -1)
        out_scores[:, :width] = np.where(valid, scores, -np.inf)
        return out_positions, out_scores

    def rank_rows(self, rows: np.ndarray, k: int = 10, *, exclude_seen: bool = True,
                  exclude_positions: Sequence[Sequence[int]] | None = None, at: int | None = None,
                  chunk: int = 1024) -> RankedLists:
        """The final top-``k`` of train users ``rows`` (``[users]``), all stages, in chunks of ``chunk`` users;
        ``max(k, candidates)`` items are retrieved per user (as a bundle does).

        Raises:
            ValueError: ``k`` < 1 (and as :func:`rerank`).
        """
        rows = np.asarray(rows, dtype=np.int64)
        parts = []
        for start in range(0, max(rows.size, 1), chunk):
            part = rows[start:start + chunk]
            excluded = None if exclude_positions is None else exclude_positions[start:start + chunk]
            candidates, retrieved = self.retrieve(part, exclude_seen=exclude_seen, exclude_positions=excluded, at=at,
                                                  count=max(k, self.candidates))
            queries = user_examples(self.ranker_data, self._ranker_rows(part), at).select(slice(None))
            user_rules = None
            if self.rules is not None:
                user_rules = self.rules.user_matches(self.data.features.user_ids[part].tolist())
            parts.append(rerank(self.ranker, queries, candidates, retrieved, k, rules=self.rules,
                                user_rules=user_rules, score=self.score, retrieval_weight=self.retrieval_weight))
        return RankedLists(*(np.concatenate([getattr(p, name) for p in parts])
                             for name in ("items", "candidates", "scores", "retrieval_scores", "ranking_scores",
                                          "counts")))

    def _ranker_rows(self, rows: np.ndarray) -> np.ndarray:
        """The ranker's user rows of the retriever's user rows (the same users; -1 where the ranker lacks one)."""
        if self.ranker_data is self.data:
            return rows
        return self.ranker_data.features.user_index(self.data.features.user_ids[rows])

    def recommend(self, users: Sequence[Any], k: int = 10, *, exclude_seen: bool = True,
                  exclude_ids: Sequence[Any] | Mapping[Any, Sequence[Any]] | None = None,
                  at: int | None = None) -> dict[Any, list[RankedItem]]:
        """The final top ``k`` for each user (ids as the dataset spells them, text accepted), best first.

        ``exclude_ids``: item ids never returned, one list for every user or a mapping user -> ids
        (ids not in the catalogue are ignored). A user with fewer than ``k`` items left gets those left.

        Raises:
            TowerrecError: ``k`` < 1; users not in the training data (named).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise TowerrecError(f"k must be ≥ 1, got {k}")
        users = list(users)
        rows = known_user_rows(self.data, users)
        unknown = [u for u, r in zip(users, rows.tolist()) if r < 0]
        if unknown:
            raise TowerrecError(f"user(s) {listing(unknown, 10, shorten)} not in the training data",
                                hint="retrieve-then-rank serves users the retriever was trained on")
        excluded = None
        if exclude_ids is not None:
            lists = [exclude_ids.get(u, ()) for u in users] if isinstance(exclude_ids, Mapping) else [exclude_ids] * len(users)
            excluded = []
            for ids in lists:
                positions = self.data.features.item_index(list(ids)) if len(ids) else np.zeros(0, dtype=np.int64)
                excluded.append(positions[positions >= 0].tolist())
        lists_out = self.rank_rows(rows, k, exclude_seen=exclude_seen, exclude_positions=excluded, at=at)
        ids = self.data.catalogue_ids.tolist()
        titles = _titles(self.data)
        out: dict[Any, list[RankedItem]] = {}
        for j, user in enumerate(users):
            count = int(lists_out.counts[j])
            out[user] = [RankedItem(ids[c], titles[c], float(s), float(r), float(q), int(i) + 1)
                         for c, i, s, r, q in zip(lists_out.items[j, :count].tolist(),
                                                  lists_out.candidates[j, :count].tolist(),
                                                  lists_out.scores[j, :count].tolist(),
                                                  lists_out.retrieval_scores[j, :count].tolist(),
                                                  lists_out.ranking_scores[j, :count].tolist())]
        return out


def _titles(data: PreparedData) -> list[str]:
    ids = data.catalogue_ids.tolist()
    items = data.dataset.items
    if items is None or "title" not in items.columns:
        return [str(i) for i in ids]
    found = dict(zip(items["item_id"].to_list(), items["title"].to_list()))
    return [str(found.get(i, i)) for i in ids]
