"""Build the configured model, and embed a split's queries and the catalogue in chunks.

Every model, baselines included, is a :class:`towerrec.model.RetrievalModel`:
batches go in, embeddings come out; loss, metrics, index and recommend see
only embeddings. Chunks are moved to the model's device and the embeddings back
to the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from towerrec.config import RunConfig
from towerrec.features import FittedFeatures
from towerrec.model import CANDIDATE_INDEX, Model
from towerrec.models.baselines import EASEModel, PopularityModel
from towerrec.models.two_tower import TwoTowerModel, build_two_tower
from towerrec.tasks.retrieval import Retrieval
from towerrec.train.prepared import EncodedExamples, PreparedData, history_input

EVAL_CHUNK = 65_536


def build_model(config: RunConfig, data: PreparedData) -> Model:
    """The untrained model ``config`` describes, shaped by the prepared data (seeded by ``[train] seed``)."""
    m = config.model
    if m.kind == "popularity":
        return PopularityModel(data.num_items)
    if m.kind == "ease":
        return EASEModel(data.num_users, data.num_items, m.ease_l2)
    torch.manual_seed(config.train.seed)
    return two_tower_for(config, data.features)


def retrieval_task(config: RunConfig) -> Retrieval:
    """The ``[task]`` section as a retrieval task."""
    t = config.task
    return Retrieval(temperature=t.temperature, logq_correction=t.logq_correction,
                         remove_accidental_hits=t.remove_accidental_hits, num_hard_negatives=t.num_hard_negatives,
                         reduction=t.reduction)


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
        task=retrieval_task(config),
    )


def fit_baseline(model: nn.Module, data: PreparedData) -> None:
    """Fit a popularity or EASE model on the train split (other models are left alone)."""
    if isinstance(model, PopularityModel):
        model.fit(data.train.targets.numpy())
    elif isinstance(model, EASEModel):
        model.fit(data.train.user_rows.numpy(), data.train.targets.numpy())


def _device(model: nn.Module) -> torch.device:
    return next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def catalogue_embeddings(model: nn.Module, catalogue: dict[str, Tensor], num_items: int) -> Tensor:
    """``[N, d]`` embeddings (on the CPU) of every catalogue item, from the catalogue's encoded candidate
    features (``PreparedData.catalogue`` or ``FittedFeatures.encode_candidates()``)."""
    model.eval()
    device = _device(model)
    n = num_items
    parts = []
    for s in range(0, n, EVAL_CHUNK):
        batch = {k: v[s : s + EVAL_CHUNK] for k, v in catalogue.items()}
        batch[CANDIDATE_INDEX] = torch.arange(s, min(s + EVAL_CHUNK, n))
        parts.append(model.candidate_embeddings(_to(batch, device)).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 1)


@torch.no_grad()
def query_embeddings(model: nn.Module, examples: EncodedExamples, rows: slice = slice(None)) -> Tensor:
    """``[n, d]`` query embeddings (on the CPU) of a split's examples (``rows``: a contiguous part of them)."""
    start, stop, _ = rows.indices(len(examples))
    stop = max(stop, start)
    model.eval()
    device = _device(model)
    parts = [
        model.query_embeddings(_to(examples.select(slice(s, min(s + EVAL_CHUNK, stop))), device)).float().cpu()
        for s in range(start, stop, EVAL_CHUNK)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, 1)
