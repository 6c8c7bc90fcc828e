"""Two towers and a similarity: the retrieval model of TFRS.

Queries and candidates are embedded independently, so candidate embeddings
can be precomputed once for an index; the score of a pair is their dot
product (of unit vectors when ``similarity="cosine"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from towerrec.errors import ConfigError
from towerrec.features.fitted import FittedFeatures
from towerrec.features.spec import InputSpec
from towerrec.layers.embedding import Init
from towerrec.model import CANDIDATE_INDEX, SAMPLE_WEIGHT, SAMPLING_PROBABILITY, RetrievalModel
from towerrec.models.tower import Tower
from towerrec.tasks.retrieval import Retrieval

Similarity = Literal["dot", "cosine"]


class TwoTowerModel(RetrievalModel):
    """TFRS's two-tower retrieval model: a query tower, a candidate tower and a retrieval task.

    ``query_embeddings(batch) -> [batch, dim]``, ``candidate_embeddings(batch) -> [n, dim]``;
    the score of a pair is their dot product (of unit vectors with ``similarity="cosine"``).
    :meth:`compute_loss` is the task's in-batch softmax, computed over the batch's
    UNIQUE candidates (exact, and the candidate tower runs once per distinct item) when
    the batch names its candidates: either ``batch["candidate_index"]`` (``[batch]``
    catalogue positions, with the catalogue's features given once by :meth:`set_catalogue`)
    or ``batch[candidate_id]`` (``[batch]`` ids of candidates whose features the batch carries).

    Args:
        query_tower: any module mapping a batch dict to ``[batch, dim]`` (usually a :class:`Tower`).
        candidate_tower: any module mapping a batch dict to ``[batch, dim]``.
        similarity: ``"dot"`` or ``"cosine"``.
        task: the loss (default: the retrieval task with its defaults:
            logQ correction and accidental-hit removal on).
        candidate_id: batch key holding each row's candidate id, when the batch carries the
            candidate features itself (e.g. ``"item_id"``); None: no deduplication for such batches.

    Raises:
        ConfigError: unknown similarity, or towers with ``out_dim`` of different sizes.
    """

    data_parallel_loss_share = True  # its task returns loss shares (towerrec.parallel)

    def __init__(self, query_tower: nn.Module, candidate_tower: nn.Module, similarity: Similarity = "dot",
                 task: Retrieval | None = None, candidate_id: str | None = None) -> None:
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ConfigError(f"similarity {similarity!r} is not one of dot, cosine")
        q_dim, c_dim = getattr(query_tower, "out_dim", None), getattr(candidate_tower, "out_dim", None)
        if q_dim is not None and c_dim is not None and q_dim != c_dim:
            raise ConfigError(
                f"query tower outputs {q_dim} dims but candidate tower outputs"
                f" {c_dim}; a dot product needs equal sizes",
                hint="give both towers the same last layer size (or embedding_dim without layers)",
            )
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.similarity = similarity
        self.task = task if task is not None else Retrieval()
        self.candidate_id = candidate_id
        self.out_dim = q_dim
        self._catalogue_keys: list[str] = []
        self._warned_no_counts = False
        self.register_buffer("candidate_log_q", None, persistent=False)

    # -- save / load ---------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Towers (:meth:`Tower.get_config`), similarity, task settings and ``candidate_id`` as JSON values.

        Raises:
            TypeError: a tower is not a :class:`Tower` (override get_config/from_config in a subclass).
        """
        for side, tower in (("query", self.query_tower), ("candidate", self.candidate_tower)):
            if not isinstance(tower, Tower):
                raise TypeError(f"the {side} tower is a {type(tower).__name__}, not a towerrec Tower: subclass "
                                "TwoTowerModel and implement get_config() / from_config() to save it")
        return {"query_tower": self.query_tower.get_config(), "candidate_tower": self.candidate_tower.get_config(),
                "similarity": self.similarity, "task": self.task.get_config(), "candidate_id": self.candidate_id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TwoTowerModel:
        """The untrained model :meth:`get_config` describes (towers, similarity, task)."""
        return cls(Tower.from_config(config["query_tower"]), Tower.from_config(config["candidate_tower"]),
                   config["similarity"], Retrieval(**config["task"]), config.get("candidate_id"))

    # -- the catalogue -------------------------------------------------------
    def set_catalogue(self, features: dict[str, Tensor], item_counts: Tensor | None = None) -> None:
        """Give the candidate features of the whole catalogue once (row i = catalogue position i).

        Batches then name candidates by ``batch["candidate_index"]``; with ``item_counts``
        ([N] training interactions per item) the task's logQ correction uses
        q = count / total (counts below 1 count as 1). The tensors are non-persistent buffers:
        they follow ``model.to(device)`` and are not saved with the weights.
        """
        for key in self._catalogue_keys:
            delattr(self, _catalogue_buffer(key))
        self._catalogue_keys = sorted(features)
        device = self.device
        for key in self._catalogue_keys:
            self.register_buffer(_catalogue_buffer(key), features[key].to(device), persistent=False)
        if item_counts is not None:
            counts = item_counts.to(device=device, dtype=torch.float32)
            self.candidate_log_q = torch.log(counts.clamp(min=1.0) / counts.sum().clamp(min=1.0))

    @property
    def has_catalogue(self) -> bool:
        """Whether :meth:`set_catalogue` gave the model its catalogue (not saved: give it again after loading)."""
        return bool(self._catalogue_keys)

    def catalogue_rows(self, index: Tensor) -> dict[str, Tensor]:
        """The catalogue features of positions ``index`` (``[n]``), as a batch for the candidate tower."""
        if not self._catalogue_keys:
            raise RuntimeError("this batch names candidates by 'candidate_index' but no catalogue was given: "
                               "call model.set_catalogue(features) first")
        return {key: getattr(self, _catalogue_buffer(key))[index] for key in self._catalogue_keys}

    @torch.no_grad()
    def catalogue_embeddings(self, chunk_size: int = 65_536) -> Tensor:
        """``[N, dim]`` candidate embeddings of the whole catalogue given to :meth:`set_catalogue` (eval mode,
        in chunks of ``chunk_size`` items; the model's training mode is restored)."""
        if not self._catalogue_keys:
            raise RuntimeError("no catalogue was given: call model.set_catalogue(features) first")
        size = getattr(self, _catalogue_buffer(self._catalogue_keys[0])).shape[0]
        training = self.training
        self.eval()
        try:
            device = getattr(self, _catalogue_buffer(self._catalogue_keys[0])).device
            parts = [self.candidate_embeddings(self.catalogue_rows(torch.arange(s, min(s + chunk_size, size),
                                                                                device=device)))
                     for s in range(0, size, chunk_size)]
        finally:
            self.train(training)
        return torch.cat(parts)

    def catalogue_log_q(self, index: Tensor) -> Tensor | None:
        """``[n]`` log sampling probability of catalogue positions ``index`` (from ``set_catalogue``'s item
        counts), or None without counts (warning once when the task's logQ correction is on)."""
        if self.candidate_log_q is not None:
            return self.candidate_log_q[index]
        if self.task.logq_correction and not self._warned_no_counts:
            self._warned_no_counts = True
            warnings.warn("the retrieval task's logQ correction is on but the model has no item counts, so no "
                          "correction is applied: pass item_counts to set_catalogue(features, item_counts) (or "
                          "Retrieval(logq_correction=False) to say so)", stacklevel=3)
        return None

    # -- embeddings and loss ---------------------------------------------------
    def _finish(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.similarity == "cosine" else x

    def query_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """``[batch, dim]`` from the query features of ``batch``."""
        return self._finish(self.query_tower(batch))

    def candidate_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """``[n, dim]`` from the candidate features of ``batch``."""
        return self._finish(self.candidate_tower(batch))

    @staticmethod
    def score(queries: Tensor, candidates: Tensor) -> Tensor:
        """All-pairs scores ``[bq, d] x [bc, d] -> [bq, bc]`` (embeddings are already normalised for cosine)."""
        return queries @ candidates.T

    def forward(self, query_features: dict[str, Tensor], candidate_features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Both embeddings, for a task to score (e.g. in-batch softmax)."""
        return self.query_embeddings(query_features), self.candidate_embeddings(candidate_features)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The task's loss of one batch of positive (query, candidate) pairs; see the class docstring."""
        query = self.query_embeddings(batch)
        weight = batch.get(SAMPLE_WEIGHT)
        if CANDIDATE_INDEX in batch:
            unique, labels, counts = torch.unique(batch[CANDIDATE_INDEX], return_inverse=True, return_counts=True)
            candidates = self.candidate_embeddings(self.catalogue_rows(unique))
            return self.task.unique_candidates_loss(query, candidates, labels, counts,
                                                    candidate_log_q=self.catalogue_log_q(unique), sample_weight=weight,
                                                    candidate_ids=unique)
        candidates = self.candidate_embeddings(batch)
        ids = batch.get(self.candidate_id) if self.candidate_id else None
        return self.task(query, candidates, candidate_ids=ids, sample_weight=weight,
                         candidate_sampling_probability=batch.get(SAMPLING_PROBABILITY))


def _catalogue_buffer(key: str) -> str:
    return "catalogue__" + key


def build_two_tower(
    fitted: FittedFeatures,
    embedding_dim: int = 32,
    layer_sizes: Sequence[int] = (),
    similarity: Similarity = "dot",
    dropout: float = 0.0,
    init: Init = "keras-uniform",
    extra_query_inputs: Sequence[InputSpec] = (),
    task: Retrieval | None = None,
) -> TwoTowerModel:
    """A two-tower model whose towers read the fitted features, both with the same sizes (the usual symmetric setup).

    Embeddings start at ``init`` (towerrec's convention: small values, see
    :func:`towerrec.layers.embedding.init_embedding_`); ``task`` defaults to
    :class:`towerrec.tasks.Retrieval`'s defaults.

    ``extra_query_inputs`` are query inputs that do not come from fitted features
    (e.g. the user's train history, derived from the split).
    """

    def tower(side: Literal["query", "candidate"]) -> Tower:
        inputs = list(fitted.inputs(side)) + (list(extra_query_inputs) if side == "query" else [])
        if not inputs:
            raise ConfigError(f"no {side} features are configured", hint=f"add a {side}-side feature")
        return Tower(inputs, embedding_dim, layer_sizes, dropout, init)

    return TwoTowerModel(tower("query"), tower("candidate"), similarity, task)
