"""Feature embeddings and the dense stack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from towerrec.errors import ConfigError
from towerrec.features import InputSpec
from towerrec.layers import MLP, FeatureEmbedding


def test_id_embedding_shape_and_keras_init() -> None:
    torch.manual_seed(0)
    emb = FeatureEmbedding(InputSpec("user_id", "id", 50, 1), default_dim=32)
    out = emb(torch.tensor([0, 3, 49]))
    assert out.shape == (3, 32) and emb.out_dim == 32
    w = emb.table.weight
    assert w.abs().max() <= 0.05 and w.std() > 0.02  # uniform(-0.05, 0.05), as Keras
    normal = FeatureEmbedding(InputSpec("u", "bucketized", 11, 1, embedding_dim=8), 32, init="normal")
    assert normal(torch.tensor([1])).shape == (1, 8)


def test_normalized_passes_through_without_parameters() -> None:
    emb = FeatureEmbedding(InputSpec("ts", "normalized", 0, 1), default_dim=32)
    x = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)
    assert emb.out_dim == 1 and not list(emb.parameters())
    assert torch.equal(emb(x), x)


def test_masked_mean_ignores_padding() -> None:
    torch.manual_seed(0)
    emb = FeatureEmbedding(InputSpec("title", "text", 10, 4), default_dim=6)
    w = emb.table.weight
    x = torch.tensor([[3, 5, 0, 0], [0, 0, 0, 0], [7, 0, 0, 0]])
    out = emb(x)
    assert out.shape == (3, 6)
    assert torch.allclose(out[0], (w[3] + w[5]) / 2)
    assert torch.equal(out[1], torch.zeros(6))
    assert torch.allclose(out[2], w[7])
    with torch.no_grad():
        w[0].fill_(100.0)  # padding's row never counts, whatever it holds
    wider = FeatureEmbedding(InputSpec("title", "text", 10, 6), default_dim=6)
    wider.load_state_dict(emb.state_dict())
    padded_more = torch.tensor([[3, 5, 0, 0, 0, 0], [0] * 6, [7, 0, 0, 0, 0, 0]])
    assert torch.allclose(emb(x), out) and torch.allclose(wider(padded_more), out)


def test_padding_row_gets_no_gradient() -> None:
    emb = FeatureEmbedding(InputSpec("genres", "multi", 5, 3), default_dim=4)
    emb(torch.tensor([[1, 2, 0], [0, 0, 0]])).sum().backward()
    assert torch.equal(emb.table.weight.grad[0], torch.zeros(4))
    assert emb.table.weight.grad[1].abs().sum() > 0


def test_mlp_is_relu_between_and_linear_last() -> None:
    mlp = MLP(10, [64, 32])
    kinds = [type(m) for m in mlp.net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear] and mlp.out_dim == 32
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in mlp.net if isinstance(m, nn.Linear))
    out = mlp(torch.randn(200, 10))
    assert out.shape == (200, 32) and (out < 0).any()  # no activation on the last layer
    drop = MLP(10, [8, 4, 2], dropout=0.5)
    assert [type(m) for m in drop.net].count(nn.Dropout) == 2


def test_mlp_rejects_empty_or_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        MLP(4, [])
    with pytest.raises(ConfigError):
        MLP(4, [8, 0])
