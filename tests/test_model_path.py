"""One model path: any towerrec.Model trains with the Trainer, from dicts, DataFrames, Datasets or prepared data."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError, TowerrecError
from towerrec.layers.embedding import embedding
from towerrec.model import MODEL_REGISTRY, Model, RetrievalModel, class_name
from towerrec.models.two_tower import build_two_tower
from towerrec.tasks.retrieval import Retrieval
from towerrec.train.prepared import prepare
from towerrec.train.trainer import Callback, Trainer

NUM_USERS, NUM_ITEMS = 40, 30


class DotModel(RetrievalModel):
    """A hand-written retrieval model, as a TFRS user would write one."""

    def __init__(self, num_users: int, num_items: int, dim: int = 8, plain_init: bool = False) -> None:
        super().__init__()
        if plain_init:
            self.user, self.item = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        else:
            self.user, self.item = embedding(num_users, dim), embedding(num_items, dim)
        self.task = Retrieval()

    def query_embeddings(self, batch):
        return self.user(batch["user"])

    def candidate_embeddings(self, batch):
        return self.item(batch["item"])

    def compute_loss(self, batch):
        return self.task(self.query_embeddings(batch), self.candidate_embeddings(batch), candidate_ids=batch["item"])


def _pairs(n: int = 600, seed: int = 0) -> dict[str, torch.Tensor]:
    """Users like items with the same parity: learnable structure."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(NUM_USERS, (n,), generator=g)
    items = (torch.randint(NUM_ITEMS // 2, (n,), generator=g) * 2 + users % 2) % NUM_ITEMS
    return {"user": users, "item": items}


def _quiet(**kwargs):
    return {"progress": False, "batch_size": 64, "learning_rate": 0.05, **kwargs}


def test_a_custom_model_trains_from_a_dict_with_callbacks_and_a_scheduler():
    model = DotModel(NUM_USERS, NUM_ITEMS)
    seen: dict[str, list] = {"begin": [], "batch": [], "epoch": [], "end": []}

    class Recorder(Callback):
        def on_train_begin(self, trainer):
            seen["begin"].append(trainer.optimizer.param_groups[0]["lr"])

        def on_batch_end(self, trainer, step, loss):
            seen["batch"].append(loss)

        def on_epoch_end(self, trainer, epoch, record):
            seen["epoch"].append((epoch, trainer.optimizer.param_groups[0]["lr"], record["loss"]))

        def on_train_end(self, trainer, result):
            seen["end"].append(len(result.history))

    trainer = Trainer(model, _pairs(), epochs=4, callbacks=[Recorder()],
                      scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), **_quiet())
    result = trainer.fit()
    assert seen["begin"] == [0.05] and seen["end"] == [4]
    assert len(seen["batch"]) == 4 * 10  # 600 examples / 64 per batch -> 10 steps an epoch
    assert [lr for _, lr, _ in seen["epoch"]] == pytest.approx([0.025, 0.0125, 0.00625, 0.003125])
    losses = [loss for _, _, loss in seen["epoch"]]
    assert losses[-1] < losses[0]
    assert result.examples_per_s > 0


def test_a_callback_can_stop_training():
    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, epoch, record):
            trainer.stop_training = epoch >= 2

    result = Trainer(DotModel(NUM_USERS, NUM_ITEMS), _pairs(), epochs=5, callbacks=[StopAfterTwo()], **_quiet()).fit()
    assert len(result.history) == 2 and result.stopped_early


def test_a_custom_model_resumes_exactly_with_its_scheduler(tmp_path):
    def trainer(epochs, model, folder):
        return Trainer(model, _pairs(), epochs=epochs, checkpoint_dir=folder, optimizer="adagrad",
                       scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7), **_quiet())

    torch.manual_seed(1)
    straight = DotModel(NUM_USERS, NUM_ITEMS)
    trainer(3, straight, None).fit()
    torch.manual_seed(1)
    first = DotModel(NUM_USERS, NUM_ITEMS)
    trainer(2, first, tmp_path / "ckpt").fit()
    torch.manual_seed(2)  # a new process starts from other weights; the checkpoint restores them
    resumed = DotModel(NUM_USERS, NUM_ITEMS)
    result = trainer(3, resumed, tmp_path / "ckpt").fit()
    assert result.resumed_from_epoch == 2
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)


