"""Bad input to ``tune``: one clear line naming the space file and key (or the option), before any trial runs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")

import towerrec.train.trainer as trainer_module  # noqa: E402
from cli_helpers import run_cli_text as run_cli  # noqa: E402
from towerrec.config import config_from_dict  # noqa: E402
from towerrec.data.store import save_dataset  # noqa: E402
from towerrec.data.synthetic import make_synthetic  # noqa: E402
from towerrec.errors import ConfigError  # noqa: E402
from towerrec.tune import load_space, tune  # noqa: E402

QUIET = {"progress": False, "log": lambda *_: None}
LR = {"type": "float", "low": 0.001, "high": 0.1, "log": True}


pytestmark = pytest.mark.usefixtures("home")  # a fresh TOWERREC_HOME per test (conftest.py)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(40, 30, 600, seed=3)


@pytest.fixture(autouse=True)
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every error here comes before any trial: a trainer that starts fails the test."""

    def refuse(self):
        raise AssertionError("a trial was trained")

    monkeypatch.setattr(trainer_module.Trainer, "fit", refuse)


def _config(**sections):
    base = {"name": "tiny", "model": {"embedding_dim": 8, "query_features": ["user_id"], "layer_sizes": [8]},
            "train": {"epochs": 1, "batch_size": 64}, "eval": {"ks": [1, 10]}}
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return config_from_dict(base)


