"""DLRM's dot interaction (Naumov et al. 2019, section 2.1.3), as ``tfrs.layers.feature_interaction.DotInteraction``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class DotInteraction(nn.Module):
    """All pairwise dot products of F feature embeddings: the explicit second-order interactions of DLRM.

    Input: ``[batch, F, d]`` or a list of F ``[batch, d]`` tensors (the same d).
    Output: ``[batch, F(F-1)/2]`` (``[batch, F(F+1)/2]`` with ``self_interaction``).

    **Order** (TFRS's, so weights read the same columns): the strictly lower
    triangle of the ``[F, F]`` Gram matrix, row by row: ``<e1,e0>, <e2,e0>, <e2,e1>,
    <e3,e0>, ...`` i.e. pairs (i, j) with j < i, sorted by i then j. With
    ``self_interaction`` the diagonal is included: ``<e0,e0>, <e1,e0>, <e1,e1>, ...``.

    Args:
        self_interaction: also output each feature's squared norm ``<e_i, e_i>``.
    """

    def __init__(self, self_interaction: bool = False) -> None:
        super().__init__()
        self.self_interaction = bool(self_interaction)

    def out_dim(self, num_features: int) -> int:
        """Width of the output for ``num_features`` inputs: F(F-1)/2, or F(F+1)/2 with self-interaction."""
        extra = 1 if self.self_interaction else -1
        return num_features * (num_features + extra) // 2

    def forward(self, features: Tensor | Sequence[Tensor]) -> Tensor:
        """``[batch, F, d]`` (or F tensors ``[batch, d]``) -> ``[batch, out_dim(F)]`` dot products, order above.

        Raises:
            ValueError: an empty list, tensors of different shapes, or a tensor that is not 3-D.
        """
        if not isinstance(features, Tensor):
            features = list(features)
            if not features:
                raise ValueError("DotInteraction needs at least one feature tensor")
            shapes = {tuple(t.shape) for t in features}
            if len(shapes) != 1 or features[0].dim() != 2:
                raise ValueError(f"DotInteraction needs F tensors of one shape [batch, d], got shapes "
                                 f"{[list(t.shape) for t in features]}")
            features = torch.stack(features, dim=1)
        if features.dim() != 3:
            raise ValueError(f"DotInteraction needs [batch, F, d] input, got shape {list(features.shape)}")
        num_features = features.shape[1]
        gram = features @ features.transpose(1, 2)
        rows, cols = torch.tril_indices(num_features, num_features, offset=0 if self.self_interaction else -1,
                                        device=features.device)
        return gram[:, rows, cols]

    def extra_repr(self) -> str:
        """The setting in the module's repr."""
        return f"self_interaction={self.self_interaction}"