@pytest.mark.parametrize("kind", ["polars", "pandas"])
def test_dataframes_of_numeric_columns_train(kind):
    pairs = {k: v.numpy() for k, v in _pairs().items()}
    if kind == "pandas":
        pd = pytest.importorskip("pandas")
        frame = pd.DataFrame(pairs)
    else:
        frame = pl.DataFrame(pairs)
    result = Trainer(DotModel(NUM_USERS, NUM_ITEMS), frame, epochs=1, **_quiet()).fit()
    assert result.history[0]["loss"] > 0


def test_a_string_column_is_refused_at_construction():
    frame = pl.DataFrame({"user": ["a", "b"], "item": [1, 2]})
    with pytest.raises(TypeError, match="training column 'user' holds"):
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), frame, **_quiet())


def test_a_model_that_does_not_fit_the_data_fails_at_construction_not_after_an_epoch():
    with pytest.raises(TowerrecError, match=r"compute_loss fails on the first batch.*KeyError") as info:
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), {"user_id": torch.zeros(5, dtype=torch.int64)}, **_quiet())
    assert "user_id" in info.value.hint


def test_construction_errors_name_what_is_wrong():
    pairs = _pairs()
    with pytest.raises(TypeError, match="towerrec.Model"):
        Trainer(nn.Linear(2, 2), pairs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same number of rows"):
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), {"user": pairs["user"], "item": pairs["item"][:5]}, **_quiet())
    with pytest.raises(TypeError, match="holds none of the model's parameters"):
        other = DotModel(NUM_USERS, NUM_ITEMS)
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), pairs, optimizer=torch.optim.SGD(other.parameters(), lr=0.1),
                progress=False)
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), pairs, epochs=0, progress=False)
    with pytest.raises(ConfigError, match="needs a validation split"):
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), pairs, early_stopping_patience=2, **_quiet())
    with pytest.raises(TypeError, match="cannot read"):
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), [1, 2, 3], progress=False)