def _space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ('[params."model.embeding_dim"]\ntype = "int"\nlow = 8\nhigh = 32\n',
     r"space\.toml: \[params\.\"model\.embeding_dim\"\]: \[model\] has no field 'embeding_dim'; valid fields: "
     r"\[.*'embedding_dim'.*\]"),
    ('[params."modle.embedding_dim"]\ntype = "int"\nlow = 8\nhigh = 32\n', r"not a config field"),
    ('[params."train.learning_rate"]\ntype = "float"\nlow = 0.1\nhigh = 0.1\n', r"empty range: low \(0\.1\) must be below high"),
    ('[params."train.learning_rate"]\ntype = "float"\nlow = 0.1\nhigh = 0.01\n', r"empty range"),
    ('[params."train.learning_rate"]\ntype = "float"\nlow = 0.0\nhigh = 0.1\nlog = true\n',
     r"a log range needs low > 0, got low = 0"),
    ('[params."train.learning_rate"]\ntype = "uniform"\nlow = 0.0\nhigh = 0.1\n',
     r"type must be one of \['float', 'int', 'categorical'\], got 'uniform'"),
    ('[params."model.embedding_dim"]\ntype = "int"\nlow = 8.5\nhigh = 32\n', r"low must be an integer, got 8\.5"),
    ('[params."model.embedding_dim"]\ntype = "int"\nlow = 8\nhigh = 32\nlo = 1\n', r"unknown key\(s\) \['lo'\]"),
    ('[params."model.query_features"]\ntype = "categorical"\nchoices = []\n', r"choices must be a non-empty list"),
    ('[params."model.similarity"]\ntype = "categorical"\nchoices = ["dot", "dot"]\n', r'choices repeat "dot"'),
    ('[params."data.validation_fraction"]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n',
     r"not searchable: it sets the validation split"),
    ('[study]\ndirection = "max"\n[params."train.learning_rate"]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n',
     r"\[study\] direction must be one of \['maximize', 'minimize'\], got 'max'"),
    ('[study]\npruner = "hyperband"\n[params."train.learning_rate"]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n',
     r"\[study\] pruner must be one of"),
    ("[study]\nmetric = \"top_10_accuracy\"\n", r"searches nothing"),
    ('[params."train.learning_rate"\ntype = "float"\n', r"invalid TOML"),
])
def test_a_bad_space_file_is_one_error_naming_the_file_and_key(tmp_path, text, message):
    path = _space_file(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_space(path)


def _tune(tmp_path, dataset, space, config=None, **kwargs):
    return tune(config or _config(), space, trials=kwargs.pop("trials", 1), study_dir=tmp_path / "study",
                runs_root=tmp_path / "runs", dataset=dataset, **QUIET, **kwargs)


@pytest.mark.parametrize("space,kwargs,message", [
    ({"params": {"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}}, {},
     r"the search space: \[params\.\"model\.dropout\"\] value 1\.5: \[model\] dropout must be a finite number in "
     r"\[0, 1\), got 1\.5"),
    ({"params": {"ranking.loss": {"type": "categorical", "choices": ["mse", "hinge"]}}}, {},
     r"\[params\.\"ranking\.loss\"\]: every value gives the same run: a \[model\] kind = 'two-tower' run does "
     r"not read ranking\.loss"),
    ({"params": {"train.learning_rate": LR}}, {"metric": "top_20_accuracy"},
     r"metric 'top_20_accuracy' is not a validation metric of this \[model\] kind = 'two-tower' run; valid: "
     r"\['mrr', 'ndcg@1', 'ndcg@10', 'top_10_accuracy', 'top_1_accuracy'\]"),
    ({"params": {"train.learning_rate": LR}}, {"direction": "up"}, r"direction must be one of"),
    ({"params": {"train.learning_rate": LR}}, {"pruner": "fast"}, r"pruner must be one of"),
    ({"params": {"train.learning_rate": LR}}, {"validation_fraction": 1.5},
     r"validation_fraction must be a number in \(0, 1\), got 1\.5"),
    ({"params": {"train.learning_rate": LR}}, {"validation_fraction": 0.85},
     r"validation_fraction 0\.85: \[data\] test_fraction \+ validation_fraction must be below 1"),
])
def test_bad_tune_input_is_refused_before_any_trial(tmp_path, dataset, space, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _tune(tmp_path, dataset, space, **kwargs)
    assert not (tmp_path / "study").exists() and not (tmp_path / "runs").exists()


def test_ranking_metrics_are_the_valid_ones_of_a_ranking_run(tmp_path, dataset):
    config = _config(model={"kind": "ranking", "query_features": ["user_id"], "candidate_features": ["item_id"]})
    with pytest.raises(ConfigError, match=r"valid: \['auc', 'mae', 'mrr', 'ndcg@10', 'ndcg@5', 'rmse'\]"):
        _tune(tmp_path, dataset, {"params": {"train.learning_rate": LR}}, config=config, metric="top_10_accuracy")


@pytest.mark.parametrize("trials", [0, -1, 1.5, True])
def test_trials_must_be_a_positive_integer(tmp_path, dataset, trials):
    with pytest.raises(ValueError, match="trials must be an integer >= 1"):
        _tune(tmp_path, dataset, {"params": {"train.learning_rate": LR}}, trials=trials)


def test_a_study_folder_of_another_config_space_or_metric_is_refused(tmp_path, dataset):
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not a study folder towerrec wrote \(holds notes\.txt"):
        _tune(tmp_path, dataset, {"params": {"train.learning_rate": LR}})
    (study / "notes.txt").unlink()
    record = study / "study.json"
    from towerrec.tune import study as study_module

    space = {"params": {"train.learning_rate": LR}}
    # write the folder's record as a first `tune` would, without training (the record comes before any trial)
    study_module._check_or_write_record(study, _record(dataset, _config(), space))
    assert record.is_file()
    with pytest.raises(ConfigError, match=r"holds a study of another config \('tiny', hash \w+; this config: "
                                          r"'tiny', hash \w+\)"):
        _tune(tmp_path, dataset, space, config=_config(train={"epochs": 3}))
    with pytest.raises(ConfigError, match="holds a study of another search space"):
        _tune(tmp_path, dataset, {"params": {"train.learning_rate": {**LR, "high": 0.2}}})
    with pytest.raises(ConfigError, match=r"holds a study of another metric \('top_10_accuracy', not 'mrr'\)"):
        _tune(tmp_path, dataset, space, metric="mrr")
    with pytest.raises(ConfigError, match=r"another validation split \(data\.validation_fraction = 0\.1, not "
                                          r"data\.validation_fraction = 0\.2\)"):
        _tune(tmp_path, dataset, space, validation_fraction=0.2)
    with pytest.raises(ConfigError, match="holds a study of other data"):
        _tune(tmp_path, make_synthetic(40, 30, 600, seed=4), space)
    assert not (study / "study.db").exists()


def _record(dataset, config, space):
    from towerrec.tune.objective import with_validation
    from towerrec.tune.space import load_space

    base = with_validation(config, 0.1)
    return {"format": 1, "config_name": config.name, "config_hash": config.hash(), "trial_config_hash": base.hash(),
            "space": load_space(space).to_dict(), "data_fingerprint": dataset.fingerprint,
            "metric": "top_10_accuracy", "direction": "maximize",
            "validation": {"field": "data.validation_fraction", "fraction": 0.1}}


def test_the_cli_prints_one_error_line_before_any_trial(tmp_path, capsys, dataset):
    save_dataset(dataset, tmp_path / "ds")
    config = tmp_path / "c.toml"
    config.write_text(f'name = "c"\n[data]\ndataset = "{tmp_path / "ds"}"\n[train]\nepochs = 1\n')
    space = _space_file(tmp_path, '[params."train.learnin_rate"]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n')
    code, out = run_cli(capsys, "tune", config, "--space", space, "--trials", 2, "--study-dir", tmp_path / "s",
                        "--runs", tmp_path / "runs")
    assert code == 1 and "Traceback" not in out, out
    assert "error:" in out and "space.toml" in out and "learnin_rate" in out and "valid fields" in out
    assert not (tmp_path / "s").exists() and not (tmp_path / "runs").exists()
    code, out = run_cli(capsys, "tune", config, "--space", space, "--trials", 0)
    assert code == 2 and "--trials" in out, out
    good = _space_file(tmp_path, '[params."train.learning_rate"]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n')
    code, out = run_cli(capsys, "tune", config, "--space", good, "--trials", 1, "--direction", "sideways",
                        "--study-dir", tmp_path / "s")
    assert code == 1 and "direction must be one of ['maximize', 'minimize'], got 'sideways'" in out, out
