"""``towerrec tune``: an Optuna study of cached runs, chosen on validation, resumable, pruned without leaving a
finished run behind; every output written; ``best.toml`` trains as is and reuses the chosen run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("optuna")
import optuna  # noqa: E402

import towerrec.train.trainer as trainer_module  # noqa: E402
from cli_helpers import run_cli_text as run_cli  # noqa: E402
from towerrec.config import config_from_dict  # noqa: E402
from towerrec.data.store import save_dataset  # noqa: E402
from towerrec.data.synthetic import make_synthetic  # noqa: E402
from towerrec.errors import TowerrecError  # noqa: E402
from towerrec.runs import train_run  # noqa: E402
from towerrec.tune import load_space, tune  # noqa: E402

QUIET = {"progress": False, "log": lambda *_: None}
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


pytestmark = pytest.mark.usefixtures("home")  # a fresh TOWERREC_HOME per test (conftest.py)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(40, 40, 700, seed=11)


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Trainer.fit calls (one per trial trained or resumed; none for a reused run)."""
    calls: list[int] = []
    original = trainer_module.Trainer.fit

    def spy(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "fit", spy)
    return calls


def _config(**sections):
    base = {"name": "tiny", "model": {"embedding_dim": 8, "query_features": ["user_id"], "layer_sizes": [8]},
            "train": {"epochs": 2, "batch_size": 64, "eval_every": 1}, "eval": {"ks": [1, 10]}}
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return config_from_dict(base)


SPACE = """
[study]
metric = "top_10_accuracy"
direction = "maximize"

[params."train.learning_rate"]
type = "float"
low = 0.001
high = 0.1
log = true

[params."model.embedding_dim"]
type = "int"
low = 4
high = 16
step = 4

[params."model.query_features"]
type = "categorical"
choices = [["user_id"], ["user_id", "user_history"]]
"""


def _files(tmp_path: Path, dataset) -> tuple[Path, Path]:
    save_dataset(dataset, tmp_path / "ds")
    config = tmp_path / "tiny.toml"
    config.write_text(f'name = "tiny"\n[data]\ndataset = "{tmp_path / "ds"}"\n[model]\nembedding_dim = 8\n'
                      'query_features = ["user_id"]\nlayer_sizes = [8]\n[train]\nepochs = 2\nbatch_size = 64\n'
                      'eval_every = 1\n[eval]\nks = [1, 10]\n')
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    return config, space


def _run_dirs(runs: Path) -> set[str]:
    return {p.name for p in runs.iterdir() if not p.name.startswith(".")} if runs.is_dir() else set()


