"""Sequential retrieval model: item-history query tower (GRU or self-attention) · item candidate tower.

Item indices are catalogue index + 1; 0 is padding. The candidate tower is an
item-id embedding, either the query tower's input table (``shared_embeddings``)
or a separate one. Optional per-step context features are added to each step's
item embedding: ``rating`` (the rating of that event), ``genre`` (mean of the
item's genre embeddings) and ``year`` (the item's release year, bucketed).

With ``num_users > 0`` a learned per-user vector is added to the sequence state:
long-term taste beside the recent context. Index 0 (a user not seen in training,
or an anonymous history) is a fixed zero vector, so such queries rest on their
history alone instead of sharing one out-of-vocabulary bucket.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from towerrec import parallel
from towerrec.layers.embedding import init_embedding_
from towerrec.layers.encoder import GRUEncoder, SelfAttentionEncoder
from towerrec.model import CANDIDATE_INDEX, RetrievalModel
from towerrec.tasks.blocked_softmax import blocked_softmax_loss
from towerrec.tasks.retrieval import Retrieval
from towerrec.tasks.unique_softmax import unique_candidates

STEP_FEATURES = ("rating", "genre", "year")
OBJECTIVES = ("in-batch", "full-softmax", "sampled")
#: Batch keys of sequential models: ``[batch, L]`` left-padded item index + 1 (0 = padding), the
#: steps' rating slots, ``[batch]`` user index + 1 (0 = unknown), ``[batch, L]`` next-item targets (+1, 0 = none).
HISTORY, HISTORY_RATINGS, USER, TARGETS = "history", "history_ratings", "user", "targets"
NUM_RATING_SLOTS = 12  # ratings rounded to 0..10 (+ padding); MovieLens uses 1..5


class SequentialModel(RetrievalModel):
    """A two-tower model whose query tower encodes the item history (GRU4Rec, Hidasi et al. 2016; SASRec,
    Kang & McAuley 2018) and whose candidate tower is an item-id embedding.

    Batches: ``history`` ``[batch, L]`` (item index + 1, left-padded, most recent last), optional
    ``history_ratings`` ``[batch, L]`` and ``user`` ``[batch]``; for training ``targets`` ``[batch, L]``
    (the next item of each step, + 1; 0 = no target; only the last column without ``all_positions``).
    ``objective``: ``"in-batch"`` softmax over the batch's unique targets (exact and fast, with the
    task's logQ / accidental-hit / temperature settings), ``"full-softmax"`` over the whole catalogue,
    or ``"sampled"`` softmax with ``num_sampled`` popularity-drawn shared negatives and logQ correction
    (Jean et al. 2015). Popularity for logQ and sampling comes from :meth:`set_candidate_counts`.
    """

    data_parallel_loss_share = True  # its task returns loss shares (towerrec.parallel)

    def __init__(
        self,
        num_items: int,
        *,
        embedding_dim: int = 32,
        encoder: Literal["gru", "sasrec"] = "gru",
        max_length: int = 10,
        hidden_dim: int | None = None,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.0,
        shared_embeddings: bool = False,
        init: Literal["keras-uniform", "normal"] = "normal",
        step_features: tuple[str, ...] = (),
        num_genres: int = 0,
        num_year_buckets: int = 0,
        genre_width: int = 1,
        num_users: int = 0,
        task: Retrieval | None = None,
        objective: Literal["in-batch", "full-softmax", "sampled"] = "in-batch",
        num_sampled: int = 1000,
        all_positions: bool = False,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {list(OBJECTIVES)}")
        self.task = task if task is not None else Retrieval()
        self.objective, self.num_sampled, self.all_positions = objective, num_sampled, all_positions
        self.register_buffer("log_q", None, persistent=False)
        self.register_buffer("sample_probabilities", None, persistent=False)
        unknown = sorted(set(step_features) - set(STEP_FEATURES))
        if unknown:
            raise ValueError(f"unknown step feature(s) {unknown}; valid: {list(STEP_FEATURES)}")
        self.num_items = num_items
        self.encoder_kind = encoder
        self.step_features = tuple(step_features)
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        init_embedding_(self.item_embedding.weight, init)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.shared_embeddings = shared_embeddings
        out_dim = embedding_dim
        if encoder == "gru":
            out_dim = hidden_dim or embedding_dim
            self.encoder: nn.Module = GRUEncoder(embedding_dim, out_dim, dropout=dropout,
                                                 init="keras" if init == "keras-uniform" else "torch")
            self.step_dropout = nn.Dropout(dropout)
        elif encoder == "sasrec":
            self.encoder = SelfAttentionEncoder(embedding_dim, max_length, num_blocks=num_blocks,
                                                num_heads=num_heads, dropout=dropout)
            self.step_dropout = nn.Identity()
        else:
            raise ValueError(f"unknown encoder {encoder!r}; valid: gru, sasrec")
        if shared_embeddings and out_dim != embedding_dim:
            raise ValueError("shared_embeddings needs hidden_dim == embedding_dim")
        if not shared_embeddings:
            self.candidate_embedding = nn.Embedding(num_items + 1, out_dim, padding_idx=0)
            init_embedding_(self.candidate_embedding.weight, init)
        self.num_users = num_users
        if num_users:
            self.user_embedding = nn.Embedding(num_users + 1, out_dim, padding_idx=0)
            nn.init.normal_(self.user_embedding.weight, std=0.02)
            with torch.no_grad():
                self.user_embedding.weight[0].zero_()
        if "rating" in self.step_features:
            self.rating_embedding = nn.Embedding(NUM_RATING_SLOTS, embedding_dim, padding_idx=0)
            nn.init.normal_(self.rating_embedding.weight, std=0.02)
        if "genre" in self.step_features:
            self.genre_embedding = nn.Embedding(num_genres + 1, embedding_dim, padding_idx=0)
            nn.init.normal_(self.genre_embedding.weight, std=0.02)
            self.register_buffer("item_genres", torch.zeros(num_items + 1, genre_width, dtype=torch.int64))
        if "year" in self.step_features:
            self.year_embedding = nn.Embedding(num_year_buckets + 1, embedding_dim, padding_idx=0)
            nn.init.normal_(self.year_embedding.weight, std=0.02)
            self.register_buffer("item_years", torch.zeros(num_items + 1, dtype=torch.int64))

    def set_item_features(self, genres: Tensor | None, years: Tensor | None) -> None:
        """``genres``: [N + 1, G] genre indices (+1, 0 pad); ``years``: [N + 1] bucket (+1, 0 unknown)."""
        if genres is not None and hasattr(self, "item_genres"):
            self.item_genres = genres.to(torch.int64)
        if years is not None and hasattr(self, "item_years"):
            self.item_years = years.to(torch.int64)

    def _steps(self, items: Tensor, ratings: Tensor | None) -> Tensor:
        x = self.item_embedding(items)
        if "rating" in self.step_features and ratings is not None:
            x = x + self.rating_embedding(ratings)
        if "genre" in self.step_features:
            genres = self.item_genres[items]  # [B, L, G]
            count = (genres > 0).sum(-1, keepdim=True).clamp(min=1)
            x = x + self.genre_embedding(genres).sum(-2) / count
        if "year" in self.step_features:
            x = x + self.year_embedding(self.item_years[items])
        return x

    def encode(self, items: Tensor, ratings: Tensor | None = None, users: Tensor | None = None, *,
               last_only: bool = True) -> Tensor:
        """Query embeddings of left-padded histories ``[B, L]``: ``[B, d]`` (last step) or ``[B, L, d]``.

        ``users``: ``[B]`` user index + 1 (0 = unknown); ignored without a user embedding.
        """
        mask = items > 0
        steps = self.step_dropout(self._steps(items, ratings)) * mask.unsqueeze(-1)
        states = self.encoder(steps, mask, last_only=last_only)
        if self.num_users and users is not None:
            user = self.user_embedding(users)
            states = states + (user if last_only else user.unsqueeze(1) * mask.unsqueeze(-1))
        return states

    def candidate_weight(self) -> Tensor:
        """[N, d] embeddings of every catalogue item (row i = catalogue index i)."""
        table = self.item_embedding if self.shared_embeddings else self.candidate_embedding
        return table.weight[1:]

    # -- the one model path ----------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON values (the task as its settings)."""
        config = dict(getattr(self, "_init_arguments", {}))
        config.pop("task", None)
        config["task"] = self.task.get_config()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SequentialModel:
        """The untrained model :meth:`get_config` describes (the task rebuilt from its settings)."""
        values = dict(config)
        values["task"] = Retrieval(**values["task"]) if values.get("task") else None
        values["step_features"] = tuple(values.get("step_features", ()))
        return cls(**values)

    def set_candidate_counts(self, counts: Tensor) -> None:
        """``[N]`` training targets per item: logQ (q = count / total) and the sampled negatives' distribution."""
        counts = counts.to(self.candidate_weight().device, torch.float32)
        self.log_q = torch.log(counts.clamp(min=1.0) / counts.sum().clamp(min=1.0))
        self.sample_probabilities = counts.clamp(min=1.0) / counts.clamp(min=1.0).sum()

    def query_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """``[batch, dim]``: the encoded state after each history's last step."""
        return self.encode(batch[HISTORY], batch.get(HISTORY_RATINGS), batch.get(USER), last_only=True)

    def candidate_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """``[n, dim]`` item embeddings of ``batch["candidate_index"]`` (catalogue positions)."""
        return self.candidate_weight()[batch[CANDIDATE_INDEX]]

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The objective's loss over the batch's targets (every position, or the last one)."""
        inputs, targets = batch[HISTORY], batch[TARGETS]
        ratings, users = batch.get(HISTORY_RATINGS), batch.get(USER)
        if inputs.shape[0] == 0:  # an empty slice of a data-parallel global batch: the loss's collectives still run
            weight = self.candidate_weight()
            return self.loss(weight.new_zeros((0, weight.shape[1])), targets.new_zeros(0))
        if self.all_positions:
            states = self.encode(inputs, ratings, users, last_only=False)
            valid = targets > 0
            query, target = states[valid], targets[valid] - 1
        else:
            query, target = self.encode(inputs, ratings, users, last_only=True), targets[:, -1] - 1
        return self.loss(query, target)

    def loss(self, query: Tensor, target: Tensor) -> Tensor:
        """``query`` ``[n, dim]`` states, ``target`` ``[n]`` catalogue positions -> scalar loss.

        Every objective is computed tile by tile (:func:`~towerrec.tasks.blocked_softmax.blocked_softmax_loss`),
        never materialising ``[n, N]`` (full softmax) or ``[n, num_sampled]`` logits; each equals
        ``F.cross_entropy`` over the materialised logits (tested).

        Under data parallelism (``torch.distributed``, world size > 1) it is this process's share of the
        global batch's loss (:func:`towerrec.parallel.loss_share`): "in-batch" scores against the unique
        targets of every process (the task's global negatives), "sampled" uses rank 0's draw of shared
        negatives on every process, as one process draws one set for the whole batch.
        """
        task = self.task
        weight = self.candidate_weight()
        use_log_q = task.logq_correction and self.log_q is not None
        if self.objective == "in-batch":
            unique, labels, counts = unique_candidates(target)
            return task.unique_candidates_loss(query, weight[unique], labels, counts,
                                               candidate_log_q=self.log_q[unique] if use_log_q else None,
                                               candidate_ids=unique)
        shared = parallel.world_size() > 1
        if self.objective == "full-softmax":
            if shared:
                return self._share(blocked_softmax_loss(query, weight, target, temperature=task.temperature,
                                                        reduction="sum"), query)
            return blocked_softmax_loss(query, weight, target, temperature=task.temperature, reduction=task.reduction)
        probabilities = self.sample_probabilities
        if probabilities is None:
            probabilities = torch.full((self.num_items,), 1.0 / self.num_items, device=weight.device)
        negatives = parallel.broadcast_(torch.multinomial(probabilities, self.num_sampled, replacement=True))
        masking = task.remove_accidental_hits
        loss = blocked_softmax_loss(
            query, weight[negatives], positives=weight[target],
            column_bias=-self.log_q[negatives] if use_log_q else None,
            label_bias=-self.log_q[target] if use_log_q else None,
            row_ids=target if masking else None, column_ids=negatives if masking else None,
            temperature=task.temperature, reduction="sum" if shared else task.reduction,
        )
        return self._share(loss, query) if shared else loss

    def _share(self, local_sum: Tensor, query: Tensor) -> Tensor:
        """This process's share of the global batch's loss, from the sum of its ``[n]`` rows' losses."""
        rows = parallel.gather_sizes(query.shape[0], device=query.device)[:, 0]
        return parallel.loss_share(local_sum, rows, self.task.reduction)
