"""Build the configured model (any kind), and embed a split's queries and the catalogue in chunks.

Every model, baselines and sequential models included, is a :class:`towerrec.model.RetrievalModel`:
batches go in, embeddings come out; loss, metrics, index and recommend see
only embeddings. Chunks are moved to the model's device and the embeddings back
to the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from towerrec.config import MULTI_TASK, RunConfig
from towerrec.devices import resolve_device
from towerrec.features import FittedFeatures
from towerrec.model import CANDIDATE_INDEX, Model
from towerrec.models.baselines import EASEModel, PopularityModel
from towerrec.models.multitask import MultiTaskModel, build_multitask
from towerrec.models.ranking import DeepRankingModel, build_ranking_model
from towerrec.models.sequential import SequentialModel
from towerrec.models.two_tower import TwoTowerModel, build_two_tower
from towerrec.tasks.ranking import Ranking
from towerrec.tasks.retrieval import Retrieval
from towerrec.train.prepared import RATERS, EncodedExamples, PreparedData, history_input, item_raters, ranking_labels
from towerrec.train.sequence_data import SequenceData, SequenceExamples

EVAL_CHUNK = 65_536


def build_model(config: RunConfig, data: PreparedData | SequenceData) -> Model:
    """The untrained model ``config`` describes, shaped by its data (seeded by ``[train] seed``).

    ``data``: :func:`towerrec.train.prepared.prepare` output for two-tower and baseline kinds,
    :func:`towerrec.train.sequence_data.prepare_sequences` output for ``kind = "sequential"``.

    Raises:
        TypeError: data of the other kind than ``[model] kind`` needs.
    """
    m = config.model
    wanted = SequenceData if m.kind == "sequential" else PreparedData
    if not isinstance(data, wanted):
        raise TypeError(f"a [model] kind = {m.kind!r} model is built from {wanted.__name__}, got {type(data).__name__}")
    if m.kind == "popularity":
        return PopularityModel(data.num_items)
    if m.kind == "ease":
        return EASEModel(data.num_users, data.num_items, m.ease_l2)
    torch.manual_seed(config.train.seed)
    if m.kind == "sequential":
        return sequential_model_for(config, data)  # type: ignore[arg-type]
    if m.kind == "ranking":
        model = ranking_model_for(config, data.features, label_offset=mean_label(config, data))  # type: ignore[arg-type]
        if model.raters is not None:
            model.set_item_raters(item_raters(data, m.history_length))  # type: ignore[arg-type]
        return model
    if m.kind == MULTI_TASK:
        return multitask_for(config, data.features)  # type: ignore[union-attr]
    return two_tower_for(config, data.features)  # type: ignore[union-attr]


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


def multitask_for(config: RunConfig, features: FittedFeatures) -> MultiTaskModel:
    """The (untrained) multi-task model of ``[model]`` (towers), ``[task]`` (retrieval loss), ``[ranking]``
    (rating loss) and ``[tasks]`` (weights, rating head)."""
    m, r, t = config.model, config.ranking, config.tasks
    return build_multitask(
        features, embedding_dim=m.embedding_dim, layer_sizes=m.layer_sizes, rating_layers=t.rating_layers,
        retrieval_weight=t.retrieval, ranking_weight=t.ranking, similarity=m.similarity, dropout=m.dropout,
        init=m.init, extra_query_inputs=history_input(config, len(features.catalogue_ids)),
        retrieval_task=retrieval_task(config), ranking_task=Ranking(loss=r.loss),
    )


def ranking_model_for(config: RunConfig, features: FittedFeatures, label_offset: float = 0.0) -> DeepRankingModel:
    """The (untrained) ranking model of ``[model]`` + ``[ranking]`` over the fitted features; also used to
    reload a run. ``label_offset``: the mean train label with ``[ranking] mean_offset`` (see :func:`mean_label`)."""
    m, r = config.model, config.ranking
    return build_ranking_model(
        features,
        embedding_dim=m.embedding_dim,
        layer_sizes=m.layer_sizes,
        interaction=m.interaction,
        cross_layers=m.cross_layers,
        projection_dim=m.projection_dim,
        diag_scale=m.diag_scale,
        cross_use_bias=m.cross_use_bias,
        dropout=m.dropout,
        init=m.init,
        loss=r.loss,
        margin=r.margin,
        user_item_bias=r.user_item_bias,
        label_offset=label_offset,
        embedding_l2=r.embedding_l2,
        extra_query_inputs=history_input(config, len(features.catalogue_ids)),
        raters_length=m.history_length if RATERS in m.candidate_features else 0,
    )


def mean_label(config: RunConfig, data: PreparedData) -> float:
    """The mean train label with ``[ranking] mean_offset`` (matrix factorisation's global mean), else 0."""
    if not config.ranking.mean_offset or len(data.train) == 0:
        return 0.0
    return float(ranking_labels(config.ranking, data.train.ratings).mean())


def sequential_model_for(config: RunConfig, data: SequenceData) -> SequentialModel:
    """The (untrained) sequential model of ``[model]`` + ``[sequence]``, sized by the data (items, genres,
    year buckets, training users) and holding the items' genre / year tables."""
    s, m = config.sequence, config.model
    model = SequentialModel(
        data.num_items,
        embedding_dim=m.embedding_dim,
        encoder=s.encoder,
        max_length=s.max_length,
        hidden_dim=s.hidden_dim,
        num_blocks=s.num_blocks,
        num_heads=s.num_heads,
        dropout=m.dropout,
        shared_embeddings=s.shared_embeddings,
        init=m.init,
        step_features=s.step_features,
        num_genres=data.num_genres,
        num_year_buckets=data.num_year_buckets,
        genre_width=data.genre_width,
        num_users=len(data.user_vocabulary or []) if s.user_embedding else 0,
        task=retrieval_task(config),
        objective=s.objective,
        num_sampled=s.num_sampled,
        all_positions=s.all_positions or s.protocol == "leave-last-out",
    )
    model.set_item_features(data.genres, data.years)
    return model


def fit_baseline(model: nn.Module, data: PreparedData) -> None:
    """Fit a popularity or EASE model on the train split (other models are left alone)."""
    if isinstance(model, PopularityModel):
        model.fit(data.train.targets.numpy())
    elif isinstance(model, EASEModel):
        model.fit(data.train.user_rows.numpy(), data.train.targets.numpy())


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def catalogue_embeddings(model: nn.Module, catalogue: dict[str, Tensor], num_items: int) -> Tensor:
    """``[N, d]`` embeddings (on the CPU) of every catalogue item, from the catalogue's encoded candidate
    features (``PreparedData.catalogue`` or ``FittedFeatures.encode_candidates()``)."""
    model.eval()
    device = resolve_device(None, model)
    n = num_items
    parts = []
    for s in range(0, n, EVAL_CHUNK):
        batch = {k: v[s : s + EVAL_CHUNK] for k, v in catalogue.items()}
        batch[CANDIDATE_INDEX] = torch.arange(s, min(s + EVAL_CHUNK, n))
        parts.append(model.candidate_embeddings(_to(batch, device)).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 1)


@torch.no_grad()
def query_embeddings(model: nn.Module, examples: EncodedExamples | SequenceExamples,
                     rows: slice = slice(None)) -> Tensor:
    """``[n, d]`` query embeddings (on the CPU) of a split's examples (``rows``: a contiguous part of them);
    the examples' ``select(rows)`` gives the model's query batch."""
    start, stop, _ = rows.indices(len(examples))
    stop = max(stop, start)
    model.eval()
    device = resolve_device(None, model)
    parts = [
        model.query_embeddings(_to(examples.select(slice(s, min(s + EVAL_CHUNK, stop))), device)).float().cpu()
        for s in range(start, stop, EVAL_CHUNK)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, 1)