def test_a_study_writes_every_output_resumes_and_best_toml_reuses_the_chosen_run(tmp_path, dataset, capsys, fits):
    config, space = _files(tmp_path, dataset)
    study, runs = tmp_path / "study", tmp_path / "runs"
    code, out = run_cli(capsys, "tune", config, "--space", space, "--trials", 3, "--study-dir", study,
                        "--runs-root", runs, "--quiet")
    assert code == 0, out
    assert out.count("trial ") >= 3 and "trial 3/3" in out and "best trial #" in out
    for name in ("study.json", "study.db", "best.toml", "results.md", "results.json", "plotly.min.js",
                 *(f"{p}.html" for p in PLOTS), *(f"{p}.png" for p in PLOTS)):
        assert (study / name).is_file() and (study / name).stat().st_size > 0, name
    assert (study / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="plotly.min.js"' in (study / "optimization_history.html").read_text()
    results = json.loads((study / "results.json").read_text())
    rows = results["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2] and {r["state"] for r in rows} == {"complete"}
    assert set(rows[0]["params"]) == {"train.learning_rate", "model.embedding_dim", "model.query_features"}
    assert all("test" not in json.dumps(r) for r in rows)  # test figures are never shown per trial
    best = results["best"]
    assert best["validation"]["top_10_accuracy"] == max(r["value"] for r in rows)
    run_metrics = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())
    assert best["test"] == run_metrics["test"]["seen_excluded"]  # the chosen run's own test figures
    assert best["validation"]["top_10_accuracy"] == run_metrics["validation"]["seen_excluded"]["top_10_accuracy"]
    markdown = (study / "results.md").read_text()
    assert "| trial | state |" in markdown and "## Test metrics of the chosen config" in markdown
    assert markdown.count("complete") >= 3
    assert len(fits) == len(_run_dirs(runs)) <= 3

    trained = _run_dirs(runs)
    code, out = run_cli(capsys, "train", study / "best.toml", "--runs", runs)
    assert code == 0 and "reusing the finished run" in out, out
    assert _run_dirs(runs) == trained and Path(best["run_dir"]).name in out

    fits.clear()  # two more trials: the three finished ones are not trained again
    code, out = run_cli(capsys, "tune", config, "--space", space, "--trials", 5, "--study-dir", study,
                        "--runs", runs, "--quiet")
    assert code == 0, out and "3 of 5 trials finished" in out
    rows = json.loads((study / "results.json").read_text())["trials"]
    assert len(rows) == 5 and rows[:3] == json.loads(json.dumps(results["trials"]))
    assert len(fits) <= 2 and len(_run_dirs(runs)) <= len(trained) + 2

    fits.clear()  # the study already holds 5: nothing is trained, the outputs are written again
    code, out = run_cli(capsys, "tune", config, "--space", space, "--trials", 5, "--study-dir", study,
                        "--runs", runs, "--quiet")
    assert code == 0 and "already holds 5 finished trials" in out, out
    assert fits == []


def test_an_identical_trial_reuses_the_finished_run(tmp_path, dataset, fits):
    space = {"params": {"train.learning_rate": {"type": "categorical", "choices": [0.01]}}}
    result = tune(_config(), space, trials=3, study_dir=tmp_path / "s", runs_root=tmp_path / "runs",
                  dataset=dataset, **QUIET)
    assert len(fits) == 1 and [r["reused"] for r in result.rows] == [False, True, True]
    assert len({r["value"] for r in result.rows}) == 1
    assert result.best_params == {"train.learning_rate": 0.01}


class AlwaysPrune(optuna.pruners.BasePruner):
    """Prunes every trial at its first report."""

    def prune(self, study, trial) -> bool:
        return bool(trial.intermediate_values)


def test_a_pruned_trial_keeps_its_checkpoint_and_is_never_reused_as_finished(tmp_path, dataset, fits):
    config = _config(train={"epochs": 3})
    space = {"params": {"train.learning_rate": {"type": "categorical", "choices": [0.01]}}}
    runs, study = tmp_path / "runs", tmp_path / "s"
    with pytest.raises(TowerrecError, match=r"no trial of the study completed \(1 pruned\)"):
        tune(config, space, trials=1, study_dir=study, runs_root=runs, dataset=dataset, pruner=AlwaysPrune(), **QUIET)
    (row,) = json.loads((study / "results.json").read_text())["trials"]
    assert row["state"] == "pruned" and row["epochs"] == 1 and row["value"] is not None
    (run_dir,) = [runs / name for name in _run_dirs(runs)]
    assert json.loads((run_dir / "meta.json").read_text())["finished"] is False
    assert any((run_dir / "checkpoints").iterdir()) and not (run_dir / "metrics.json").exists()

    # the same config in a later trial: resumed from the pruned run's checkpoint, trained to the end
    result = tune(config, space, trials=2, study_dir=study, runs_root=runs, dataset=dataset, pruner="none", **QUIET)
    assert [r["state"] for r in result.rows] == ["pruned", "complete"]
    assert result.rows[1]["reused"] is False and result.rows[1]["epochs"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_run"] == 3
    assert result.best_run_dir == run_dir.resolve()
    trial_config = config.replace(data={"validation_fraction": 0.1}, train={"learning_rate": 0.01})
    assert train_run(trial_config, runs_root=runs, dataset=dataset, **QUIET).reused


def test_the_median_pruner_stops_a_clearly_worse_trial_on_its_validation_metric(tmp_path, dataset):
    """Optuna's median pruner, fed by the per-epoch validation metric, stops a trial below the median."""
    config = _config(train={"epochs": 4})
    space = {"params": {"train.learning_rate": {"type": "categorical", "choices": [0.05, 1e-7]}}}
    result = tune(config, space, trials=2, study_dir=tmp_path / "s", runs_root=tmp_path / "runs", dataset=dataset,
                  pruner=optuna.pruners.MedianPruner(n_startup_trials=1), **QUIET,
                  enqueue=[{"train.learning_rate": 0.05}, {"train.learning_rate": 1e-7}])
    good, bad = result.rows
    assert (good["params"], good["state"], good["epochs"]) == ({"train.learning_rate": 0.05}, "complete", 4)
    assert (bad["params"], bad["state"], bad["epochs"]) == ({"train.learning_rate": 1e-7}, "pruned", 1)
    assert bad["value"] < good["value"]


def test_load_space_reads_every_parameter_type(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    space = load_space(path)
    assert [p.key for p in space.params] == ["train.learning_rate", "model.embedding_dim", "model.query_features"]
    dists = space.distributions()
    assert isinstance(dists["train.learning_rate"], optuna.distributions.FloatDistribution)
    assert dists["train.learning_rate"].log and dists["model.embedding_dim"].step == 4
    assert space.study.metric == "top_10_accuracy" and space.study.direction == "maximize"
    choice = dists["model.query_features"].choices[1]
    assert space.params[2].decode(choice) == ("user_id", "user_history")
    assert space.apply(_config(), {"model.query_features": ("user_id", "user_history")}).model.query_features == (
        "user_id", "user_history")


class InterruptAtEpoch(trainer_module.Callback):
    """Ctrl-C at the end of an epoch (before that epoch's checkpoint is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, record) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_trial_runs_again_first_and_its_run_resumes(tmp_path, dataset):
    config = _config(train={"epochs": 3})
    space = {"params": {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}}
    runs, study = tmp_path / "runs", tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        tune(config, space, trials=2, study_dir=study, runs_root=runs, dataset=dataset, pruner="none",
             callbacks=[InterruptAtEpoch(2)], **QUIET)
    (run_dir,) = [runs / name for name in _run_dirs(runs)]
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / "metrics.json").exists()

    result = tune(config, space, trials=2, study_dir=study, runs_root=runs, dataset=dataset, pruner="none", **QUIET)
    assert [r["state"] for r in result.rows] == ["interrupted", "complete", "complete"]
    assert result.rows[1]["params"] == result.rows[0]["params"]  # the interrupted trial, again
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_run"] == 3
    again = tune(config, space, trials=2, study_dir=study, runs_root=runs, dataset=dataset, **QUIET)
    assert len(again.rows) == 3  # requeued once only; the study already holds 2 finished trials


def test_a_failing_trial_is_recorded_with_its_message_and_the_study_goes_on(tmp_path, dataset):
    config = config_from_dict({"name": "sas", "model": {"kind": "sequential", "embedding_dim": 8},
                               "sequence": {"protocol": "leave-last-out", "encoder": "sasrec", "max_length": 4,
                                            "min_rating": 0.0, "num_blocks": 1},
                               "train": {"epochs": 1, "batch_size": 64}, "eval": {"ks": [1, 10]}})
    space = {"params": {"sequence.num_heads": {"type": "categorical", "choices": [1, 3]}}}
    result = tune(config, space, trials=2, study_dir=tmp_path / "s", runs_root=tmp_path / "runs", dataset=dataset,
                  enqueue=[{"sequence.num_heads": 3}, {"sequence.num_heads": 1}], **QUIET)
    failed, complete = result.rows
    assert failed["state"] == "failed" and "must be divisible by [sequence] num_heads 3" in failed["error"]
    assert complete["state"] == "complete" and result.best_params == {"sequence.num_heads": 1}
    assert "failed: [model] embedding_dim 8 must be divisible" in (tmp_path / "s" / "results.md").read_text()


def test_a_tracked_study_logs_each_trial_without_test_figures_and_the_choice_once(tmp_path, dataset, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    track = tmp_path / "track"
    config = _config(track={"backend": "tensorboard", "dir": str(track)})
    space = {"params": {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}}
    result = tune(config, space, trials=2, study_dir=tmp_path / "s", runs_root=tmp_path / "runs", dataset=dataset,
                  **QUIET)

    def scalars(folder: Path) -> dict[str, list[float]]:
        events = EventAccumulator(str(folder))
        events.Reload()
        return {tag: [s.value for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    for row in result.rows:
        logged = scalars(track / "tiny" / "tune-s" / f"trial-{row['number']:03d}")
        assert logged["validation/top_10_accuracy"][-1] == pytest.approx(row["value"])
        assert logged["validation.seen_excluded.top_10_accuracy"] == [pytest.approx(row["value"])]
        assert not [tag for tag in logged if tag.startswith("test")]  # a trial's test figures stay unseen
    summary = scalars(track / "tiny" / "tune-s")
    assert summary["best.validation.top_10_accuracy"] == [pytest.approx(result.best_value)]
    assert summary["test.top_10_accuracy"] == [pytest.approx(result.test_metrics["top_10_accuracy"])]
