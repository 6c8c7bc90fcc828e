"""The ranking kind on the one model path: DeepRankingModel, ranking data and labels, config, runs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

import towerrec as tr
from config_helpers import small_config
from towerrec.config import RunConfig, config_from_dict
from towerrec.data.synthetic import make_synthetic
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, DataError
from towerrec.features.spec import InputSpec
from towerrec.model import CANDIDATE_INDEX, LABEL, USER_ROW
from towerrec.models.ranking import DeepRankingModel
from towerrec.runs import load_run, train_run
from towerrec.train.batches import RankingBatches, for_config
from towerrec.train.models import build_model
from towerrec.train.prepared import prepare
from towerrec.train.trainer import Trainer

QUERY = [InputSpec("user_id", "id", 5, 1), InputSpec("user_age", "normalized", 0, 1)]
CANDIDATE = [InputSpec("item_id", "id", 7, 1), InputSpec("genres", "multi", 4, 3)]
CATALOGUE = {"item_id": torch.arange(1, 7).clamp(max=6), "genres": torch.randint(0, 4, (6, 3))}


def _batch(shape=(3,)):
    index = torch.randint(0, 6, shape)
    return {"user_id": torch.tensor([1, 2, 3]), "user_age": torch.tensor([[0.5], [-1.0], [0.0]]),
            USER_ROW: torch.tensor([0, 1, -1]), CANDIDATE_INDEX: index, LABEL: torch.rand(shape) * 4 + 1}


def _model(**kwargs) -> DeepRankingModel:
    model = DeepRankingModel(QUERY, CANDIDATE, embedding_dim=4, layer_sizes=[8], **kwargs)
    model.set_catalogue(CATALOGUE)
    return model


@pytest.mark.parametrize("interaction, extra", [("none", {}), ("cross", {"cross_layers": 2}),
                                                ("cross", {"projection_dim": 2, "diag_scale": 0.5}), ("dot", {})])
@pytest.mark.parametrize("shape", [(3,), (3, 5)])
def test_scores_follow_candidate_index_and_loss_trains(interaction, extra, shape):
    torch.manual_seed(0)
    model = _model(interaction=interaction, num_users=3, num_items=6, label_offset=3.0, **extra)
    batch = _batch(shape)
    assert model.score(batch).shape == shape
    loss = model.compute_loss(batch)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "user_bias" not in n)


def test_a_list_scores_each_candidate_as_a_single_row_does():
    torch.manual_seed(0)
    model = _model(interaction="dot").eval()
    batch = _batch((3, 4))
    lists = model.score(batch)
    for j in range(4):
        single = model.score({**batch, CANDIDATE_INDEX: batch[CANDIDATE_INDEX][:, j]})
        torch.testing.assert_close(lists[:, j], single)


def test_biases_and_offset_add_to_the_score():
    model = _model(num_users=3, num_items=6, label_offset=3.5).eval()
    batch = _batch()
    with torch.no_grad():
        before = model.score(batch)
        model.item_bias.weight[batch[CANDIDATE_INDEX][0]] += 1.0
        model.user_bias.weight[1] += 2.0  # user row 0 (row 0 of the table is for unknown users)
        after = model.score(batch)
    assert float(after[0] - before[0]) == pytest.approx(3.0)
    unknown = 2  # user_row -1: no user bias
    assert float(after[unknown] - before[unknown]) == pytest.approx(
        float((batch[CANDIDATE_INDEX][unknown] == batch[CANDIDATE_INDEX][0]).float()))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _model(interaction="cross", projection_dim=3, num_users=3, num_items=6, label_offset=2.0)
    tr.save(model, tmp_path / "m")
    again = tr.load(tmp_path / "m")
    again.set_catalogue(CATALOGUE)
    batch = _batch((3, 2))
    torch.testing.assert_close(again.score(batch), model.eval().score(batch))
    assert again.get_config() == model.get_config()


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match="interaction 'wide'"):
        DeepRankingModel(QUERY, CANDIDATE, interaction="wide")
    with pytest.raises(ConfigError, match="projection_dim = 4 needs interaction = 'cross'"):
        DeepRankingModel(QUERY, CANDIDATE, projection_dim=4)
    with pytest.raises(ConfigError, match="at least two features"):
        DeepRankingModel([QUERY[1]], [], interaction="dot")
    with pytest.raises(RuntimeError, match="set_catalogue"):
        DeepRankingModel(QUERY, CANDIDATE).score(_batch())


# -- config ---------------------------------------------------------------------------------------

def test_ranking_settings_do_not_move_other_kinds_hashes():
    base = RunConfig()
    changed = base.replace(model={"interaction": "cross", "cross_layers": 3, "diag_scale": 0.1},
                           ranking={"loss": "listmle", "list_size": 7}, tasks={"ranking": 2.0})
    assert changed.hash() == base.hash()
    ranking = base.replace(model={"kind": "ranking"})
    assert ranking.replace(ranking={"loss": "hinge"}).hash() != ranking.hash()
    assert ranking.replace(model={"interaction": "dot"}).hash() != ranking.hash()
    assert ranking.replace(task={"temperature": 0.5}).hash() == ranking.hash()  # the retrieval loss is not read


@pytest.mark.parametrize("values, message", [
    ({"ranking": {"loss": "pointwise"}}, r"\[ranking\] loss = 'pointwise' is not one of"),
    ({"ranking": {"loss": "bce"}}, r'\[ranking\] loss = "bce" needs 0/1 labels'),
    ({"ranking": {"negatives": 4}}, r"\[ranking\] negatives = 4 needs \[ranking\] label = \"binary\""),
    ({"ranking": {"rating_min": 5, "rating_max": 1}}, r"\[ranking\] rating_min must be below rating_max"),
    ({"ranking": {"list_size": 1}}, r"\[ranking\] list_size must be an integer in 2\.\.10000, got 1"),
    ({"ranking": {"loss": "listmle", "margin": 0.5}}, r'\[ranking\] margin = 0.5 applies to loss = "hinge" only'),
    ({"ranking": {"mean_offset": True, "loss": "softmax"}}, r"\[ranking\] mean_offset .* needs loss = \"mse\""),
    ({"model": {"interaction": "fnn"}}, r"\[model\] interaction = 'fnn' is not one of"),
    ({"model": {"projection_dim": 8}}, r"\[model\] projection_dim = 8 needs \[model\] interaction = \"cross\""),
    ({"train": {"early_stopping_patience": 2}}, r"\[train\] early_stopping_metric 'top_100_accuracy' is not a "
                                                r"metric of this ranking run"),
])
def test_bad_ranking_config(values, message):
    values = {**values, "model": {"kind": "ranking", **values.get("model", {})}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


# -- data and runs --------------------------------------------------------------------------------

def _config(**sections) -> RunConfig:
    values = {"name": "rank", "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
              "model": {"kind": "ranking", "query_features": ["user_id"], "candidate_features": ["item_id"],
                        "embedding_dim": 8, "layer_sizes": [16]},
              "train": {"epochs": 2, "batch_size": 256, "optimizer": "adam", "learning_rate": 0.01}}
    for name, table in sections.items():
        values[name] = {**values.get(name, {}), **table}
    return small_config(values)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(120, 50, 2400, seed=5)


def test_pointwise_batches_carry_ratings_as_labels(dataset):
    config = _config()
    data = prepare(config, dataset, progress=False)
    batches = for_config(config, data)
    assert isinstance(batches, RankingBatches) and len(batches) == len(data.train)
    batch = batches.batch(torch.arange(5))
    ratings = data.split.train["rating"].to_numpy()[:5]
    np.testing.assert_allclose(batch[LABEL].numpy(), ratings)
    assert torch.equal(batch[CANDIDATE_INDEX], data.train.targets[:5])


def test_binary_labels_and_sampled_negatives(dataset):
    config = _config(ranking={"loss": "bce", "label": "binary", "threshold": 4.0, "negatives": 3})
    data = prepare(config, dataset, progress=False)
    batches = RankingBatches(data, config.ranking, seed=0)
    n = len(data.train)
    assert len(batches) == 4 * n
    labels = batches.labels
    np.testing.assert_array_equal(labels[:n].numpy(), (data.train.ratings >= 4.0).float().numpy())
    assert float(labels[n:].sum()) == 0
    seen = set(zip(data.train.user_rows.tolist(), data.train.targets.tolist()))
    negatives = zip(data.train.user_rows[batches.rows[n:]].tolist(), batches.candidates[n:].tolist())
    assert not seen & set(negatives)  # a sampled negative is never one of the user's train items


def test_train_run_end_to_end_and_load(tmp_path, dataset):
    config = _config(ranking={"user_item_bias": True, "mean_offset": True, "rating_min": 1, "rating_max": 5})
    result = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    metrics = result.metrics["test"]["ranking"]
    assert set(metrics) == {"rmse", "mae", "auc", "ndcg@5", "ndcg@10", "mrr"}
    assert 0 < metrics["rmse"] < 2 and 0 <= metrics["auc"] <= 1 and 0 < metrics["ndcg@10"] <= 1
    loaded = load_run(result.run_dir)
    assert isinstance(loaded.model, DeepRankingModel)
    data = result.data
    batch = {**data.test.select(slice(0, 8)), CANDIDATE_INDEX: data.test.targets[:8]}
    torch.testing.assert_close(loaded.model.score(batch), result.model.eval().score(batch))


def test_ranking_metrics_match_a_direct_computation(dataset):
    from towerrec.metrics.ranking import rmse
    from towerrec.train.evaluate import evaluate_ranking, ranking_scores

    config = _config(train={"epochs": 1})
    data = prepare(config, dataset, progress=False)
    model = build_model(config, data)
    Trainer.from_config(config, data, model, progress=False).fit()
    metrics = evaluate_ranking(model, data, data.test, config.ranking)
    scores = ranking_scores(model, data, data.test)
    assert metrics["rmse"] == pytest.approx(float(rmse(scores, data.test.ratings)))


def test_early_stopping_on_rmse_keeps_the_lowest(tmp_path, dataset):
    config = _config(data={"validation_fraction": 0.1}, train={"epochs": 4, "early_stopping_patience": 1,
                                                                "early_stopping_metric": "rmse", "learning_rate": 0.05})
    data = prepare(config, dataset, progress=False)
    model = build_model(config, data)
    result = Trainer.from_config(config, data, model, progress=False).fit()
    rmses = [r["validation/rmse"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmin(rmses))


def _frame_dataset(ratings) -> Dataset:
    n = len(ratings)
    frame = pl.DataFrame({"user": [i % 7 for i in range(n)], "item": [i % 11 for i in range(n)],
                          "rating": ratings})
    return Dataset.from_frame(frame.unique(["user", "item"], keep="first", maintain_order=True),
                              user="user", item="item", rating="rating")


def test_ratings_outside_the_declared_range_are_refused():
    ratings = [3.0] * 60
    ratings[10] = 9.0
    config = _config(ranking={"rating_min": 1, "rating_max": 5})
    with pytest.raises(DataError, match=r"field 'rating': rating 9 is outside the declared range 1\.\.5"):
        prepare(config, _frame_dataset(ratings), progress=False)


def test_non_finite_ratings_are_refused():
    frame = pl.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "rating": [1.0, float("nan"), 3.0],
                          "timestamp": [1, 2, 3]}, schema={"user_id": pl.Int64, "item_id": pl.Int64,
                                                           "rating": pl.Float32, "timestamp": pl.Int64})
    dataset = Dataset("nan", frame)
    with pytest.raises(DataError, match=r"field 'rating': rating nan is not a finite number"):
        prepare(_config(), dataset, progress=False)


def test_implicit_data_needs_a_binary_label():
    frame = pl.DataFrame({"user": [i % 7 for i in range(60)], "item": [i % 11 for i in range(60)]}).unique()
    dataset = Dataset.from_frame(frame, user="user", item="item")
    with pytest.raises(DataError, match=r"has no ratings \(implicit feedback\), but \[ranking\] label = \"rating\""):
        prepare(_config(), dataset, progress=False)
    config = _config(ranking={"loss": "bce", "label": "binary", "negatives": 2})
    data = prepare(config, dataset, progress=False)
    batches = RankingBatches(data, config.ranking)
    assert float(batches.labels[: len(data.train)].min()) == 1.0  # every interaction is a positive


@pytest.mark.parametrize("loss", ["softmax", "listmle", "hinge", "logistic"])
def test_listwise_losses_train_on_lists_of_each_users_rated_items(tmp_path, dataset, loss):
    config = _config(ranking={"loss": loss, "lists_per_user": 3, "list_size": 4}, train={"epochs": 1})
    data = prepare(config, dataset, progress=False)
    batches = for_config(config, data)
    batch = batches.batch(torch.arange(6))
    assert batch[CANDIDATE_INDEX].shape == (6, 4) and batch[LABEL].shape == (6, 4)
    rated = {(u, i): r for u, i, r in zip(data.train.user_rows.tolist(), data.train.targets.tolist(),
                                           data.train.ratings.tolist())}
    for user, items, labels in zip(batch[USER_ROW].tolist(), batch[CANDIDATE_INDEX].tolist(), batch[LABEL].tolist()):
        assert len(set(items)) == 4  # drawn without replacement
        assert [rated[(user, i)] for i in items] == labels  # the user's own items with their ratings
    result = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    metrics = result.metrics["test"]["ranking"]
    assert set(metrics) == {"auc", "ndcg@5", "ndcg@10", "mrr"}  # no RMSE: the scores are not ratings


def test_listwise_history_leaves_out_the_lists_items(dataset):
    config = _config(model={"query_features": ["user_id", "user_history"], "history_length": 30},
                     ranking={"loss": "softmax", "lists_per_user": 2, "list_size": 5})
    data = prepare(config, dataset, progress=False)
    with pytest.warns(UserWarning, match=r"1 user\(s\) rated fewer than \[ranking\] list_size = 5 train items"):
        batches = for_config(config, data)
    batch = batches.batch(torch.arange(10))
    history, items = batch["user_history"], batch[CANDIDATE_INDEX] + 1
    assert not (history.unsqueeze(-1) == items.unsqueeze(1)).any()
    assert (history > 0).any()


def test_a_list_longer_than_every_users_items_is_a_clear_error(dataset):
    config = _config(ranking={"loss": "listmle", "list_size": 5000})
    data = prepare(config, dataset, progress=False)
    with pytest.raises(DataError, match=r"list_size"):
        for_config(config, data)


def test_keras_init_reproduces_tfrs_defaults():
    """TFRS's tutorials: Keras Embedding uniform(-0.05, 0.05), Dense (and the DCN tutorial's Cross kernel)
    Glorot-uniform with zero biases."""
    torch.manual_seed(0)
    model = DeepRankingModel([InputSpec("user_id", "id", 500, 1)], [InputSpec("item_id", "id", 400, 1)],
                             embedding_dim=32, layer_sizes=[192, 192], interaction="cross", init="keras-uniform")
    for table in [*model.query_tables.values(), *model.candidate_tables.values()]:
        weight = table.table.weight.detach()
        assert float(weight.abs().max()) <= 0.05 and float(weight.abs().max()) > 0.045  # uniform, not normal
    linears = [m for m in [*model.mlp.modules(), *model.cross.modules()] if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4  # cross kernel, 192, 192, 1
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        weight = linear.weight.detach()
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert float(weight.abs().max()) <= limit and float(weight.abs().max()) > 0.9 * limit
        assert linear.bias is None or not linear.bias.any()


def test_embedding_l2_adds_the_squared_norm_of_the_rows_a_batch_uses():
    torch.manual_seed(0)
    model = _model(num_users=3, num_items=6, embedding_l2=0.1).eval()
    batch = _batch()
    with torch.no_grad():
        model.item_bias.weight.fill_(0.5)
        model.user_bias.weight.fill_(2.0)  # row 0 (unknown users) included: every row is looked up by index
        plain = model.task(batch[LABEL], model.score(batch))
        rows = [model.query_tables["user_id"](batch["user_id"]),
                model.candidate_tables["item_id"](CATALOGUE["item_id"][batch[CANDIDATE_INDEX]]),
                model.candidate_tables["genres"](CATALOGUE["genres"][batch[CANDIDATE_INDEX]])]
        norms = sum(r.square().sum(1) for r in rows) + 0.25 + 4.0  # user_age is a number, not a looked-up row
        assert float(model.compute_loss(batch) - plain) == pytest.approx(0.1 * float(norms.mean()), rel=1e-5)
    with pytest.raises(ConfigError, match="embedding_l2 must be a finite number >= 0"):
        _model(embedding_l2=-1.0)


def test_a_ranking_key_added_later_keeps_hashes_at_its_neutral_value():
    ranking = RunConfig().replace(model={"kind": "ranking"})
    assert ranking.replace(ranking={"embedding_l2": 0.0}).hash() == ranking.hash()
    assert ranking.replace(ranking={"embedding_l2": 0.01}).hash() != ranking.hash()


def test_mse_on_lists_as_the_listwise_tutorial_trains_it(dataset):
    config = _config(ranking={"loss": "mse", "train_on_lists": True, "lists_per_user": 2, "list_size": 3},
                     train={"epochs": 1})
    data = prepare(config, dataset, progress=False)
    batches = for_config(config, data)
    assert batches.candidates.shape == (len(batches), 3)
    model = build_model(config, data)
    trainer = Trainer.from_config(config, data, model, progress=False)
    trainer.fit()
    assert {"rmse", "mae"} <= set(trainer.evaluate("test"))  # a rating loss: the scores are ratings
