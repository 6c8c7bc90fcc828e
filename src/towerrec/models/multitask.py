"""Retrieval and ranking in one model: TFRS's multi-task recommender, in PyTorch.

Two towers embed queries and candidates (as :class:`~towerrec.models.two_tower.TwoTowerModel`);
a rating head (an MLP over the concatenated tower outputs) predicts each pair's label. Both
tasks train the shared towers; the loss is ``retrieval_weight * retrieval + ranking_weight * ranking``.
Source: the TensorFlow Recommenders tutorial "Multi-task recommenders"
(https://www.tensorflow.org/recommenders/examples/multitask), after Ma et al., "Modeling task
relationships in multi-task learning with multi-gate mixture-of-experts" (KDD 2018) for the idea
of sharing representations between tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from towerrec.errors import ConfigError
from towerrec.features.fitted import FittedFeatures
from towerrec.features.spec import InputSpec
from towerrec.layers.embedding import Init
from towerrec.layers.mlp import MLP
from towerrec.model import CANDIDATE_INDEX, LABEL, SAMPLE_WEIGHT, SAMPLING_PROBABILITY, RankingModel
from towerrec.models.tower import Tower
from towerrec.models.two_tower import Similarity, TwoTowerModel, build_two_tower
from towerrec.tasks.ranking import Ranking
from towerrec.tasks.retrieval import Retrieval

#: The rating head of the TFRS multi-task tutorial: Dense 256 (ReLU), Dense 64 (ReLU), then Dense 1.
TFRS_RATING_LAYERS = (256, 64)


class MultiTaskModel(TwoTowerModel, RankingModel):
    """Two towers trained by a retrieval task AND a rating head trained by a ranking task.

    - Retrieval (a :class:`~towerrec.model.RetrievalModel`): ``query_embeddings(batch) -> [batch, dim]``,
      ``candidate_embeddings(batch) -> [n, dim]``, score = their dot product (unit vectors with
      ``similarity="cosine"``); full-catalogue top-K evaluation, indexes, bundles and serving use the
      towers exactly as for a :class:`TwoTowerModel`. The retrieval loss is the task's in-batch softmax
      over the batch's unique candidates (see :class:`TwoTowerModel`).
    - Ranking (a :class:`~towerrec.model.RankingModel`): ``score(batch)`` is the rating head
      ``MLP(concat(query tower, candidate tower)) -> 1`` for every candidate of
      ``batch["candidate_index"]`` (``[batch]`` or ``[batch, list_size]``), shaped like it; trained
      against ``batch["label"]`` (a rating, a click...) by ``ranking_task`` (default: MSE). The head
      reads the towers' raw outputs (before the cosine normalisation).

    ``compute_loss(batch) = retrieval_weight * retrieval loss + ranking_weight * ranking loss``; a term
    whose weight is 0 is not computed (its gradient would be 0). :meth:`compute_losses` gives both terms.
    Unlike :meth:`TwoTowerModel.score` (a static all-pairs product of embeddings), :meth:`score` here is the
    ranking contract's ``score(batch)``.

    Args:
        query_tower, candidate_tower: :class:`~towerrec.models.tower.Tower` s (any module mapping a
            batch to ``[batch, dim]`` trains, but only Towers save) with equal ``out_dim``.
        rating_layers: hidden sizes of the rating head (a final size-1 layer is added); TFRS: (256, 64).
        retrieval_weight, ranking_weight: finite, >= 0, not both 0.
        similarity: ``"dot"`` or ``"cosine"`` (retrieval only).
        retrieval_task: default :class:`~towerrec.tasks.Retrieval` (its defaults).
        ranking_task: default ``Ranking(loss="mse")``.
        dropout: dropout between the rating head's hidden layers.
        candidate_id: batch key of each row's candidate id when a batch carries candidate features itself.

    Raises:
        ConfigError: a weight that is negative, not finite, or both weights 0; an empty or
            non-positive ``rating_layers`` entry; what :class:`TwoTowerModel` refuses (similarity,
            towers of different sizes).
    """

    data_parallel_loss_share = False  # the ranking term is a mean over this process's rows: the trainer weighs it

    def __init__(self, query_tower: nn.Module, candidate_tower: nn.Module, *,
                 rating_layers: Sequence[int] = TFRS_RATING_LAYERS, retrieval_weight: float = 1.0,
                 ranking_weight: float = 1.0, similarity: Similarity = "dot", retrieval_task: Retrieval | None = None,
                 ranking_task: Ranking | None = None, dropout: float = 0.0, candidate_id: str | None = None) -> None:
        super().__init__(query_tower, candidate_tower, similarity, retrieval_task, candidate_id)
        for name, value in (("retrieval_weight", retrieval_weight), ("ranking_weight", ranking_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if retrieval_weight == 0 and ranking_weight == 0:
            raise ConfigError("retrieval_weight and ranking_weight are both 0: nothing would be trained",
                              hint="give at least one task a positive weight")
        sizes = [int(s) for s in rating_layers]
        if any(s < 1 for s in sizes):
            raise ConfigError(f"rating_layers must be positive integers, got {list(rating_layers)}")
        q_dim = getattr(query_tower, "out_dim", None)
        c_dim = getattr(candidate_tower, "out_dim", None)
        if q_dim is None or c_dim is None:
            raise ConfigError("the towers need an out_dim attribute (their output size) to size the rating head")
        self.retrieval_weight, self.ranking_weight = float(retrieval_weight), float(ranking_weight)
        self.rating_layers, self.dropout = sizes, float(dropout)
        self.ranking_task = ranking_task if ranking_task is not None else Ranking(loss="mse")
        self.rating_head = MLP(q_dim + c_dim, [*sizes, 1], dropout=dropout)

    # -- save / load ---------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Towers, head sizes, weights, similarity and both tasks' settings as JSON values.

        Raises:
            TypeError: a tower is not a :class:`Tower`.
        """
        config = super().get_config()
        return {"query_tower": config["query_tower"], "candidate_tower": config["candidate_tower"],
                "rating_layers": self.rating_layers, "retrieval_weight": self.retrieval_weight,
                "ranking_weight": self.ranking_weight, "similarity": self.similarity,
                "retrieval_task": config["task"], "ranking_task": self.ranking_task.get_config(),
                "dropout": self.dropout, "candidate_id": self.candidate_id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MultiTaskModel:
        """The untrained model :meth:`get_config` describes."""
        return cls(Tower.from_config(config["query_tower"]), Tower.from_config(config["candidate_tower"]),
                   rating_layers=config["rating_layers"], retrieval_weight=config["retrieval_weight"],
                   ranking_weight=config["ranking_weight"], similarity=config["similarity"],
                   retrieval_task=Retrieval(**config["retrieval_task"]),
                   ranking_task=Ranking(**config["ranking_task"]), dropout=config["dropout"],
                   candidate_id=config.get("candidate_id"))

    # -- ranking ----------------------------------------------------------------
    def rating(self, query: Tensor, candidates: Tensor) -> Tensor:
        """The rating head: ``[..., dq]`` query and ``[..., dc]`` candidate tower outputs (same leading
        shape) -> ``[...]`` predicted labels."""
        return self.rating_head(torch.cat([query, candidates], dim=-1)).squeeze(-1)

    def score(self, batch: dict[str, Tensor]) -> Tensor:  # type: ignore[override]
        """Predicted labels shaped like ``batch["candidate_index"]`` (``[batch]`` or ``[batch, list_size]``;
        catalogue from :meth:`set_catalogue`), or ``[batch]`` for a batch that carries each row's candidate
        features itself (no ``candidate_index``)."""
        query = self.query_tower(batch)
        if CANDIDATE_INDEX not in batch:
            return self.rating(query, self.candidate_tower(batch))
        index = batch[CANDIDATE_INDEX]
        candidates = self.candidate_tower(self.catalogue_rows(index.reshape(-1)))
        candidates = candidates.reshape(*index.shape, candidates.shape[-1])
        if index.dim() == 2:
            query = query.unsqueeze(1).expand(-1, index.shape[1], -1)
        return self.rating(query, candidates)

    # -- loss --------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"retrieval": loss, "ranking": loss}`` of one batch, unweighted; a task whose weight is 0 is left out.

        The batch holds query features, ``candidate_index`` (``[batch]``; or the candidate features
        themselves), ``label`` (``[batch]``, needed when ``ranking_weight > 0``) and optionally
        ``sample_weight`` (``[batch]``, weighs both tasks).

        Raises:
            KeyError: ``ranking_weight > 0`` and the batch has no ``label``.
            ValueError: a ``[batch, list_size]`` ``candidate_index`` with ``retrieval_weight > 0``
                (the retrieval task reads one positive per row).
        """
        if self.ranking_weight > 0 and LABEL not in batch:
            raise KeyError(f"the multi-task model's ranking task needs batch[{LABEL!r}] (a rating per row); got "
                           f"{sorted(batch)}")
        weight = batch.get(SAMPLE_WEIGHT)
        raw_query = self.query_tower(batch)
        losses: dict[str, Tensor] = {}
        if CANDIDATE_INDEX in batch:
            index = batch[CANDIDATE_INDEX]
            if index.dim() != 1:
                if self.retrieval_weight > 0:
                    raise ValueError(f"batch[{CANDIDATE_INDEX!r}] is {list(index.shape)}: the retrieval task needs "
                                     "one candidate per row ([batch]); give lists only with retrieval_weight=0")
                losses["ranking"] = self.ranking_task(batch[LABEL], self.score(batch), sample_weight=weight)
                return losses
            unique, labels, counts = torch.unique(index, return_inverse=True, return_counts=True)
            raw_candidates = self.candidate_tower(self.catalogue_rows(unique))
            if self.retrieval_weight > 0:
                losses["retrieval"] = self.task.unique_candidates_loss(
                    self._finish(raw_query), self._finish(raw_candidates), labels, counts,
                    candidate_log_q=self.catalogue_log_q(unique), sample_weight=weight, candidate_ids=unique)
            row_candidates = raw_candidates[labels]
        else:
            row_candidates = self.candidate_tower(batch)
            if self.retrieval_weight > 0:
                ids = batch.get(self.candidate_id) if self.candidate_id else None
                losses["retrieval"] = self.task(self._finish(raw_query), self._finish(row_candidates),
                                                candidate_ids=ids, sample_weight=weight,
                                                candidate_sampling_probability=batch.get(SAMPLING_PROBABILITY))
        if self.ranking_weight > 0:
            losses["ranking"] = self.ranking_task(batch[LABEL], self.rating(raw_query, row_candidates),
                                                  sample_weight=weight)
        return losses

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """``retrieval_weight * retrieval + ranking_weight * ranking`` (see :meth:`compute_losses`)."""
        losses = self.compute_losses(batch)
        weights = {"retrieval": self.retrieval_weight, "ranking": self.ranking_weight}
        return sum(weights[name] * loss for name, loss in losses.items())  # type: ignore[return-value]


def build_multitask(
    fitted: FittedFeatures,
    embedding_dim: int = 32,
    layer_sizes: Sequence[int] = (),
    rating_layers: Sequence[int] = TFRS_RATING_LAYERS,
    retrieval_weight: float = 1.0,
    ranking_weight: float = 1.0,
    similarity: Similarity = "dot",
    dropout: float = 0.0,
    init: Init = "keras-uniform",
    extra_query_inputs: Sequence[InputSpec] = (),
    retrieval_task: Retrieval | None = None,
    ranking_task: Ranking | None = None,
) -> MultiTaskModel:
    """A multi-task model whose towers read the fitted features, built like
    :func:`~towerrec.models.two_tower.build_two_tower` (same tower sizes on both sides; ``dropout``
    applies to the towers and the rating head), with a rating head of ``rating_layers`` and the two
    loss weights.

    Raises:
        ConfigError: a side without features, or what :class:`MultiTaskModel` refuses.
    """
    towers = build_two_tower(fitted, embedding_dim, layer_sizes, similarity, dropout, init, extra_query_inputs)
    return MultiTaskModel(towers.query_tower, towers.candidate_tower, rating_layers=rating_layers,
                          retrieval_weight=retrieval_weight, ranking_weight=ranking_weight, similarity=similarity,
                          retrieval_task=retrieval_task, ranking_task=ranking_task, dropout=dropout)