def test_evaluate_names_a_misspelt_split_and_runs_the_users_evaluate_function_as_validation():
    calls = []
    trainer = Trainer(DotModel(NUM_USERS, NUM_ITEMS), _pairs(), evaluate=lambda m: calls.append(m) or {"score": 1.0},
                      **_quiet())
    with pytest.raises(ValueError, match="split must be one of 'validation', 'test', got 'tst'"):
        trainer.evaluate("tst")
    assert trainer.evaluate("validation") == {"score": 1.0} and len(calls) == 1
    assert trainer.evaluate("test") is None and len(calls) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_an_absent_gpu_is_a_clear_error():
    with pytest.raises(TowerrecError, match="'cuda' is not available"):
        Trainer(DotModel(NUM_USERS, NUM_ITEMS), _pairs(), device="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_a_gpu_moves_the_model_and_every_batch():
    model = DotModel(NUM_USERS, NUM_ITEMS)
    Trainer(model, _pairs(), device="cuda", epochs=1, **_quiet()).fit()
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_the_device_argument_reaches_the_model_and_the_batches(monkeypatch):
    """On CPU: a model built elsewhere is moved to the trainer's device, and every batch goes there too."""
    moved: list[torch.device] = []
    model = DotModel(NUM_USERS, NUM_ITEMS)
    original = model.compute_loss

    def spy(batch):
        moved.extend(v.device for v in batch.values())
        return original(batch)

    monkeypatch.setattr(model, "compute_loss", spy)
    trainer = Trainer(model, _pairs(), device=torch.device("cpu"), epochs=1, **_quiet())
    trainer.fit()
    assert trainer.device == torch.device("cpu") and model.device == torch.device("cpu")
    assert moved and all(d == torch.device("cpu") for d in moved)


def test_plain_nn_embedding_init_gets_a_warning_and_towerrec_layers_do_not():
    with pytest.warns(UserWarning, match=r"embedding 'user' has PyTorch's default N\(0, 1\) init"):
        Trainer(DotModel(NUM_USERS * 10, NUM_ITEMS * 10, plain_init=True), _pairs(), **_quiet())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(DotModel(NUM_USERS * 10, NUM_ITEMS * 10), _pairs(), **_quiet())


def test_models_record_their_constructor_and_are_registered():
    model = DotModel(NUM_USERS, NUM_ITEMS, dim=4)
    assert model.get_config() == {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "dim": 4}
    assert MODEL_REGISTRY[class_name(DotModel)] is DotModel
    again = DotModel.from_config(model.get_config())
    assert again.user.weight.shape == model.user.weight.shape

    class Holder(Model):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    with pytest.raises(TypeError, match=r"\['inner'\] are not JSON values"):
        Holder(nn.Linear(2, 2)).get_config()


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(120, 60, 3000, seed=5)


def test_a_two_tower_model_trains_from_a_towerrec_dataset_with_full_catalogue_evaluation(synthetic):
    config = small_config({"data": {"dataset": "synthetic"},
                               "model": {"query_features": ["user_id"], "candidate_features": ["item_id"],
                                         "embedding_dim": 8}})
    data = prepare(config, synthetic, progress=False)
    model = build_two_tower(data.features, embedding_dim=8)
    result = Trainer(model, synthetic, epochs=2, eval_every=1, ks=(10,), **_quiet()).fit()
    assert "test/top_10_accuracy" in result.history[-1]
    other = build_two_tower(prepare(config, make_synthetic(50, 20, 400, seed=1), progress=False).features)
    with pytest.raises(TypeError, match="built for other data"):
        Trainer(other, synthetic, **_quiet())


def test_prepared_data_gives_the_same_loss_through_compute_loss_as_the_fused_unique_softmax(synthetic):
    """The two-tower model's compute_loss is the exact in-batch softmax of the B x B formulation."""
    config = small_config({"data": {"dataset": "synthetic"},
                               "model": {"query_features": ["user_id"], "candidate_features": ["item_id"],
                                         "embedding_dim": 8}})
    data = prepare(config, synthetic, progress=False)
    task = Retrieval(temperature=0.5)
    model = build_two_tower(data.features, embedding_dim=8, task=task)
    model.set_catalogue(data.catalogue, data.item_counts)
    index = torch.arange(256)
    batch = data.train.select(index)
    targets = data.train.targets[index]
    fast = model.compute_loss({**batch, "candidate_index": targets})
    query = model.query_embeddings(batch)
    candidates = model.candidate_embeddings({k: v[targets] for k, v in data.catalogue.items()})
    slow = task(query, candidates, candidate_ids=targets, candidate_log_q=model.candidate_log_q[targets])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert np.isfinite(fast.item())


def test_feature_specs_in_a_model_config_train_and_round_trip_through_toml(synthetic, tmp_path):
    """FeatureSpec objects (Python) and spec tables (TOML) are features like the built-in names."""
    from towerrec.config import ModelConfig, RunConfig, load_config
    from towerrec.features.spec import FeatureSpec
    from towerrec.runs import load_run, train_run

    hashed = FeatureSpec(name="user_hashed", side="query", kind="hashed", column="user_id", num_buckets=64)
    config = RunConfig(name="spec", model=ModelConfig(query_features=("user_id", hashed), candidate_features=("item_id",),
                                                      embedding_dim=8, layer_sizes=(8,), similarity="dot"))
    config = config.replace(data={"dataset": "synthetic"}, train={"epochs": 1, "batch_size": 256})
    result = train_run(config, runs_root=tmp_path, dataset=synthetic, progress=False, log=lambda *_: None)
    assert "user_hashed" in load_run(result.run_dir).model.query_tower.names
    again = load_config(result.run_dir / "config.toml")  # the spec is written as a TOML table and read back
    assert again.to_dict()["model"] == config.to_dict()["model"]
    with pytest.raises(ConfigError, match="whose side is 'query'"):
        prepare(config.replace(model={"candidate_features": ["item_id", hashed]}), synthetic, progress=False)
    with pytest.raises(ConfigError, match="entries must be feature names or tables"):
        small_config({"model": {"query_features": ["user_id", 3]}})


def test_logq_without_item_counts_warns_once_and_the_catalogue_embeds_in_one_call(synthetic):
    config = small_config({"data": {"dataset": "synthetic"},
                           "model": {"query_features": ["user_id"], "candidate_features": ["item_id"],
                                     "embedding_dim": 8}})
    data = prepare(config, synthetic, progress=False)
    model = build_two_tower(data.features, embedding_dim=8)
    model.set_catalogue(data.catalogue)  # no item counts
    batch = {**data.train.select(torch.arange(64)), "candidate_index": data.train.targets[:64]}
    with pytest.warns(UserWarning, match="no item counts"):
        model.compute_loss(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.compute_loss(batch)  # once per model
    embeddings = model.catalogue_embeddings(chunk_size=7)
    assert embeddings.shape == (data.num_items, 8)
    torch.testing.assert_close(embeddings, model.candidate_embeddings(data.catalogue))
