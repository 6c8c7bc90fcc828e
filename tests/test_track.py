"""Experiment tracking (towerrec.track): what TensorBoard and MLflow hold after a run, read back with their own
readers (EventAccumulator, MlflowClient); tracked CLI and experiment runs; "none" writes nothing; bad input."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from cli_helpers import run_cli_text as run_cli
from towerrec.config import config_from_dict
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError, TowerrecError
from towerrec.runs import train_run
from towerrec.track import (TrackingWarning, flatten_metrics, mlflow_key, open_tracker, run_metrics,
                            tracker_callbacks)
from towerrec.train.trainer import Callback

QUIET = {"progress": False, "log": lambda *_: None}
EPOCHS = 3


pytestmark = pytest.mark.usefixtures("home")  # a fresh TOWERREC_HOME per test (conftest.py)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(60, 50, 1200, seed=11)


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory) -> Path:
    """One MLflow store for the module (creating its SQLite tables takes seconds); tests use their own experiments."""
    return tmp_path_factory.mktemp("mlflow") / "track"


def _config(name: str, backend: str, track_dir: Path, **track) -> object:
    return config_from_dict({
        "name": name, "model": {"embedding_dim": 8}, "data": {"validation_fraction": 0.1},
        "train": {"epochs": EPOCHS, "batch_size": 128, "eval_every": 2}, "eval": {"ks": [1, 10]},
        "track": {"backend": backend, "dir": str(track_dir), **track},
    })


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _client(track_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{track_dir.absolute() / 'mlflow.db'}")


def _runs(client, experiment: str) -> dict:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


# ------------------------------------------------------------------------------ TensorBoard


def test_tensorboard_holds_each_epoch_the_config_and_the_final_metrics(tmp_path, dataset):
    config = _config("tb", "tensorboard", tmp_path / "track")
    result = train_run(config, runs_root=tmp_path / "runs", dataset=dataset,
                       callbacks=tracker_callbacks(config.track, run_name="first", config=config), **QUIET)
    history = _history(result.run_dir)
    events = _events(tmp_path / "track" / "tb" / "first")
    losses = events.Scalars("loss")
    assert [s.step for s in losses] == [1, 2, 3]
    assert [s.value for s in losses] == pytest.approx([r["loss"] for r in history], rel=1e-6)
    assert [s.step for s in events.Scalars("examples_per_s")] == [1, 2, 3]
    evaluated = [r for r in history if "validation/top_10_accuracy" in r]  # epochs 2 and 3 (the last)
    assert [s.step for s in events.Scalars("validation/top_10_accuracy")] == [r["epoch"] for r in evaluated] == [2, 3]
    assert [s.value for s in events.Scalars("validation/top_10_accuracy")] == pytest.approx(
        [r["validation/top_10_accuracy"] for r in evaluated], rel=1e-6)
    final = events.Scalars("test.seen_excluded.top_10_accuracy")
    assert [s.value for s in final] == pytest.approx([result.metrics["test"]["seen_excluded"]["top_10_accuracy"]])
    assert events.Scalars("validation.tfrs.mrr")[0].value == pytest.approx(result.metrics["validation"]["tfrs"]["mrr"])
    assert events.Scalars("run.epochs_run")[0].value == EPOCHS
    tensors = events.Tags()["tensors"]
    assert "config/text_summary" in tensors and "run/text_summary" in tensors
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]  # the config as hparams
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["model.embedding_dim"].number_value == 8 and hparams["eval.ks"].string_value == "[1, 10]"
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "embedding_dim = 8" in text


def test_a_second_run_of_a_name_gets_its_own_folder_and_a_reused_run_logs_no_epochs(tmp_path, dataset):
    config = _config("again", "tensorboard", tmp_path / "track")
    for _ in range(2):
        result = train_run(config, runs_root=tmp_path / "runs", dataset=dataset,
                           callbacks=tracker_callbacks(config.track, run_name="r", config=config), **QUIET)
    assert result.reused
    folders = sorted(p.name for p in (tmp_path / "track" / "again").iterdir())
    assert folders == ["r", "r-2"]
    reused = _events(tmp_path / "track" / "again" / "r-2")
    assert "loss" not in reused.Tags()["scalars"]
    assert reused.Scalars("test.tfrs.top_10_accuracy")[0].value == pytest.approx(
        result.metrics["test"]["tfrs"]["top_10_accuracy"])


def test_a_failing_write_warns_once_and_training_goes_on(tmp_path, dataset):
    config = _config("broken", "tensorboard", tmp_path / "track")
    callbacks = tracker_callbacks(config.track, run_name="r", config=config)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        raise OSError("disk full")

    callbacks[0].tracker.writer.add_scalar = failing
    with pytest.warns(TrackingWarning, match=r"could not log the epoch's values: disk full; training goes on") as caught:
        result = train_run(config, runs_root=tmp_path / "runs", dataset=dataset, callbacks=callbacks, **QUIET)
    assert len([w for w in caught if w.category is TrackingWarning]) == 1
    assert len(calls) == 1  # later writes are skipped
    assert len(_history(result.run_dir)) == EPOCHS and "test" in result.metrics
    assert callbacks[0].tracker.closed


# ----------------------------------------------------------------------------------- MLflow


def test_mlflow_holds_params_metric_history_final_metrics_and_the_config(tmp_path, dataset, mlflow_dir):
    config = _config("ml", "mlflow", mlflow_dir)
    result = train_run(config, runs_root=tmp_path / "runs", dataset=dataset,
                       callbacks=tracker_callbacks(config.track, run_name="one", config=config), **QUIET)
    client = _client(mlflow_dir)
    run = _runs(client, "ml")["one"]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.epochs"] == str(EPOCHS) and params["model.embedding_dim"] == "8"
    assert params["model.query_features"] == '["user_id", "user_history"]' and params["name"] == "ml"
    history = _history(result.run_dir)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in losses) == [(r["epoch"], pytest.approx(r["loss"])) for r in history]
    top10 = client.get_metric_history(run.info.run_id, "validation/top_10_accuracy")
    assert sorted(m.step for m in top10) == [2, 3]
    metrics = run.data.metrics
    assert metrics["test.seen_excluded.top_10_accuracy"] == pytest.approx(
        result.metrics["test"]["seen_excluded"]["top_10_accuracy"])
    assert metrics["validation.tfrs.ndcg_at_10"] == pytest.approx(result.metrics["validation"]["tfrs"]["ndcg@10"])
    assert metrics["run.epochs_run"] == EPOCHS
    tags = run.data.tags
    assert tags["towerrec.config_hash"] == config.hash() and tags["towerrec.run_dir"] == str(result.run_dir)
    assert tags["towerrec.reused"] == "false"
    stored = Path(client.download_artifacts(run.info.run_id, "config.toml", str(tmp_path)))
    assert config_from_dict(tomllib.loads(stored.read_text())) == config
    assert (mlflow_dir / "mlartifacts").is_dir()  # artifacts beside the store, nothing in the working folder

    again = train_run(config, runs_root=tmp_path / "runs", dataset=dataset,
                      callbacks=tracker_callbacks(config.track, run_name="two", config=config), **QUIET)
    assert again.reused
    reused = _runs(client, "ml")["two"]
    assert reused.data.tags["towerrec.reused"] == "true" and "loss" not in reused.data.metrics
    assert reused.data.metrics["test.seen_excluded.top_10_accuracy"] == metrics["test.seen_excluded.top_10_accuracy"]


def test_mlflow_group_nests_its_runs_and_takes_summary_metrics(tmp_path, dataset, mlflow_dir):
    config = _config("study", "mlflow", mlflow_dir, experiment="studies")
    for trial in ("trial-0", "trial-1"):
        cfg = config.replace(train={"learning_rate": 0.01 if trial == "trial-0" else 0.02})
        train_run(cfg, runs_root=tmp_path / "runs", dataset=dataset,
                  callbacks=tracker_callbacks(cfg.track, run_name=trial, config=cfg, group="w1"), **QUIET)
    with open_tracker(config.track, group="w1", config=config) as tracker:
        tracker.log_final({"best": {"validation.top_10_accuracy": 0.25}, "trials": 2})
    client = _client(mlflow_dir)
    runs = _runs(client, "studies")
    assert set(runs) == {"w1", "trial-0", "trial-1"}
    parent = runs["w1"].info.run_id
    assert {runs[t].data.tags["mlflow.parentRunId"] for t in ("trial-0", "trial-1")} == {parent}
    assert runs["w1"].data.metrics == {"best.validation.top_10_accuracy": 0.25, "trials": 2.0}
    assert runs["w1"].info.status == "FINISHED" and runs["trial-1"].data.params["train.learning_rate"] == "0.02"


def _pruned() -> BaseException:
    import optuna

    return optuna.TrialPruned("pruned at epoch 1")


@pytest.mark.parametrize("error, status", [(lambda: RuntimeError("boom"), "FAILED"), (_pruned, "KILLED")],
                         ids=["error", "optuna-pruned"])
def test_a_failed_run_is_closed_as_failed_and_a_pruned_one_as_killed(tmp_path, dataset, mlflow_dir, error, status):
    raised = error()

    class Boom(Callback):
        def on_epoch_end(self, trainer, epoch, record):
            raise raised

    config = _config(f"fails-{status}", "mlflow", mlflow_dir)
    callbacks = tracker_callbacks(config.track, run_name="r", config=config)
    with pytest.raises(type(raised)):
        train_run(config, runs_root=tmp_path / "runs", dataset=dataset, callbacks=[*callbacks, Boom()], **QUIET)
    run = _runs(_client(mlflow_dir), f"fails-{status}")["r"]
    assert run.info.status == status and len(_client(mlflow_dir).get_metric_history(run.info.run_id, "loss")) == 1


# -------------------------------------------------------------------- CLI, experiment, off


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("trackdata")
    save_dataset(dataset, root / "ds")
    return root / "ds"


def _toml(path: Path, dataset_dir: Path, extra: str = "") -> Path:
    path.write_text(f'name = "cli"\n[data]\ndataset = "{dataset_dir}"\n[model]\nembedding_dim = 8\nlayer_sizes = [8]\n'
                    f'[train]\nepochs = 2\nbatch_size = 128\n[eval]\nks = [1, 10]\n{extra}')
    return path


def test_cli_train_track_tensorboard_and_none_writes_nothing(tmp_path, dataset_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _toml(tmp_path / "c.toml", dataset_dir)
    code, out = run_cli(capsys, "train", config, "--runs", "runs")
    assert code == 0, out
    assert not (tmp_path / "runs" / "track").exists() and "tracking" not in out  # backend "none" (default)
    code, out = run_cli(capsys, "train", config, "--runs", "runs", "--track", "tensorboard", "--retrain")
    assert code == 0, out
    assert re.search(r"tracking to runs/track/cli/cli\n", out), out
    run_dir = Path(re.search(r"run directory: (\S+)", out).group(1))
    events = _events(tmp_path / "runs" / "track" / "cli" / "cli")
    assert [s.value for s in events.Scalars("loss")] == pytest.approx([r["loss"] for r in _history(run_dir)],
                                                                      rel=1e-6)
    assert "[track]" not in (run_dir / "config.toml").read_text()  # tracking is not part of the run


def test_cli_bad_backend_and_unwritable_dir_fail_before_training(tmp_path, dataset_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, "train", _toml(tmp_path / "c.toml", dataset_dir), "--runs", "runs", "--track", "wandb")
    assert code != 0 and "[track] backend = 'wandb' is not one of ['none', 'tensorboard', 'mlflow']" in out
    (tmp_path / "afile").write_text("x")
    config = _toml(tmp_path / "d.toml", dataset_dir, f'[track]\nbackend = "tensorboard"\ndir = "{tmp_path}/afile/track"\n')
    code, out = run_cli(capsys, "train", config, "--runs", "runs")
    assert code != 0 and "afile" in out and "[track] dir" in out
    assert not (tmp_path / "runs").exists()  # refused before any training


def test_experiment_tracks_one_run_per_feature_set(tmp_path, dataset_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, "experiment", "--dataset", dataset_dir, "--feature-set", "none",
                        "--feature-set", "timestamp", "--num-epochs", "2", "--eval-every", "1",
                        "--embedding-size", "8", "--layer-sizes", "8", "--name", "grid", "--quiet",
                        "--track", "tensorboard")
    assert code == 0, out
    folder = tmp_path / "runs" / "track" / "grid"
    assert sorted(p.name for p in folder.iterdir()) == ["none", "timestamp"]
    for label in ("none", "timestamp"):
        events = _events(folder / label)
        assert [s.step for s in events.Scalars("loss")] == [1, 2]
        assert [s.step for s in events.Scalars("test/top_10_accuracy")] == [1, 2]  # no validation split
    code, out = run_cli(capsys, "experiment", "--dataset", dataset_dir, "--feature-set", "none",
                        "--num-epochs", "2", "--eval-every", "1", "--embedding-size", "8", "--layer-sizes", "8",
                        "--name", "grid", "--quiet", "--track", "tensorboard")
    assert code == 0 and "1 reused from cache" in out, out
    reused = _events(folder / "none-2")  # a reused cell is tracked too: its final metrics, no epochs
    assert "loss" not in reused.Tags()["scalars"] and "test.seen_excluded.top_10_accuracy" in reused.Tags()["scalars"]


# -------------------------------------------------------------------------- config, errors


def test_track_section_is_not_part_of_the_hash():
    plain = config_from_dict({"name": "x"})
    tracked = config_from_dict({"name": "x", "track": {"backend": "mlflow", "dir": "elsewhere", "experiment": "e",
                                                       "uri": "http://localhost:5000"}})
    assert tracked.hash() == plain.hash()
    assert "track" not in plain.to_dict() and tracked.to_dict()["track"]["backend"] == "mlflow"
    assert config_from_dict(tomllib.loads(tracked.to_toml())) == tracked


@pytest.mark.parametrize("values, message", [
    ({"backend": "wandb"}, "[track] backend = 'wandb' is not one of ['none', 'tensorboard', 'mlflow']"),
    ({"dir": ""}, "[track] dir must not be empty"),
    ({"colour": "red"}, "unknown key(s) ['colour'] in [track]"),
])
def test_bad_track_values_are_config_errors(values, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"track": values})
    assert message in str(info.value)


@pytest.mark.parametrize("backend, modules, extra", [
    ("tensorboard", ["torch.utils.tensorboard"], "tensorboard"),
    ("mlflow", ["mlflow", "mlflow.tracking"], "mlflow"),
])
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, backend, modules, extra):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    config = _config("x", backend, tmp_path / "track")
    with pytest.raises(ConfigError) as info:
        tracker_callbacks(config.track, run_name="r", config=config)
    assert str(info.value) == f'[track] backend = "{backend}" needs the {extra} package: pip install "towerrec[{extra}]"'


def test_none_backend_gives_no_callbacks_and_a_silent_tracker(tmp_path):
    config = _config("x", "none", tmp_path / "track")
    assert tracker_callbacks(config.track, run_name="r", config=config) == []
    with open_tracker(config.track, run_name="r", config=config) as tracker:
        tracker.log_final({"a": 1.0})
    assert not (tmp_path / "track").exists()
    with pytest.raises(ValueError, match="run_name, or a group"):
        open_tracker(config.track)


def test_an_mlflow_uri_of_another_sqlite_store_keeps_artifacts_in_the_track_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config("other", "mlflow", tmp_path / "track", uri=f"sqlite:///{tmp_path}/other.db")
    with open_tracker(config.track, run_name="r", config=config) as tracker:
        tracker.log_final({"a": 1.0})
    assert (tmp_path / "other.db").is_file() and (tmp_path / "track" / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_unreachable_mlflow_store_is_an_error_at_open(tmp_path):
    (tmp_path / "afile").write_text("x")
    config = _config("x", "mlflow", tmp_path / "track", uri=f"sqlite:///{tmp_path}/afile/m.db")
    with pytest.raises(TowerrecError, match=r"\[track\] MLflow store sqlite:///"):
        tracker_callbacks(config.track, run_name="r", config=config)


def test_flattening_and_names():
    assert flatten_metrics({"test": {"tfrs": {"top_10_accuracy": 0.5, "n": 3}}, "note": "x", "stopped": True,
                            "best": None}) == {"test.tfrs.top_10_accuracy": 0.5, "test.tfrs.n": 3.0, "stopped": 1.0}
    assert run_metrics({"train_seconds": 1.5, "test": {"a": 1}}) == {"run.train_seconds": 1.5, "test": {"a": 1}}
    assert mlflow_key("validation/ndcg@10") == "validation/ndcg_at_10" and mlflow_key("a,b") == "a_b"
