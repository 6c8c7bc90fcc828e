"""The trainer and run directories on tiny synthetic data: learning, determinism, resume, reuse."""

from pathlib import Path

import pytest
import torch

from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError, TowerrecError
from towerrec.runs import load_run, train_run
from towerrec.train.evaluate import evaluate_examples
from towerrec.train.models import build_model
from towerrec.train.prepared import prepare
from towerrec.train.trainer import Trainer


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(300, 120, 9000, seed=3)


def _config(**sections):
    base = {
        "name": "t",
        "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"embedding_dim": 16},
        "task": {"temperature": 0.2},
        "train": {"epochs": 4, "batch_size": 512, "optimizer": "adam", "learning_rate": 0.02, "eval_every": 2},
        "eval": {"ks": [1, 10, 50]},
    }
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return small_config(base)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_beats_popularity(dataset, tmp_path):
    config = _config(train={"epochs": 10})
    trained = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    popular = train_run(config.replace(model={"kind": "popularity"}, name="pop"), runs_root=tmp_path,
                        dataset=dataset, progress=False, log=lambda *_: None)
    ours = trained.metrics["test"]["seen_excluded"]["top_10_accuracy"]
    base = popular.metrics["test"]["seen_excluded"]["top_10_accuracy"]
    assert ours > base * 1.1, (ours, base)


def test_same_seed_same_metrics_and_history_written(dataset, tmp_path):
    config = _config()
    a = train_run(config, runs_root=tmp_path / "a", dataset=dataset, progress=False, log=lambda *_: None)
    b = train_run(config, runs_root=tmp_path / "b", dataset=dataset, progress=False, log=lambda *_: None)
    assert a.metrics["test"] == b.metrics["test"]
    lines = (a.run_dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert "test/top_10_accuracy" in lines[1] and "test/top_10_accuracy" not in lines[0]


def test_resume_after_crash_equals_uninterrupted(dataset, tmp_path):
    config = _config()
    data = prepare(config, dataset, progress=False)
    straight = build_model(config, data)
    Trainer.from_config(config, data, straight, progress=False).fit()

    ckpt = tmp_path / "ckpt"
    first = build_model(config, data)
    Trainer.from_config(config.replace(train={"epochs": 2}), data, first, checkpoint_dir=ckpt, progress=False).fit()
    resumed = build_model(config, data)  # a fresh process would start from new weights
    result = Trainer.from_config(config, data, resumed, checkpoint_dir=ckpt, progress=False).fit()
    assert result.resumed_from_epoch == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    for name, value in _weights(straight).items():
        torch.testing.assert_close(resumed.state_dict()[name], value)


def test_finished_run_is_reused_and_retrain_trains_again(dataset, tmp_path):
    config = _config(train={"epochs": 1})
    messages = []
    first = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=messages.append)
    second = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=messages.append)
    assert second.reused and second.run_dir == first.run_dir and "reusing" in messages[-1]
    third = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, retrain=True, log=messages.append)
    assert not third.reused
    other = train_run(config.replace(model={"embedding_dim": 8}), runs_root=tmp_path, dataset=dataset,
                      progress=False, log=messages.append)
    assert other.run_dir != first.run_dir


def test_loaded_run_scores_like_the_trained_model(dataset, tmp_path):
    config = _config(train={"epochs": 2}, model={"query_features": ["user_id", "user_history"], "layer_sizes": [16]})
    result = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    loaded = load_run(result.run_dir)
    data = result.data
    expected = evaluate_examples(result.model, data, data.test, ks=(10,))
    assert evaluate_examples(loaded.model, data, data.test, ks=(10,)) == expected


def test_broken_run_directories_are_clear_errors(dataset, tmp_path):
    config = _config(train={"epochs": 1})
    result = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False, log=lambda *_: None)
    (result.run_dir / "model.safetensors").unlink()
    with pytest.raises(TowerrecError, match="model.safetensors: missing"):
        load_run(result.run_dir)
    meta = result.run_dir / "meta.json"
    meta.write_text(meta.read_text().replace('"format_version": 3', '"format_version": 99'))
    with pytest.raises(TowerrecError, match="run format 99"):
        load_run(result.run_dir)
    with pytest.raises(TowerrecError, match="no such run directory"):
        load_run(Path(tmp_path) / "nope")


def test_early_stopping_needs_validation(dataset):
    config = _config(train={"early_stopping_patience": 1, "early_stopping_metric": "top_10_accuracy"})
    data = prepare(config, dataset, progress=False)
    with pytest.raises(ConfigError, match="validation"):
        Trainer.from_config(config, data, build_model(config, data), progress=False)


def test_early_stopping_stops(dataset):
    config = _config(data={"validation_fraction": 0.1},
                     train={"epochs": 30, "eval_every": 1, "early_stopping_patience": 1, "learning_rate": 0.5,
                                            "early_stopping_metric": "top_10_accuracy"})
    data = prepare(config, dataset, progress=False)
    result = Trainer.from_config(config, data, build_model(config, data), progress=False).fit()
    assert result.stopped_early and len(result.history) < 30
    assert "validation/top_10_accuracy" in result.history[0]


