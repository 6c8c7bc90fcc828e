"""Selection on validation for every protocol: ``[sequence] validation_fraction`` carves validation examples out of
the tfrs-sequences training examples (test untouched, hashes of existing configs unchanged), and a study of a
sequential config is chosen on that split."""

from __future__ import annotations


import pytest
import torch

from towerrec.config import config_from_dict
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError
from towerrec.train.sequence_data import prepare_sequences


pytestmark = pytest.mark.usefixtures("home")  # a fresh TOWERREC_HOME per test (conftest.py)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(40, 40, 700, seed=5)


def _sequential(**sequence):
    return config_from_dict({"name": "seq", "model": {"kind": "sequential", "embedding_dim": 8},
                             "sequence": {"protocol": "tfrs-sequences", "max_length": 4, "min_rating": 0.0,
                                          **sequence},
                             "train": {"epochs": 2, "batch_size": 64, "eval_every": 1}, "eval": {"ks": [1, 10]}})


def _rows(examples, train: bool) -> list[tuple]:
    targets = examples.targets[:, -1] if train else examples.targets + 1  # both as item index + 1
    return sorted(tuple(row) + (int(t),) for row, t in zip(examples.inputs.tolist(), targets.tolist()))


@pytest.mark.parametrize("all_positions", [False, True])
def test_validation_examples_are_carved_from_training_examples_and_test_is_unchanged(dataset, all_positions):
    plain = prepare_sequences(_sequential(all_positions=all_positions), dataset, progress=False)
    carved = prepare_sequences(_sequential(all_positions=all_positions, validation_fraction=0.25), dataset,
                               progress=False)
    assert plain.validation is None and carved.validation is not None
    torch.testing.assert_close(carved.test.inputs, plain.test.inputs)
    torch.testing.assert_close(carved.test.targets, plain.test.targets)
    n = len(plain.train)
    assert len(carved.validation) == round(0.25 * n) and len(carved.train) == n - round(0.25 * n)
    # train + validation is exactly the old train: every example lands in one part, none in both
    assert sorted(_rows(carved.train, True) + _rows(carved.validation, False)) == _rows(plain.train, True)
    assert carved.validation.seen is not None and carved.validation.targets.dim() == 1
    if all_positions:  # an inner step never trains on a validation label (as for test labels)
        assert int((carved.train.targets[:, :-1] > 0).sum()) < int((plain.train.targets[:, :-1] > 0).sum())
    again = prepare_sequences(_sequential(all_positions=all_positions, validation_fraction=0.25), dataset,
                              progress=False)
    assert _rows(again.validation, False) == _rows(carved.validation, False)  # seeded by [data] seed


def test_sequence_validation_fraction_leaves_existing_hashes_alone_and_needs_tfrs_sequences():
    before = _sequential()
    assert before.hash() == config_from_dict({**before.to_dict(), "sequence": {
        k: v for k, v in before.to_dict()["sequence"].items() if k != "validation_fraction"}}).hash()
    assert _sequential(validation_fraction=0.1).hash() != before.hash()
    with pytest.raises(ConfigError, match=r"\[sequence\] validation_fraction must be a finite number in \[0, 1\)"):
        _sequential(validation_fraction=1.0)
    with pytest.raises(ConfigError, match="leave-last-out already holds out each user's second-last item"):
        _sequential(protocol="leave-last-out", validation_fraction=0.1)


def test_a_sequential_study_is_chosen_on_the_carved_validation_split(tmp_path, dataset):
    pytest.importorskip("optuna")
    from towerrec.runs import train_run
    from towerrec.tune import tune

    space = {"study": {"validation_fraction": 0.2},
             "params": {"train.learning_rate": {"type": "categorical", "choices": [0.01]}}}
    result = tune(_sequential(), space, trials=1, study_dir=tmp_path / "s", runs_root=tmp_path / "runs",
                  dataset=dataset, progress=False, log=lambda *_: None)
    assert result.best_config.sequence.validation_fraction == 0.2
    run = train_run(result.best_config, runs_root=tmp_path / "runs", dataset=dataset, progress=False,
                    log=lambda *_: None)
    assert run.reused and run.run_dir == result.best_run_dir
    assert result.best_value == run.metrics["validation"]["seen_excluded"]["top_10_accuracy"]
    assert result.test_metrics == run.metrics["test"]["seen_excluded"]
