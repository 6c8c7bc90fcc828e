"""The dense stack on top of a tower's concatenated feature embeddings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from towerrec.errors import ConfigError


class MLP(nn.Module):
    """Linear layers with ``activation`` (and optional dropout) between, last layer linear.

    This is TFRS's deep retrieval tower: ``Dense(relu)`` for all but the last
    size, then a plain ``Dense``. Shapes: ``[batch, in_dim] -> [batch, layer_sizes[-1]]``.
    ``init="keras"`` uses Glorot-uniform weights and zero biases (Keras Dense
    defaults); ``"torch"`` keeps PyTorch's default Linear init.
    """

    def __init__(
        self,
        in_dim: int,
        layer_sizes: Sequence[int],
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        init: Literal["keras", "torch"] = "keras",
    ) -> None:
        super().__init__()
        sizes = list(layer_sizes)
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ConfigError(f"layer_sizes must be positive integers, got {sizes}")
        if init not in ("keras", "torch"):
            raise ConfigError(f"unknown init {init!r}; valid: keras, torch")
        layers: list[nn.Module] = []
        for i, size in enumerate(sizes):
            linear = nn.Linear(in_dim if i == 0 else sizes[i - 1], size)
            if init == "keras":
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 1:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.out_dim = sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, in_dim]`` -> ``[batch, layer_sizes[-1]]`` (no activation after the last layer)."""
        return self.net(x)
