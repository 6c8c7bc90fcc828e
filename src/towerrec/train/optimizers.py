"""Named optimizers, and two whose embedding-table cost follows the rows a batch looks up.

With sparse embedding gradients (``nn.Embedding(sparse=True)``: the gradient of a
``[rows, dim]`` table holds only the ``[n, dim]`` rows the batch looked up), an optimizer
step can touch only those rows, so its cost does not grow with the table:

* :class:`RowWiseAdagrad` (``"rowwise-adagrad"``): Adagrad with ONE accumulator per
  embedding row (state ``[rows]``, not ``[rows, dim]``): TorchRec / FBGEMM's
  ``EXACT_ROWWISE_ADAGRAD``. Other parameters get element-wise Adagrad.
* :class:`LazyAdam` (``"sparse-adam"``): Adam whose moments and weights change only on
  the looked-up rows (``torch.optim.SparseAdam``'s and TF Addons' ``LazyAdam`` rule);
  dense gradients (every parameter that is not a table) get plain Adam.

Both also accept dense gradients on a table (a row with a zero gradient then changes
nothing in RowWiseAdagrad; LazyAdam treats a dense gradient as dense Adam does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from towerrec.errors import ConfigError

OPTIMIZERS = ("adagrad", "adam", "adamw", "rowwise-adagrad", "sparse-adam")
#: the optimizers whose table update touches only looked-up rows: they turn sparse embedding gradients on
SPARSE_OPTIMIZERS = ("rowwise-adagrad", "sparse-adam")
#: the optimizers that accept sparse gradients at all
ACCEPTS_SPARSE = ("adagrad", *SPARSE_OPTIMIZERS)
DEFAULT_LEARNING_RATES = {"adagrad": 0.1, "adam": 0.001, "adamw": 0.001, "rowwise-adagrad": 0.1, "sparse-adam": 0.001}
KERAS_ADAGRAD = {"initial_accumulator_value": 0.1, "eps": 1e-7}  # Keras's Adagrad defaults (TFRS)


def embedding_tables(model: nn.Module) -> list[nn.Embedding | nn.EmbeddingBag]:
    """Every ``nn.Embedding`` / ``nn.EmbeddingBag`` of ``model`` (each once)."""
    seen: set[int] = set()
    tables = []
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and id(module) not in seen:
            seen.add(id(module))
            tables.append(module)
    return tables


def set_sparse_gradients(model: nn.Module, sparse: bool) -> list[nn.Embedding | nn.EmbeddingBag]:
    """Make every embedding table of ``model`` return sparse (``sparse=True``) or dense gradients.

    A sparse gradient of a ``[rows, dim]`` table holds only the rows a batch looked up
    (``torch.sparse_coo``), so the optimizer step can skip the others. The forward pass and
    the trained values do not change. Returns the tables.
    """
    tables = embedding_tables(model)
    for table in tables:
        table.sparse = sparse
    return tables


def make_optimizer(name: str, model: nn.Module, learning_rate: float | None = None,
                   weight_decay: float = 0.0, *, sparse: bool = False) -> torch.optim.Optimizer:
    """A named optimizer over the model's trainable parameters.

    ``"adagrad"`` uses Keras's defaults (initial accumulator 0.1, eps 1e-7), so TFRS
    configs behave alike; ``"adam"`` is PyTorch's fused Adam; ``"adamw"`` AdamW;
    ``"rowwise-adagrad"`` :class:`RowWiseAdagrad` (row-wise on embedding tables, Keras
    defaults) and ``"sparse-adam"`` :class:`LazyAdam`. ``sparse``: the embedding tables
    return sparse gradients (see :func:`set_sparse_gradients`).

    Raises:
        ConfigError: an unknown name; ``sparse`` with an optimizer that cannot take sparse
            gradients (adam, adamw); ``weight_decay`` with sparse gradients or a row-wise optimizer.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    if sparse and name not in ACCEPTS_SPARSE:
        raise ConfigError(f"[train] optimizer {name!r} cannot update sparse embedding gradients",
                          hint="use optimizer = 'sparse-adam' (lazy Adam) or 'rowwise-adagrad', "
                               "or set [train] sparse_embeddings = false")
    if weight_decay and (sparse or name in SPARSE_OPTIMIZERS):
        raise ConfigError(f"[train] weight_decay is not supported with sparse embedding updates ({name!r}): "
                          "decay would touch every row each step",
                          hint="set weight_decay = 0 (ranking models: [ranking] embedding_l2 regularises looked-up rows)")
    lr = DEFAULT_LEARNING_RATES[name] if learning_rate is None else learning_rate
    params = [p for p in model.parameters() if p.requires_grad]
    if name in SPARSE_OPTIMIZERS:
        table_ids = {id(t.weight) for t in embedding_tables(model)}
        groups = [{"params": [p for p in params if id(p) in table_ids], "rowwise": True},
                  {"params": [p for p in params if id(p) not in table_ids], "rowwise": False}]
        groups = [g for g in groups if g["params"]]
        if name == "rowwise-adagrad":
            return RowWiseAdagrad(groups, lr=lr, **KERAS_ADAGRAD)
        return LazyAdam(groups, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, **KERAS_ADAGRAD)
    if name == "adam":
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """A sparse ``[rows, dim]`` gradient as (``[n]`` distinct row indices, ``[n, dim]`` summed rows)."""
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per embedding row (TorchRec / FBGEMM ``EXACT_ROWWISE_ADAGRAD``).

    For a table row ``r`` with gradient ``g_r`` ``[dim]``:
    ``G_r += mean(g_r ** 2)``; ``w_r -= lr * g_r / (sqrt(G_r) + eps)``. The state is ``[rows]``
    floats instead of Adagrad's ``[rows, dim]``, and with a sparse gradient only the looked-up
    rows are read or written. Parameter groups with ``rowwise=False`` (and 1-D parameters)
    get element-wise Adagrad (``G += g ** 2``; ``w -= lr * g / (sqrt(G) + eps)``), the same
    rule as ``torch.optim.Adagrad`` without decay.

    Args:
        params: parameters or groups (a group's ``rowwise``: default True).
        lr: learning rate. ``initial_accumulator_value``, ``eps``: Adagrad's (defaults: Keras's 0.1, 1e-7).

    Raises:
        ValueError: a negative lr, eps or initial accumulator.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, initial_accumulator_value: float = 0.1,
                 eps: float = 1e-7) -> None:
        for label, value in (("lr", lr), ("initial_accumulator_value", initial_accumulator_value), ("eps", eps)):
            if not value >= 0.0:
                raise ValueError(f"RowWiseAdagrad: {label} must be >= 0, got {value}")
        defaults = dict(lr=lr, initial_accumulator_value=initial_accumulator_value, eps=eps, rowwise=True)
        super().__init__(params, defaults)

    def _state(self, p: Tensor, rowwise: bool, init: float) -> Tensor:
        state = self.state[p]
        if "sum" not in state:
            shape = p.shape[:1] if rowwise else p.shape
            state["sum"] = torch.full(shape, init, dtype=p.dtype, device=p.device)
        return state["sum"]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update of every parameter with a gradient (sparse or dense)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, init = group["lr"], group["eps"], group["initial_accumulator_value"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rowwise = group["rowwise"] and p.dim() == 2
                total = self._state(p, rowwise, init)
                grad = p.grad
                if not rowwise:
                    if grad.is_sparse:  # a 1-D or non-row-wise table: element-wise on the touched rows
                        rows, values = _rows(grad)
                        acc = total[rows].addcmul_(values, values)
                        total[rows] = acc
                        p.index_add_(0, rows, values / (acc.sqrt() + eps), alpha=-lr)
                    else:
                        total.addcmul_(grad, grad)
                        p.addcdiv_(grad, total.sqrt().add_(eps), value=-lr)
                    continue
                if grad.is_sparse:
                    rows, values = _rows(grad)
                else:
                    rows, values = None, grad
                acc = values.pow(2).mean(dim=1)
                if rows is None:
                    total.add_(acc)
                    p.addcdiv_(values, total.sqrt().add_(eps).unsqueeze(1), value=-lr)
                else:
                    acc += total[rows]
                    total[rows] = acc
                    p.index_add_(0, rows, values / (acc.sqrt() + eps).unsqueeze(1), alpha=-lr)
        return loss


class LazyAdam(torch.optim.Optimizer):
    """Adam that, for a sparse gradient, updates the moments and weights of the looked-up rows only.

    The rule of ``torch.optim.SparseAdam`` and TF Addons' ``LazyAdam``: for the rows ``r`` a
    batch looked up, ``m_r = b1 m_r + (1 - b1) g_r``, ``v_r = b2 v_r + (1 - b2) g_r^2`` and
    ``w_r -= lr * m_r / (1 - b1^t) / (sqrt(v_r / (1 - b2^t)) + eps)``, where ``t`` counts the
    parameter's steps; the other rows (and their moments) stay as they are. A dense gradient
    gets exactly that rule on every element, which is Adam (``torch.optim.Adam``, no decay):
    after one step on the same gradient, the looked-up rows equal dense Adam's. State: ``m``
    and ``v`` of the parameter's shape, as Adam's.

    Args:
        params: parameters or groups. ``lr``, ``betas``, ``eps``: Adam's (defaults 1e-3, (0.9, 0.999), 1e-8).

    Raises:
        ValueError: a negative lr/eps or a beta outside [0, 1).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if not lr >= 0.0 or not eps >= 0.0:
            raise ValueError(f"LazyAdam: lr and eps must be >= 0, got {lr}, {eps}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LazyAdam: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, rowwise=True))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update of every parameter with a gradient (sparse: the looked-up rows; dense: all)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                step_size = lr / (1.0 - b1**t)
                root_correction = (1.0 - b2**t) ** 0.5
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                if not grad.is_sparse:
                    m.lerp_(grad, 1.0 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
                    p.addcdiv_(m, (v.sqrt() / root_correction).add_(eps), value=-step_size)
                    continue
                rows, values = _rows(grad)
                m_rows = m[rows].lerp_(values, 1.0 - b1)
                v_rows = v[rows].mul_(b2).addcmul_(values, values, value=1.0 - b2)
                m[rows], v[rows] = m_rows, v_rows
                p.index_add_(0, rows, m_rows / (v_rows.sqrt() / root_correction).add_(eps), alpha=-step_size)
        return loss
