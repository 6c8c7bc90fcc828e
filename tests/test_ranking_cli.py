"""Ranking runs from the command line: train prints ranking metrics, evaluate re-computes them."""

import json
import re
from pathlib import Path

import pytest

from cli_helpers import run_cli_text as run_cli
from config_helpers import small_toml
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def ranking_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank-cli")
    save_dataset(make_synthetic(150, 60, 3000, seed=5), root / "ds")
    config = root / "rank.toml"
    config.write_text(small_toml(
        f'name = "rank-cli"\n[data]\ndataset = "{root / "ds"}"\nvalidation_fraction = 0.1\n'
        '[model]\nkind = "ranking"\nquery_features = ["user_id", "user_gender", "user_age_group"]\n'
        'candidate_features = ["item_id"]\nembedding_dim = 8\nlayer_sizes = [16]\ninteraction = "cross"\n'
        '[ranking]\nrating_min = 1\nrating_max = 5\nks = [3, 10]\n'
        '[train]\nepochs = 2\nbatch_size = 256\noptimizer = "adam"\nlearning_rate = 0.01\n'
    ))
    return root, config


def test_train_then_evaluate_a_ranking_run(capsys, ranking_config):
    root, config = ranking_config
    code, out = run_cli(capsys, "train", str(config), "--runs", str(root / "runs"))
    assert code == 0, out
    assert "RMSE" in out and "NDCG@3" in out and "NDCG@10" in out and "rank-cli (validation)" in out
    assert "top-10" not in out
    run_dir = re.search(r"run directory: (\S+)", out).group(1)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    rmse = metrics["test"]["ranking"]["rmse"]
    assert set(metrics["validation"]["ranking"]) == {"rmse", "mae", "auc", "ndcg@3", "ndcg@10", "mrr"}
    assert f"{rmse:.4f}" in out
    for split in ("test", "validation"):  # the rating baselines, stored and printed beside the model
        baselines = metrics[split]["ranking_baselines"]
        assert set(baselines) == {"global_mean", "item_mean"}
        assert set(baselines["item_mean"]) == set(metrics[split]["ranking"])
        lines = out.splitlines()
        at = next(i for i, line in enumerate(lines) if f"rank-cli ({split})" in line)
        for offset, name in ((1, "global_mean"), (2, "item_mean")):  # indented rows under the split's model row
            row = lines[at + offset]
            assert f"│   {name.replace('_', ' ')} " in row
            assert f"{baselines[name]['rmse']:.4f}" in row
    item_rmse = metrics["test"]["ranking_baselines"]["item_mean"]["rmse"]

    code, out = run_cli(capsys, "evaluate", run_dir)
    assert code == 0, out
    assert f"{rmse:.4f}" in out  # the loaded model (catalogue given back) scores as the trained one did
    assert "indented: baselines" in out
    assert f"{item_rmse:.4f}" in next(line for line in out.splitlines() if "│   item mean " in line)

    code, out = run_cli(capsys, "recommend", run_dir, "--user", "3")
    assert code == 1 and "is a ranking run" in out and "Traceback" not in out


def test_a_bad_ranking_config_is_one_line(capsys, ranking_config, tmp_path):
    root, config = ranking_config
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('interaction = "cross"', 'interaction = "cross"\nprojection_dim = 0'))
    code, out = run_cli(capsys, "train", str(bad), "--runs", str(root / "runs"))
    assert code == 1 and "[model] projection_dim must be an integer in 1..16384, got 0" in out


def test_experiment_refuses_a_ranking_kind(capsys, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('[experiment]\nname = "x"\n[model]\nkind = "ranking"\n')
    code, out = run_cli(capsys, "experiment", "--config", str(config), "--runs", str(tmp_path / "runs"))
    assert code == 1 and "kind = 'ranking' is not one" in out and "towerrec train" in out
