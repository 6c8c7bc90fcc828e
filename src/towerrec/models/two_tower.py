"""Two towers and a similarity: the retrieval model of TFRS.

Queries and candidates are embedded independently, so candidate embeddings
can be precomputed once for an index; the score of a pair is their dot
product (of unit vectors when ``similarity="cosine"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from towerrec.errors import ConfigError
from towerrec.features.fitted import FittedFeatures
from towerrec.features.spec import InputSpec
from towerrec.layers.embedding import Init
from towerrec.models.tower import Tower

Similarity = Literal["dot", "cosine"]


class TwoTowerModel(nn.Module):
    """``query_embeddings(q) -> [bq, d]``, ``candidate_embeddings(c) -> [bc, d]``, ``score -> [bq, bc]``."""

    def __init__(self, query_tower: Tower, candidate_tower: Tower, similarity: Similarity = "dot") -> None:
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ConfigError(f"similarity {similarity!r} is not one of dot, cosine")
        if query_tower.out_dim != candidate_tower.out_dim:
            raise ConfigError(
                f"query tower outputs {query_tower.out_dim} dims but candidate tower outputs"
                f" {candidate_tower.out_dim}; a dot product needs equal sizes",
                hint="give both towers the same last layer size (or embedding_dim without layers)",
            )
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.similarity = similarity
        self.out_dim = query_tower.out_dim

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.similarity == "cosine" else x

    def query_embeddings(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._finish(self.query_tower(features))

    def candidate_embeddings(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._finish(self.candidate_tower(features))

    @staticmethod
    def score(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """All-pairs scores ``[bq, d] x [bc, d] -> [bq, bc]`` (embeddings are already normalised for cosine)."""
        return queries @ candidates.T

    def forward(
        self, query_features: dict[str, torch.Tensor], candidate_features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings, for a task to score (e.g. in-batch softmax)."""
        return self.query_embeddings(query_features), self.candidate_embeddings(candidate_features)


def build_two_tower(
    fitted: FittedFeatures,
    embedding_dim: int = 32,
    layer_sizes: Sequence[int] = (),
    similarity: Similarity = "dot",
    dropout: float = 0.0,
    init: Init = "keras-uniform",
    extra_query_inputs: Sequence[InputSpec] = (),
) -> TwoTowerModel:
    """Both towers from fitted features with the same sizes (the usual symmetric setup).

    ``extra_query_inputs`` are query inputs that do not come from fitted features
    (e.g. the user's train history, derived from the split).
    """

    def tower(side: Literal["query", "candidate"]) -> Tower:
        inputs = list(fitted.inputs(side)) + (list(extra_query_inputs) if side == "query" else [])
        if not inputs:
            raise ConfigError(f"no {side} features are configured", hint=f"add a {side}-side feature")
        return Tower(inputs, embedding_dim, layer_sizes, dropout, init)

    return TwoTowerModel(tower("query"), tower("candidate"), similarity)
