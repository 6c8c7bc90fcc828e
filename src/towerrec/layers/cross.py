"""DCN-v2 cross layers (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"), as ``tfrs.layers.dcn.Cross``.

A cross layer multiplies the base features ``x0`` element-wise by a linear map of
the current features: each layer raises the degree of the feature crosses by one,
and the residual ``+ x`` keeps the lower-degree ones.
"""

from __future__ import annotations

from torch import Tensor, nn

KERNEL_STDDEV = 0.05
"""Standard deviation of the truncated-normal kernel init (Keras ``TruncatedNormal``, TFRS's default), cut at 2 std."""


class Cross(nn.Module):
    """One DCN-v2 cross layer: ``x_{l+1} = x0 * (W x_l + b + diag_scale * x_l) + x_l``.

    Exactly ``tfrs.layers.dcn.Cross`` (Wang et al. 2021, eq. 1 full rank, eq. 2 low
    rank): ``W`` is a full ``[d, d]`` matrix, or with ``projection_dim=r`` the low-rank
    ``W = V U`` (``U`` maps d -> r without bias, ``V`` maps r -> d with the bias);
    ``diag_scale`` adds ``diag_scale * I`` to ``W`` (helps the low-rank case train).
    Kernels start truncated-normal (std 0.05), biases zero, as in TFRS.

    Shapes: ``forward(x0, x=None)``: ``x0`` and ``x`` ``[batch, input_dim]`` -> ``[batch, input_dim]``;
    ``x`` defaults to ``x0`` (the first layer of a stack).

    Args:
        input_dim: d, the width of ``x0``.
        projection_dim: r for a low-rank ``W`` (None: full rank). TFRS notes r = d/4 keeps
            full-rank accuracy.
        diag_scale: >= 0, added to W's diagonal.
        use_bias: whether ``b`` exists.
    Raises:
        ValueError: input_dim or projection_dim < 1, negative or non-finite diag_scale.
    """

    def __init__(self, input_dim: int, *, projection_dim: int | None = None, diag_scale: float = 0.0,
                 use_bias: bool = True) -> None:
        super().__init__()
        if int(input_dim) != input_dim or input_dim < 1:
            raise ValueError(f"input_dim must be an integer >= 1, got {input_dim!r}")
        if projection_dim is not None and (int(projection_dim) != projection_dim or projection_dim < 1):
            raise ValueError(f"projection_dim must be None or an integer >= 1, got {projection_dim!r}")
        if not 0 <= diag_scale < float("inf"):
            raise ValueError(f"diag_scale must be a finite number >= 0, got {diag_scale!r}")
        self.input_dim = int(input_dim)
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.diag_scale = float(diag_scale)
        self.use_bias = bool(use_bias)
        if self.projection_dim is None:
            self.dense = nn.Linear(self.input_dim, self.input_dim, bias=self.use_bias)
            kernels = [self.dense]
        else:
            self.dense_u = nn.Linear(self.input_dim, self.projection_dim, bias=False)
            self.dense_v = nn.Linear(self.projection_dim, self.input_dim, bias=self.use_bias)
            kernels = [self.dense_u, self.dense_v]
        for linear in kernels:
            nn.init.trunc_normal_(linear.weight, std=KERNEL_STDDEV, a=-2 * KERNEL_STDDEV, b=2 * KERNEL_STDDEV)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x0: Tensor, x: Tensor | None = None) -> Tensor:
        """``[batch, input_dim]`` (base ``x0``, current ``x``; default ``x0``) -> ``[batch, input_dim]``.

        Raises:
            ValueError: ``x0``'s last dimension is not ``input_dim``, or ``x``'s shape differs from ``x0``'s.
        """
        if x0.shape[-1] != self.input_dim:
            raise ValueError(f"Cross expects inputs of width {self.input_dim}, got x0 of shape {list(x0.shape)}")
        if x is None:
            x = x0
        elif x.shape != x0.shape:
            raise ValueError(f"Cross needs x and x0 of the same shape, got {list(x.shape)} and {list(x0.shape)}")
        projected = self.dense(x) if self.projection_dim is None else self.dense_v(self.dense_u(x))
        if self.diag_scale:
            projected = projected + self.diag_scale * x
        return x0 * projected + x

    def extra_repr(self) -> str:
        """The settings in the module's repr."""
        return (f"input_dim={self.input_dim}, projection_dim={self.projection_dim}, "
                f"diag_scale={self.diag_scale}, use_bias={self.use_bias}")


class CrossNetwork(nn.Module):
    """A stack of :class:`Cross` layers over one base input (DCN-v2's cross network).

    ``x_1 = Cross_1(x0, x0)``, ``x_{l+1} = Cross_{l+1}(x0, x_l)``; returns ``x_L``. The
    TFRS DCN tutorial uses one layer (``num_layers=1``) before its dense layers.
    Shapes: ``[batch, input_dim] -> [batch, input_dim]``.

    Args:
        input_dim: d, the width of ``x0``.
        num_layers: L >= 1 cross layers, each with its own weights.
        projection_dim, diag_scale, use_bias: passed to every :class:`Cross`.
    Raises:
        ValueError: num_layers < 1, or a :class:`Cross` argument is invalid.
    """

    def __init__(self, input_dim: int, num_layers: int, *, projection_dim: int | None = None,
                 diag_scale: float = 0.0, use_bias: bool = True) -> None:
        super().__init__()
        if int(num_layers) != num_layers or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        self.layers = nn.ModuleList(
            Cross(input_dim, projection_dim=projection_dim, diag_scale=diag_scale, use_bias=use_bias)
            for _ in range(int(num_layers)))
        self.input_dim = int(input_dim)
        self.out_dim = self.input_dim

    def forward(self, x0: Tensor) -> Tensor:
        """``[batch, input_dim]`` -> ``[batch, input_dim]``, crossing with ``x0`` at every layer."""
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
