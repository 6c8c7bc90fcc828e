"""A deep ranking model: any query and candidate features -> [cross network | dot interaction] -> MLP -> score.

The ranking stage of TFRS's tutorials in one model: "basic ranking" (user and
movie embeddings -> MLP -> rating), "deep & cross networks" (DCN-v2: a stack of
:class:`~towerrec.layers.cross.Cross` layers before the MLP, full or low rank)
and DLRM's dot interaction (pairwise dot products of the feature embeddings,
concatenated with them). Optional per-user and per-item biases and a global
offset make it a matrix-factorisation-style rating regressor.

Candidates are named by ``candidate_index`` (catalogue positions, ``[batch]`` or
``[batch, list_size]``); their features come from the catalogue given once with
:meth:`DeepRankingModel.set_catalogue`, as for :class:`~towerrec.models.two_tower.TwoTowerModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal

import torch
from torch import Tensor, nn

from towerrec.errors import ConfigError
from towerrec.features.fitted import FittedFeatures
from towerrec.features.spec import InputSpec
from towerrec.layers.cross import CrossNetwork
from towerrec.layers.embedding import FeatureEmbedding, Init, init_embedding_
from towerrec.layers.interaction import DotInteraction
from towerrec.layers.mlp import MLP
from towerrec.model import CANDIDATE_INDEX, LABEL, SAMPLE_WEIGHT, USER_ROW, RankingModel
from towerrec.tasks.ranking import Ranking

Interaction = Literal["none", "cross", "dot", "fm"]
INTERACTIONS: tuple[str, ...] = ("none", "cross", "dot", "fm")
LIST_MASK = "list_mask"  # [batch, list_size] bool: which list entries are real (absent: all)


class DeepRankingModel(RankingModel):
    """Scores (query, candidate) pairs from the embeddings of their features.

    ``score(batch)`` -> scores shaped like ``batch["candidate_index"]`` (``[batch]`` or
    ``[batch, list_size]``): each query's features are embedded (``[batch, D_q]``), each
    candidate's catalogue features too (``[batch * list_size, D_c]``), and the concatenation
    ``x0`` (``[batch * list_size, D]``, ``D = D_q + D_c``) goes through the interaction, an MLP
    of ``layer_sizes`` (ReLU) and a final linear layer to one score:

    - ``"none"``: ``x0`` as is (TFRS basic ranking; the DCN tutorial's "DNN");
    - ``"cross"``: a DCN-v2 cross network (Wang et al. 2021, "DCN V2", arXiv:2008.13535;
      TFRS ``tfrs.layers.dcn.Cross``) of ``cross_layers`` layers, low rank with ``projection_dim``;
    - ``"dot"``: DLRM's interaction (Naumov et al. 2019, arXiv:1906.00091): the pairwise dot
      products of the ``embedding_dim``-wide feature embeddings (``[F (F-1) / 2]``) concatenated
      with ``x0``;
    - ``"fm"``: ``x0`` as is, and the factorization machine's pairwise term (:func:`factorization_machine`:
      the sum of those dot products, unweighted) added to the score (DeepFM, Guo et al. 2017).

    With ``raters_length`` > 0 the candidate side gains the ``item_raters`` field: the item's train
    raters (:meth:`set_item_raters`; the example's own user left out) embedded, summed and divided by
    the square root of their number (SVD++'s implicit feedback, Koren 2008, on the item side).

    Then ``+ user bias[user_row] + item bias[candidate] + label_offset`` (biases with
    ``num_users`` / ``num_items`` > 0; an unknown user, ``user_row = -1``, has bias 0).
    ``compute_loss`` is :class:`towerrec.tasks.Ranking`'s ``loss`` between ``batch["label"]``
    (shaped like the scores) and the scores, weighted by ``batch["sample_weight"]`` (``[batch]``).

    Args:
        query_inputs / candidate_inputs: the fitted features' :class:`InputSpec` s (or their dicts),
            ``FittedFeatures.inputs("query")`` / ``("candidate")``.
        embedding_dim: default embedding size per feature (a spec's own ``embedding_dim`` wins).
        layer_sizes: hidden layer sizes of the MLP (the final 1-wide layer is added).
        init: ``"keras-uniform"`` (TFRS: uniform(-0.05, 0.05) embeddings, Glorot dense) or ``"normal"``.
        loss, margin: of :class:`towerrec.tasks.Ranking`.
        label_offset: added to every score (e.g. the mean training rating).
        raters_length: raters kept per item (0: no ``item_raters`` field); ``raters_users`` /
            ``raters_items``: rows of the train-user vocabulary and catalogue size it needs.
        embedding_l2: weight of the L2 penalty on the embedding rows, item-rater vectors and biases a
            batch looks up (added by :meth:`compute_loss`).

    Raises:
        ConfigError: no feature at all, an unknown interaction, ``projection_dim`` without
            ``interaction="cross"``, ``"dot"`` or ``"fm"`` with fewer than two ``embedding_dim``-wide
            embeddings, or ``raters_length`` without user and item counts.
    """

    def __init__(
        self,
        query_inputs: Sequence[InputSpec | dict[str, Any]],
        candidate_inputs: Sequence[InputSpec | dict[str, Any]],
        embedding_dim: int = 32,
        layer_sizes: Sequence[int] = (),
        interaction: Interaction = "none",
        cross_layers: int = 1,
        projection_dim: int | None = None,
        diag_scale: float = 0.0,
        cross_use_bias: bool = True,
        dropout: float = 0.0,
        init: Init = "keras-uniform",
        loss: str = "mse",
        margin: float = 1.0,
        num_users: int = 0,
        num_items: int = 0,
        label_offset: float = 0.0,
        raters_length: int = 0,
        raters_users: int = 0,
        raters_items: int = 0,
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.query_inputs = [_input(i) for i in query_inputs]
        self.candidate_inputs = [_input(i) for i in candidate_inputs]
        if not self.query_inputs and not self.candidate_inputs:
            raise ConfigError("a ranking model needs at least one feature", hint="add a query or candidate feature")
        if interaction not in INTERACTIONS:
            raise ConfigError(f"interaction {interaction!r} is not one of {', '.join(INTERACTIONS)}")
        if projection_dim is not None and interaction != "cross":
            raise ConfigError(f"projection_dim = {projection_dim} needs interaction = 'cross', got {interaction!r}")
        self.interaction = interaction
        self.embedding_dim = embedding_dim
        self.label_offset = float(label_offset)
        if not (embedding_l2 >= 0 and embedding_l2 < float("inf")):
            raise ConfigError(f"embedding_l2 must be a finite number >= 0, got {embedding_l2!r}")
        self.embedding_l2 = float(embedding_l2)
        self.query_tables = nn.ModuleDict({i.name: FeatureEmbedding(i, embedding_dim, init)
                                               for i in self.query_inputs})
        self.candidate_tables = nn.ModuleDict({i.name: FeatureEmbedding(i, embedding_dim, init)
                                                   for i in self.candidate_inputs})
        widths = [e.out_dim for e in [*self.query_tables.values(), *self.candidate_tables.values()]]
        self.raters: nn.EmbeddingBag | None = None
        if raters_length > 0:
            if raters_users <= 0 or raters_items <= 0:
                raise ConfigError(f"item raters need the user and item counts, got raters_users = {raters_users}, "
                                  f"raters_items = {raters_items}")
            # row 0: padding; row r + 1: train user r. Sum over the n non-padding rows / sqrt(n) (SVD++'s
            # implicit feedback, Koren 2008, on the item side: an item is also described by who rated it).
            self.raters = nn.EmbeddingBag(raters_users + 1, embedding_dim, mode="sum", padding_idx=0)
            init_embedding_(self.raters.weight, init)
            with torch.no_grad():
                self.raters.weight[0].zero_()
            self.register_buffer("item_raters", torch.zeros(raters_items, raters_length, dtype=torch.long))
            widths.append(embedding_dim)
        width = sum(widths)
        self.cross: nn.Module | None = None
        self.dot: nn.Module | None = None
        if interaction == "cross":
            self.cross = CrossNetwork(width, cross_layers, projection_dim=projection_dim, diag_scale=diag_scale,
                                      use_bias=cross_use_bias)
            if init == "keras-uniform":
                _glorot(self.cross)
        elif interaction == "dot":
            fields = sum(w == embedding_dim for w in widths)
            if fields < 2:
                raise ConfigError(f"interaction = 'dot' needs at least two features embedded in embedding_dim = "
                                  f"{embedding_dim} dims, got {fields}", hint="add features, or use 'none' / 'cross'")
            self.dot = DotInteraction()
            width += fields * (fields - 1) // 2
        elif interaction == "fm":
            fields = sum(w == embedding_dim for w in widths)
            if fields < 2:
                raise ConfigError(f"interaction = 'fm' needs at least two features embedded in embedding_dim = "
                                  f"{embedding_dim} dims, got {fields}", hint="add features, or use 'none' / 'cross'")
        self.mlp = MLP(width, [*layer_sizes, 1], dropout=dropout, init="keras" if init == "keras-uniform" else "torch")
        self.user_bias = _bias_table(num_users + 1) if num_users > 0 else None  # row 0: unknown users
        self.item_bias = _bias_table(num_items) if num_items > 0 else None
        self.task = Ranking(loss=loss, margin=margin)
        self._catalogue_keys: list[str] = []

    # -- save / load ---------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as JSON values (input specs as dicts)."""
        config = dict(self._init_arguments)
        config["query_inputs"] = [asdict(i) for i in self.query_inputs]
        config["candidate_inputs"] = [asdict(i) for i in self.candidate_inputs]
        return config

    def set_item_raters(self, raters: Tensor) -> None:
        """Give each catalogue item's train raters, ``[num_items, raters_length]`` int64 (train-user row + 1,
        0 = padding; see :func:`towerrec.train.prepared.item_raters`). Saved with the weights.

        Raises:
            ValueError: the model has no item raters, or ``raters`` has another shape than the model's.
        """
        if self.raters is None:
            raise ValueError("this ranking model was built without item raters (raters_length = 0)")
        if tuple(raters.shape) != tuple(self.item_raters.shape):
            raise ValueError(f"item raters must be shaped {list(self.item_raters.shape)}, got {list(raters.shape)}")
        self.item_raters.copy_(raters)

    # -- the catalogue -------------------------------------------------------
    def set_catalogue(self, features: dict[str, Tensor], item_counts: Tensor | None = None) -> None:
        """Give the candidate features of the whole catalogue once (row i = catalogue position i; name ->
        ``[N, ...]``); batches then name candidates by ``candidate_index``. ``item_counts`` is accepted
        for the same call as two-tower models and unused. The tensors are non-persistent buffers: they
        follow ``model.to(device)`` and are not saved with the weights."""
        for key in self._catalogue_keys:
            delattr(self, "catalogue__" + key)
        self._catalogue_keys = sorted(features)
        device = self.device
        for key in self._catalogue_keys:
            self.register_buffer("catalogue__" + key, features[key].to(device), persistent=False)

    @property
    def has_catalogue(self) -> bool:
        """Whether :meth:`set_catalogue` was called (candidate features can be found)."""
        return bool(self._catalogue_keys) or not self.candidate_inputs

    def catalogue_rows(self, index: Tensor) -> dict[str, Tensor]:
        """The catalogue features of positions ``index`` (``[n]``).

        Raises:
            RuntimeError: no catalogue was given.
        """
        if not self._catalogue_keys:
            raise RuntimeError("this model finds candidate features in its catalogue, but none was given: call "
                               "model.set_catalogue(features) first")
        return {key: getattr(self, "catalogue__" + key)[index] for key in self._catalogue_keys}

    # -- scores and loss -----------------------------------------------------
    def _embed(self, tables: nn.ModuleDict, features: dict[str, Tensor]) -> list[Tensor]:
        missing = [n for n in tables if n not in features]
        if missing:
            raise KeyError(f"ranking model inputs missing from the batch: {missing}; got {sorted(features)}")
        dtype = self.mlp.net[0].weight.dtype
        return [table(features[name]).to(dtype) for name, table in tables.items()]

    def score(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores shaped like ``batch["candidate_index"]``: ``[batch]`` or ``[batch, list_size]`` (see the
        class docstring). The batch holds the query features (``[batch, ...]``), ``candidate_index`` and,
        with user biases, ``user_row``."""
        return self._scores(batch)[0]

    def _scores(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The scores and, with ``embedding_l2``, the mean squared norm of the rows looked up per pair."""
        index = batch[CANDIDATE_INDEX]
        flat = index.reshape(-1)
        repeat = flat.shape[0] // max(index.shape[0], 1)
        parts = self._embed(self.query_tables, batch)
        if repeat != 1:
            parts = [p.repeat_interleave(repeat, dim=0) for p in parts]
        if self.candidate_inputs:
            parts += self._embed(self.candidate_tables, self.catalogue_rows(flat))
        if self.raters is not None:
            raters = self.item_raters[flat]
            rows = (batch[USER_ROW].clamp(min=-1) + 1).repeat_interleave(repeat)
            # the example's own user never describes the item (in training: its own rating's user)
            raters = raters * (raters != rows.unsqueeze(1))
            count = (raters > 0).sum(dim=1, keepdim=True).clamp(min=1)
            parts.append((self.raters(raters) / count.sqrt()).to(self.mlp.net[0].weight.dtype))
        x0 = torch.cat(parts, dim=1)
        if self.cross is not None:
            x = self.cross(x0)
        elif self.dot is not None:
            stacked = torch.stack([p for p in parts if p.shape[1] == self.embedding_dim], dim=1)
            x = torch.cat([x0, self.dot(stacked)], dim=1)
        else:
            x = x0
        scores = self.mlp(x).squeeze(-1) + self.label_offset
        if self.interaction == "fm":
            scores = scores + factorization_machine(torch.stack([p for p in parts if p.shape[1] == self.embedding_dim],
                                                                dim=1))
        tables = [*self.query_tables.values(), *self.candidate_tables.values()]
        looked_up = [p for p, table in zip(parts, tables) if table.table is not None] + parts[len(tables):]
        if self.item_bias is not None:
            item_bias = self.item_bias(flat)
            scores = scores + item_bias.squeeze(-1)
            looked_up.append(item_bias)
        if self.user_bias is not None:
            rows = (batch[USER_ROW].clamp(min=-1) + 1).repeat_interleave(repeat)
            user_bias = self.user_bias(rows)
            scores = scores + user_bias.squeeze(-1)
            looked_up.append(user_bias)
        penalty = None
        if self.embedding_l2 > 0 and looked_up:
            penalty = self.embedding_l2 * sum(p.square().sum(dim=1) for p in looked_up).mean()
        return scores.reshape(index.shape), penalty

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """:meth:`score`."""
        return self.score(batch)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The ranking loss of one batch: ``batch["label"]`` (shaped like ``candidate_index``) against
        :meth:`score`, weighted by ``batch["sample_weight"]`` and masked by ``batch["list_mask"]`` when given;
        plus ``embedding_l2`` times the mean (over pairs) squared norm of the embedding rows and biases
        each pair looked up (matrix factorisation's L2 regularisation, on the rows a batch uses)."""
        scores, penalty = self._scores(batch)
        loss = self.task(batch[LABEL], scores, sample_weight=batch.get(SAMPLE_WEIGHT), mask=batch.get(LIST_MASK))
        return loss if penalty is None else loss + penalty


def factorization_machine(fields: Tensor) -> Tensor:
    """The factorization machine's pairwise term (Rendle 2010, "Factorization Machines"; DeepFM's FM
    component, Guo et al. 2017, arXiv:1703.04247): ``sum_{i<j} <v_i, v_j>`` over the ``F`` field embeddings
    ``[batch, F, dim]`` -> ``[batch]``, in O(F dim) as ``((sum_i v_i)^2 - sum_i v_i^2) / 2`` summed over dims."""
    return 0.5 * (fields.sum(dim=1).square() - fields.square().sum(dim=1)).sum(dim=1)


def _input(value: InputSpec | dict[str, Any]) -> InputSpec:
    return value if isinstance(value, InputSpec) else InputSpec(**value)


def _bias_table(rows: int) -> nn.Embedding:
    table = nn.Embedding(rows, 1)
    nn.init.zeros_(table.weight)
    return table


def _glorot(module: nn.Module) -> None:
    """Keras's Dense defaults for every linear map in ``module``: Glorot-uniform weights, zero biases."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def build_ranking_model(
    fitted: FittedFeatures,
    embedding_dim: int = 32,
    layer_sizes: Sequence[int] = (),
    *,
    interaction: Interaction = "none",
    cross_layers: int = 1,
    projection_dim: int | None = None,
    diag_scale: float = 0.0,
    cross_use_bias: bool = True,
    dropout: float = 0.0,
    init: Init = "keras-uniform",
    loss: str = "mse",
    margin: float = 1.0,
    user_item_bias: bool = False,
    label_offset: float = 0.0,
    embedding_l2: float = 0.0,
    extra_query_inputs: Sequence[InputSpec] = (),
    raters_length: int = 0,
) -> DeepRankingModel:
    """A :class:`DeepRankingModel` over every fitted query and candidate feature (see
    :func:`~towerrec.models.two_tower.build_two_tower` for the same inputs as towers).

    ``user_item_bias`` adds a bias per user of the fitted user vocabulary and per catalogue item;
    ``extra_query_inputs`` are query inputs that do not come from fitted features (e.g. the
    user's train history). Call ``set_catalogue(fitted.encode_candidates())`` (the trainer does it
    for prepared data) before scoring.
    """
    return DeepRankingModel(
        [*fitted.inputs("query"), *extra_query_inputs], fitted.inputs("candidate"),
        embedding_dim=embedding_dim, layer_sizes=list(layer_sizes), interaction=interaction,
        cross_layers=cross_layers, projection_dim=projection_dim, diag_scale=diag_scale,
        cross_use_bias=cross_use_bias, dropout=dropout, init=init, loss=loss, margin=margin,
        num_users=fitted.num_users if user_item_bias else 0, num_items=fitted.num_items if user_item_bias else 0,
        label_offset=label_offset,
        raters_length=raters_length, raters_users=fitted.num_users if raters_length else 0,
        raters_items=fitted.num_items if raters_length else 0, embedding_l2=embedding_l2,
    )
