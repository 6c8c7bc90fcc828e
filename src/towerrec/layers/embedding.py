"""One fitted feature -> one dense vector per example.

Ids and buckets look up a row; text and multi-valued features average the
rows of their non-padding elements (index 0 is padding and never counts, so
padding never changes a result); normalized numbers pass through as a column.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from towerrec.errors import ConfigError
from towerrec.features.spec import InputSpec

Init = Literal["keras-uniform", "normal"]
KERAS_UNIFORM_LIMIT = 0.05  # Keras Embedding default: RandomUniform(-0.05, 0.05)


def init_embedding_(weight: torch.Tensor, init: Init) -> None:
    """``keras-uniform``: uniform(-0.05, 0.05) as TFRS; ``normal``: N(0, 0.05^2)."""
    with torch.no_grad():
        if init == "keras-uniform":
            weight.uniform_(-KERAS_UNIFORM_LIMIT, KERAS_UNIFORM_LIMIT)
        elif init == "normal":
            weight.normal_(0.0, KERAS_UNIFORM_LIMIT)
        else:
            raise ConfigError(f"unknown init {init!r}; valid: keras-uniform, normal")


def embedding(num_embeddings: int, embedding_dim: int, *, init: Init = "normal",
              padding_idx: int | None = None) -> nn.Embedding:
    """An ``nn.Embedding`` ``[num_embeddings, embedding_dim]`` with towerrec's small init (see
    :func:`init_embedding_`) instead of PyTorch's N(0, 1), which makes dot-product retrieval train
    far worse. Input ``[batch]`` (or ``[batch, L]``) int64 -> ``[batch, embedding_dim]`` (``[batch, L, dim]``).
    ``padding_idx`` rows start (and stay) at zero."""
    table = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    init_embedding_(table.weight, init)
    if padding_idx is not None:
        with torch.no_grad():
            table.weight[padding_idx].zero_()
    return table


class FeatureEmbedding(nn.Module):
    """Embeds one input.

    Shapes: id / hashed / bucketized ``[batch]`` int64 -> ``[batch, dim]``;
    text / multi ``[batch, width]`` int64 -> ``[batch, dim]`` (masked mean, an
    all-padding row gives zeros); normalized ``[batch, 1]`` float -> ``[batch, 1]``.
    ``out_dim`` is ``input.embedding_dim or default_dim`` (1 for normalized).
    """

    def __init__(self, input: InputSpec, default_dim: int, init: Init = "keras-uniform") -> None:
        super().__init__()
        self.kind = input.kind
        dim = input.embedding_dim or default_dim
        self.table: nn.Embedding | nn.EmbeddingBag | None
        if input.kind == "normalized":
            self.table, self.out_dim = None, 1
            return
        if input.kind in ("text", "multi"):
            self.table = nn.EmbeddingBag(input.cardinality, dim, mode="mean", padding_idx=0)
        else:
            self.table = nn.Embedding(input.cardinality, dim)
        init_embedding_(self.table.weight, init)
        if input.kind in ("text", "multi"):
            with torch.no_grad():
                self.table.weight[0].zero_()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds one feature's batch (shapes in the class docstring): ``[batch]`` or ``[batch, width]`` -> ``[batch, out_dim]``."""
        if self.table is None:
            x = x.reshape(-1, 1)
            return x if x.is_floating_point() else x.to(torch.get_default_dtype())
        return self.table(x)
