"""Build the configured model and compute its query/candidate embeddings.

Two-tower models read encoded feature tensors; the baselines read user rows.
Everything downstream (loss, metrics, index, recommend) only sees embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from towerrec.config import RunConfig
from towerrec.models.baselines import EASEModel, PopularityModel
from towerrec.models.two_tower import TwoTowerModel, build_two_tower
from towerrec.features import FittedFeatures
from towerrec.train.prepared import EncodedExamples, PreparedData, history_input

EVAL_CHUNK = 65_536


def build_model(config: RunConfig, data: PreparedData) -> nn.Module:
    m = config.model
    if m.kind == "popularity":
        return PopularityModel(data.num_items)
    if m.kind == "ease":
        return EASEModel(data.num_users, data.num_items, m.ease_l2)
    torch.manual_seed(config.train.seed)
    return two_tower_for(config, data.features)


def two_tower_for(config: RunConfig, features: FittedFeatures) -> TwoTowerModel:
    """The (untrained) two-tower network a config describes; also used to reload a run."""
    m = config.model
    return build_two_tower(
        features,
        embedding_dim=m.embedding_dim,
        layer_sizes=m.layer_sizes,
        similarity=m.similarity,
        dropout=m.dropout,
        init=m.init,
        extra_query_inputs=history_input(config, len(features.catalogue_ids)),
    )


def fit_baseline(model: nn.Module, data: PreparedData) -> None:
    if isinstance(model, PopularityModel):
        model.fit(data.train.targets.numpy())
    elif isinstance(model, EASEModel):
        model.fit(data.train.user_rows.numpy(), data.train.targets.numpy())


def is_trainable(model: nn.Module) -> bool:
    return isinstance(model, TwoTowerModel)


@torch.no_grad()
def catalogue_embeddings(model: nn.Module, data: PreparedData) -> Tensor:
    """[N, d] embeddings of every catalogue item."""
    if isinstance(model, TwoTowerModel):
        model.eval()
        n = data.num_items
        parts = [
            model.candidate_embeddings({k: v[s : s + EVAL_CHUNK] for k, v in data.catalogue.items()})
            for s in range(0, n, EVAL_CHUNK)
        ]
        return torch.cat(parts)
    return model.candidate_embeddings()


@torch.no_grad()
def query_embeddings(model: nn.Module, examples: EncodedExamples, rows: slice = slice(None)) -> Tensor:
    """[n, d] query embeddings of a split's examples (``rows``: a contiguous part of them)."""
    start, stop, _ = rows.indices(len(examples))
    stop = max(stop, start)
    if isinstance(model, TwoTowerModel):
        model.eval()
        parts = [
            model.query_embeddings(examples.select(slice(s, min(s + EVAL_CHUNK, stop))))
            for s in range(start, stop, EVAL_CHUNK)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, 1)
    return model.query_embeddings(examples.user_rows[start:stop])
