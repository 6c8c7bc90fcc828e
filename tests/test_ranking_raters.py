"""The factorization-machine interaction and the item_raters feature of ranking models (towerrec's best ranking config)."""

from __future__ import annotations

import pytest
import torch

from config_helpers import small_config
from towerrec.config import config_from_dict
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError
from towerrec.features.spec import InputSpec
from towerrec.model import CANDIDATE_INDEX, USER_ROW
from towerrec.models.ranking import DeepRankingModel, factorization_machine
from towerrec.runs import load_run, train_run
from towerrec.train.models import build_model
from towerrec.train.prepared import item_raters, prepare

QUERY = [InputSpec("user_id", "id", 4, 1)]
CANDIDATE = [InputSpec("item_id", "id", 4, 1)]


def test_factorization_machine_sums_every_pair_of_fields():
    fields = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    # pairs: (1*3 + 2*4) + (1*5 + 2*6) + (3*5 + 4*6) = 11 + 17 + 39
    assert factorization_machine(fields).tolist() == [67.0]


def test_fm_interaction_adds_the_user_item_dot_product_unweighted():
    torch.manual_seed(0)
    model = DeepRankingModel(QUERY, CANDIDATE, embedding_dim=3, interaction="fm").eval()
    model.set_catalogue({"item_id": torch.tensor([1, 2, 3])})
    batch = {"user_id": torch.tensor([1, 2]), CANDIDATE_INDEX: torch.tensor([0, 2])}
    u = model.query_tables["user_id"](batch["user_id"])
    i = model.candidate_tables["item_id"](torch.tensor([1, 3]))
    linear = model.mlp(torch.cat([u, i], dim=1)).squeeze(-1)
    torch.testing.assert_close(model.score(batch), linear + (u * i).sum(dim=1))


def _raters_model():
    torch.manual_seed(0)
    model = DeepRankingModel(QUERY, CANDIDATE, embedding_dim=3, interaction="fm", raters_length=2,
                             raters_users=3, raters_items=3).eval()
    model.set_catalogue({"item_id": torch.tensor([1, 2, 3])})
    # item 0: rated by user rows 0 and 1; item 1: by user row 2; item 2: by nobody
    model.set_item_raters(torch.tensor([[1, 2], [3, 0], [0, 0]]))
    return model


def test_item_raters_are_the_scaled_sum_of_their_embeddings_without_the_queried_user():
    model = _raters_model()
    z = model.raters.weight
    batch = {"user_id": torch.tensor([1, 1, 1]), USER_ROW: torch.tensor([0, 2, -1]),
             CANDIDATE_INDEX: torch.tensor([0, 0, 2])}
    u = model.query_tables["user_id"](batch["user_id"])
    i = model.candidate_tables["item_id"](torch.tensor([1, 1, 3]))
    r = torch.stack([z[2], (z[1] + z[2]) / 2 ** 0.5, torch.zeros(3)])  # row 0 queries item 0: its own rating masked
    fields = torch.stack([u, i, r], dim=1)
    expected = model.mlp(torch.cat([u, i, r], dim=1)).squeeze(-1) + factorization_machine(fields)
    torch.testing.assert_close(model.score(batch), expected)


def test_item_raters_refuse_a_wrong_shape_and_a_model_without_them():
    with pytest.raises(ValueError, match=r"shaped \[3, 2\]"):
        _raters_model().set_item_raters(torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="without item raters"):
        DeepRankingModel(QUERY, CANDIDATE).set_item_raters(torch.zeros(3, 2, dtype=torch.long))


def _config(**model):
    return small_config({"name": "raters", "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
                         "model": {"kind": "ranking", "query_features": ["user_id"], "embedding_dim": 8,
                                   "candidate_features": ["item_id", "item_raters"], "layer_sizes": [],
                                   "interaction": "fm", "history_length": 5, **model},
                         "ranking": {"user_item_bias": True, "mean_offset": True},
                         "train": {"epochs": 2, "batch_size": 256, "optimizer": "adam", "learning_rate": 0.01}})


def test_item_raters_table_lists_each_items_most_recent_train_raters():
    dataset = make_synthetic(60, 30, 600, seed=3)
    data = prepare(_config(), dataset, progress=False)
    table = item_raters(data, 5)
    assert table.shape == (data.num_items, 5)
    train = data.split.train
    for item in range(3):
        rows = data.train.user_rows[data.train.targets == item]
        stamps = torch.tensor(train["timestamp"].to_numpy())[data.train.targets == item]
        newest = rows[torch.argsort(stamps, stable=True)][-5:] + 1
        assert sorted(table[item][table[item] > 0].tolist()) == sorted(newest.tolist())


def test_a_run_with_item_raters_trains_saves_and_reloads_them(tmp_path):
    dataset = make_synthetic(60, 30, 600, seed=3)
    config = _config()
    data = prepare(config, dataset, progress=False)
    assert torch.equal(build_model(config, data).item_raters, item_raters(data, 5))
    result = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    assert result.metrics["test"]["ranking"]["rmse"] < 2
    loaded = load_run(result.run_dir).model
    assert torch.equal(loaded.item_raters, result.model.item_raters)
    batch = {**result.data.test.select(slice(0, 8)), CANDIDATE_INDEX: result.data.test.targets[:8]}
    torch.testing.assert_close(loaded.score(batch), result.model.eval().score(batch))


@pytest.mark.parametrize("model, message", [
    ({"kind": "two-tower", "candidate_features": ["item_id", "item_raters"]}, "item_raters.*ranking"),
    ({"kind": "ranking", "query_features": ["user_id", "item_raters"]}, "item_raters, a candidate feature"),
])
def test_item_raters_only_as_a_ranking_candidate_feature(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model})
