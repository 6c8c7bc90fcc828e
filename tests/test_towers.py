"""Towers, the two-tower model and one honest gradient step."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from towerrec.errors import ConfigError
from towerrec.features import FeatureSet, InputSpec
from towerrec.models import Tower, TwoTowerModel, build_two_tower

USER = InputSpec("user_id", "id", 20, 1)
TITLE = InputSpec("title", "text", 30, 5)
TS = InputSpec("ts", "normalized", 0, 1)


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "user_id": torch.randint(0, 20, (n,), generator=g),
        "title": torch.randint(0, 30, (n, 5), generator=g),
        "ts": torch.randn(n, 1, generator=g),
        "other_side": torch.zeros(n),  # extra keys are ignored
    }


def test_single_id_tower_is_the_embedding() -> None:
    tower = Tower([USER])
    x = batch()
    assert tower.out_dim == 32
    assert torch.equal(tower(x), tower.embeddings["user_id"].table.weight[x["user_id"]])


def test_tower_shapes_with_and_without_mlp() -> None:
    concat = Tower([USER, TITLE, TS], embedding_dim=8)
    assert concat.out_dim == 8 + 8 + 1 and concat(batch()).shape == (4, 17)
    deep = Tower([USER, TITLE, TS], embedding_dim=8, layer_sizes=[64, 32])
    assert deep.out_dim == 32 and deep(batch()).shape == (4, 32)


def test_tower_errors_and_dtype() -> None:
    with pytest.raises(ConfigError):
        Tower([])
    with pytest.raises(KeyError, match="user_id"):
        Tower([USER])({"ts": torch.zeros(2, 1)})
    double = Tower([USER, TS], layer_sizes=[4]).double()
    assert double(batch()).dtype == torch.float64  # the float32 numeric column follows the model


def test_two_tower_dims_must_match() -> None:
    with pytest.raises(ConfigError, match="32 dims.*16"):
        TwoTowerModel(Tower([USER]), Tower([TITLE], embedding_dim=16))
    with pytest.raises(ConfigError, match="similarity"):
        TwoTowerModel(Tower([USER]), Tower([TITLE]), similarity="l2")  # type: ignore[arg-type]


def test_cosine_scores_are_bounded() -> None:
    model = TwoTowerModel(Tower([USER], layer_sizes=[8]), Tower([TITLE], layer_sizes=[8]), "cosine")
    q, c = model(batch(16), batch(16))
    scores = model.score(q, c)
    assert scores.shape == (16, 16)
    assert scores.abs().max() <= 1.0 + 1e-6
    assert torch.allclose(q.norm(dim=1), torch.ones(16))


def test_build_and_one_gradient_step_reduces_in_batch_loss() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 64
    train = pl.DataFrame(
        {
            "user_id": rng.integers(0, 16, n),
            "item_id": rng.integers(0, 16, n),
            "rating": pl.Series(np.ones(n), dtype=pl.Float32),
            "timestamp": rng.integers(0, 1000, n),
        }
    )
    fitted = FeatureSet(["user_id", "timestamp", "item_id"]).fit(train)
    model = build_two_tower(fitted, embedding_dim=8, layer_sizes=[16, 8])
    queries = fitted.encode_queries(train)
    cands = {k: v[fitted.item_index(train["item_id"])] for k, v in fitted.encode_candidates().items()}
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)

    def loss() -> torch.Tensor:
        q, c = model(queries, cands)
        return F.cross_entropy(model.score(q, c), torch.arange(n))

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss().item() < before.item()


def test_build_needs_both_sides() -> None:
    train = pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [1.0, 1.0], "timestamp": [0, 1]})
    with pytest.raises(ConfigError, match="no candidate features"):
        build_two_tower(FeatureSet(["user_id"]).fit(train))
