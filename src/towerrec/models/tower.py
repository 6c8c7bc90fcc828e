"""A tower: fitted features -> one vector per example.

Each input is embedded (:class:`~towerrec.layers.FeatureEmbedding`), the
pieces are concatenated, and an optional MLP mixes them. With one id feature
and no layers the tower is just that embedding: TFRS's basic retrieval model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from towerrec.errors import ConfigError
from towerrec.features.spec import InputSpec
from towerrec.layers.embedding import FeatureEmbedding, Init
from towerrec.layers.mlp import MLP


class Tower(nn.Module):
    """A query or candidate tower: ``forward(features) -> [batch, out_dim]``; reads only its own inputs' keys.

    ``inputs`` are the fitted features' :class:`~towerrec.features.spec.InputSpec` s
    (``FittedFeatures.inputs(side)``); ``out_dim`` is the size of the output (the
    last layer size, or the summed embedding sizes without layers).

    ``embedding_dim`` is the default size of each feature embedding (a spec's
    ``embedding_dim`` overrides it). ``init="keras-uniform"`` matches TFRS (uniform
    ±0.05 embeddings, Glorot dense); ``"normal"`` uses N(0, 0.05²) embeddings
    and PyTorch's default dense init.
    """

    def __init__(
        self,
        inputs: list[InputSpec],
        embedding_dim: int = 32,
        layer_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        init: Init = "keras-uniform",
    ) -> None:
        super().__init__()
        if not inputs:
            raise ConfigError("a tower needs at least one feature", hint="add a feature for this side")
        self.inputs = list(inputs)
        self.embedding_dim, self.layer_sizes, self.dropout, self.init = embedding_dim, list(layer_sizes), dropout, init
        self.names = [i.name for i in inputs]
        self.embeddings = nn.ModuleDict({i.name: FeatureEmbedding(i, embedding_dim, init) for i in inputs})
        concat_dim = sum(e.out_dim for e in self.embeddings.values())
        self.mlp = (
            MLP(concat_dim, layer_sizes, dropout=dropout, init="keras" if init == "keras-uniform" else "torch")
            if layer_sizes
            else None
        )
        self.out_dim = self.mlp.out_dim if self.mlp is not None else concat_dim

    def get_config(self) -> dict[str, Any]:
        """The tower's layout as JSON values (:meth:`from_config` rebuilds it untrained)."""
        return {"inputs": [asdict(i) for i in self.inputs], "embedding_dim": self.embedding_dim,
                "layer_sizes": self.layer_sizes, "dropout": self.dropout, "init": self.init}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Tower:
        """The untrained tower :meth:`get_config` describes."""
        return cls([InputSpec(**i) for i in config["inputs"]], config["embedding_dim"], config["layer_sizes"],
                   config["dropout"], config["init"])

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.names if n not in features]
        if missing:
            raise KeyError(f"tower inputs missing from the batch: {missing}; got {sorted(features)}")
        parts = [self.embeddings[n](features[n]) for n in self.names]
        weight = next(self.parameters(), None)  # numeric columns follow the model's dtype
        if weight is not None:
            parts = [p.to(weight.dtype) for p in parts]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return x if self.mlp is None else self.mlp(x)
