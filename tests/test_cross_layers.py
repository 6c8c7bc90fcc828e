"""DCN-v2 cross layers and DLRM's dot interaction against hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import towerrec as tr
from towerrec.layers import Cross, CrossNetwork, DotInteraction

T = torch.tensor


def _set(linear: nn.Linear, weight: list, bias: list | None = None) -> None:
    with torch.no_grad():
        linear.weight.copy_(T(weight))
        if bias is not None:
            linear.bias.copy_(T(bias))


def test_full_rank_cross_hand_value() -> None:
    layer = Cross(2)
    _set(layer.dense, [[1.0, 2.0], [0.0, -1.0]], [0.5, 1.0])
    x0 = T([[1.0, 2.0]])
    # W x0 + b = [1 + 4 + 0.5, -2 + 1] = [5.5, -1]; x0 * that + x0 = [5.5 + 1, -2 + 2]
    assert torch.allclose(layer(x0), T([[6.5, 0.0]]))
    x = T([[3.0, -1.0]])
    # W x + b = [3 - 2 + 0.5, 1 + 1] = [1.5, 2]; x0 * that + x = [1.5 + 3, 4 - 1]
    assert torch.allclose(layer(x0, x), T([[4.5, 3.0]]))


def test_low_rank_diag_scale_and_no_bias() -> None:
    layer = Cross(3, projection_dim=1, diag_scale=0.5, use_bias=False)
    assert layer.dense_v.bias is None and layer.dense_u.bias is None
    _set(layer.dense_u, [[1.0, 1.0, 1.0]])      # U: d -> r (sum)
    _set(layer.dense_v, [[1.0], [0.0], [2.0]])  # V: r -> d
    x0 = T([[1.0, 2.0, -1.0]])
    # W x0 = V (U x0) = [2, 0, 4]; + 0.5 x0 = [2.5, 1, 3.5]; x0 * that + x0
    expected = T([[2.5 + 1.0, 2.0 + 2.0, -3.5 - 1.0]])
    assert torch.allclose(layer(x0), expected)
    assert sum(p.numel() for p in layer.parameters()) == 3 + 3


def test_cross_init_is_keras_truncated_normal_with_zero_bias() -> None:
    torch.manual_seed(0)
    layer = Cross(64)
    w = layer.dense.weight
    assert w.abs().max() <= 0.1 and 0.03 < w.std() < 0.05  # N(0, 0.05) cut at 2 std
    assert torch.equal(layer.dense.bias, torch.zeros(64))


def test_cross_network_stacks_with_the_base_input() -> None:
    torch.manual_seed(0)
    net = CrossNetwork(4, 2, projection_dim=2)
    x0 = torch.randn(5, 4)
    first, second = net.layers
    assert torch.allclose(net(x0), second(x0, first(x0, x0)))
    assert net(x0).shape == (5, 4) and net.out_dim == 4
    assert first.dense_u is not second.dense_u  # each layer has its own weights


def test_cross_gradcheck() -> None:
    torch.manual_seed(0)
    layer = CrossNetwork(3, 2, diag_scale=0.3).double()
    x0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(layer, (x0,))


def test_cross_refuses_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="diag_scale must be a finite number >= 0"):
        Cross(4, diag_scale=-1.0)
    with pytest.raises(ValueError, match="projection_dim must be None or an integer >= 1"):
        Cross(4, projection_dim=0)
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1"):
        Cross(0)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1"):
        CrossNetwork(4, 0)
    layer = Cross(4)
    with pytest.raises(ValueError, match=r"Cross expects inputs of width 4, got x0 of shape \[2, 3\]"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        layer(torch.zeros(2, 4), torch.zeros(3, 4))


def test_dot_interaction_order_and_values() -> None:
    e0, e1, e2 = T([[1.0, 0.0]]), T([[2.0, 3.0]]), T([[-1.0, 1.0]])
    # TFRS order: (1,0), (2,0), (2,1)
    out = DotInteraction()([e0, e1, e2])
    assert torch.equal(out, T([[2.0, -1.0, 1.0]]))
    stacked = torch.stack([e0, e1, e2], dim=1)
    assert torch.equal(DotInteraction()(stacked), out)
    # with self-interaction: (0,0), (1,0), (1,1), (2,0), (2,1), (2,2)
    full = DotInteraction(self_interaction=True)(stacked)
    assert torch.equal(full, T([[1.0, 2.0, 13.0, -1.0, 1.0, 2.0]]))
    assert DotInteraction().out_dim(3) == 3 and DotInteraction(True).out_dim(3) == 6


def test_dot_interaction_shapes_gradcheck_and_errors() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 5, 4, dtype=torch.float64, requires_grad=True)
    assert DotInteraction()(x).shape == (7, 10)
    torch.autograd.gradcheck(DotInteraction(), (x,))
    with pytest.raises(ValueError, match="one shape"):
        DotInteraction()([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="at least one"):
        DotInteraction()([])
    with pytest.raises(ValueError, match=r"\[batch, F, d\]"):
        DotInteraction()(torch.zeros(2, 3))
    assert tr.Cross is Cross and tr.DotInteraction is DotInteraction


TFRS = json.loads((Path(__file__).parent / "data" / "tfrs_cross_dot.json").read_text())


@pytest.mark.parametrize("case", ["full", "low", "nobias"])
def test_cross_reproduces_tfrs_outputs_with_its_weights(case: str) -> None:
    """TFRS 0.7.7's own dcn.Cross outputs (tests/data/make_tfrs_cross_dot.py), its Keras kernels transposed."""
    recorded = TFRS[case]
    layer = Cross(6, **recorded["kw"])
    weights = [T(w) for w in recorded["weights"]]
    with torch.no_grad():
        if layer.projection_dim is None:
            layer.dense.weight.copy_(weights[0].T)
            if layer.use_bias:
                layer.dense.bias.copy_(weights[1])
        else:
            layer.dense_u.weight.copy_(weights[0].T)
            layer.dense_v.weight.copy_(weights[1].T)
            layer.dense_v.bias.copy_(weights[2])
    assert len(weights) == sum(1 for _ in layer.parameters())
    assert torch.allclose(layer(T(TFRS["x0"]), T(TFRS["x"])), T(recorded["y"]), atol=1e-5)


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_reproduces_tfrs_order(self_interaction: bool) -> None:
    features = [T(f) for f in TFRS["feats"]]
    expected = T(TFRS[f"dot_{self_interaction}"])
    assert torch.allclose(DotInteraction(self_interaction)(features), expected, atol=1e-5)