def test_hard_negative_path_trains(dataset):
    config = _config(task={"num_hard_negatives": 10}, train={"epochs": 1})
    data = prepare(config, dataset, progress=False)
    result = Trainer.from_config(config, data, build_model(config, data), progress=False).fit()
    assert result.history[0]["loss"] > 0


def test_a_non_finite_loss_stops_training_before_the_step(dataset, monkeypatch):
    """field-03: training never runs an epoch on NaN; the weights stay as they were."""
    config = _config(train={"epochs": 1})
    data = prepare(config, dataset, progress=False)
    model = build_model(config, data)
    before = _weights(model)
    trainer = Trainer.from_config(config, data, model, progress=False)
    monkeypatch.setattr(trainer, "batch_loss", lambda index, generator=None: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TowerrecError, match=r"epoch 1, batch 1: the training loss is nan") as info:
        trainer.fit()
    assert "learning_rate" in info.value.hint
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Scripted(Trainer):
    """A trainer whose validation metric follows a script; it records the weights at each evaluation."""

    def __init__(self, config, data, model, *, script, crash_at=None, **kwargs):
        t = config.train
        super().__init__(model, data, epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer,
                         learning_rate=t.learning_rate, seed=t.seed, eval_every=t.eval_every, ks=config.eval.ks,
                         early_stopping_patience=t.early_stopping_patience,
                         early_stopping_metric=t.early_stopping_metric, **kwargs)
        self.script, self.crash_at, self.seen = script, crash_at, {}

    def evaluate(self, split="test"):
        epoch = len(self.seen) + 1 + getattr(self, "offset", 0)
        if epoch == self.crash_at:
            raise KeyboardInterrupt
        self.seen[epoch] = _weights(self.model)
        return {"top_10_accuracy": self.script[epoch - 1], "top_1_accuracy": 0.0}


def _scripted_config(epochs, patience=2):
    return _config(data={"validation_fraction": 0.1},
                   train={"epochs": epochs, "eval_every": 1, "early_stopping_patience": patience,
                          "early_stopping_metric": "top_10_accuracy"})


def test_early_stopping_restores_the_best_epoch_and_stops_early(dataset):
    config = _scripted_config(epochs=10)
    data = prepare(config, dataset, progress=False)
    trainer = _Scripted(config, data, build_model(config, data), progress=False, script=[0.1, 0.5, 0.3, 0.2] + [0.0] * 6)
    result = trainer.fit()
    assert len(result.history) == 4 and result.stopped_early and result.best_epoch == 2
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, trainer.seen[2][name]), name  # epoch 2's weights, not epoch 4's
    assert any(not torch.equal(trainer.seen[2][n], trainer.seen[4][n]) for n in trainer.seen[2])


def test_patience_running_out_on_the_last_epoch_is_not_stopping_early(dataset):
    config = _scripted_config(epochs=4)
    data = prepare(config, dataset, progress=False)
    trainer = _Scripted(config, data, build_model(config, data), progress=False, script=[0.1, 0.5, 0.3, 0.2])
    result = trainer.fit()
    assert len(result.history) == 4 and not result.stopped_early and result.best_epoch == 2
    assert all(torch.equal(v, trainer.seen[2][k]) for k, v in trainer.model.state_dict().items())
    # without early stopping the last epoch's weights stay
    plain = _config(data={"validation_fraction": 0.1}, train={"epochs": 2, "eval_every": 1})
    plain_trainer = _Scripted(plain, data, build_model(plain, data), progress=False, script=[0.5, 0.1])
    assert plain_trainer.fit().best_epoch is None
    assert all(torch.equal(v, plain_trainer.seen[2][k]) for k, v in plain_trainer.model.state_dict().items())


def test_resumed_run_still_restores_the_best_epoch(dataset, tmp_path):
    config = _scripted_config(epochs=10)
    data = prepare(config, dataset, progress=False)
    script = [0.1, 0.5, 0.3, 0.2] + [0.0] * 6
    first = _Scripted(config, data, build_model(config, data), progress=False, script=script, crash_at=4,
                      checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = _Scripted(config, data, build_model(config, data), progress=False, script=script,
                       checkpoint_dir=tmp_path / "ckpt")
    second.offset = 3  # resumes after epoch 3
    result = second.fit()
    assert result.resumed_from_epoch == 3 and result.best_epoch == 2 and result.stopped_early
    assert all(torch.equal(v, first.seen[2][k]) for k, v in second.model.state_dict().items())
    assert [p.name for p in (tmp_path / "ckpt").glob("best-epoch-*")] == ["best-epoch-0002.safetensors"]


def test_a_damaged_best_epoch_file_is_one_clear_error(dataset, tmp_path):
    config = _scripted_config(epochs=10)
    data = prepare(config, dataset, progress=False)
    script = [0.1, 0.5, 0.3, 0.2] + [0.0] * 6
    first = _Scripted(config, data, build_model(config, data), progress=False, script=script, crash_at=4,
                      checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    (tmp_path / "ckpt" / "best-epoch-0002.safetensors").write_bytes(b"not a safetensors file")
    second = _Scripted(config, data, build_model(config, data), progress=False, script=script,
                       checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(TowerrecError, match="best-epoch-0002.safetensors: the best epoch's weights are damaged"):
        second.fit()
