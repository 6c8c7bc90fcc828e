"""train / evaluate / recommend from the command line, on a tiny synthetic dataset folder."""

import re

import pytest

from cli_helpers import run_cli_text as run_cli
from config_helpers import small_toml
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_dataset(make_synthetic(200, 80, 5000, seed=5), root / "ds")
    config = root / "c.toml"
    config.write_text(small_toml(
        f'name = "cli"\n[data]\ndataset = "{root / "ds"}"\n'
        '[model]\nquery_features = ["user_id", "user_history"]\nlayer_sizes = [16]\nembedding_dim = 16\n'
        '[train]\nepochs = 2\nbatch_size = 256\noptimizer = "adam"\nlearning_rate = 0.01\n'
        "[eval]\nks = [1, 10, 50]\n"
    ))
    return root, config


def _train(capsys, root, config):
    code, out = run_cli(capsys, "train", str(config), "--runs", str(root / "runs"))
    assert code == 0, out
    return out, re.search(r"run directory: (\S+)", out).group(1)


def test_train_evaluate_recommend(capsys, trained):
    root, config = trained
    out, run_dir = _train(capsys, root, config)
    assert "top-10" in out and "examples/s" in out
    again, same_dir = _train(capsys, root, config)
    assert "reusing the finished run" in again and same_dir == run_dir

    code, out = run_cli(capsys, "evaluate", run_dir)
    assert code == 0 and "seen items excluded" in out and "mrr" in out
    code, out = run_cli(capsys, "evaluate", run_dir, "--include-seen")
    assert code == 0 and "TFRS protocol" in out

    code, out = run_cli(capsys, "recommend", run_dir, "--user", "3", "-k", "5")
    assert code == 0, out
    assert len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) == 5


def test_recommend_bad_input_is_one_clear_line(capsys, trained):
    root, config = trained
    _, run_dir = _train(capsys, root, config)
    code, out = run_cli(capsys, "recommend", run_dir, "--user", "999999")
    assert code == 1 and "not in the training data" in out and "--fallback popular" in out
    assert "Traceback" not in out
    code, out = run_cli(capsys, "recommend", run_dir, "--user", "999999", "--fallback", "popular", "-k", "3")
    assert code == 0 and len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) == 3
    code, out = run_cli(capsys, "recommend", run_dir, "--user", "3", "-k", "0")
    assert code == 1 and "k must be ≥ 1" in out
    code, out = run_cli(capsys, "recommend", run_dir, "--user", "3", "-k", "100000")  # every unseen item, flagged
    assert code == 0 and "unseen items left)" in out and 0 < len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) < 80
    code, out = run_cli(capsys, "recommend", str(root / "missing"), "--user", "3")
    assert code == 1 and "no such run directory" in out


def test_unknown_config_key_names_it(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    code, out = run_cli(capsys, "train", str(bad))
    assert code == 1 and "epoch" in out and "valid keys" in out and "Traceback" not in out


def test_version(capsys):
    code, out = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("towerrec ")


def test_k_beyond_the_catalogue_prints_its_own_column(capsys, tmp_path):
    """rel-14: ks = [1000000] on an 80-item catalogue trains and prints 1.0000, not a table of nan."""
    save_dataset(make_synthetic(50, 80, 1000, seed=5), tmp_path / "ds")
    config = tmp_path / "ks.toml"
    config.write_text(small_toml(f'name = "ks-huge"\n[data]\ndataset = "{tmp_path / "ds"}"\n[model]\nembedding_dim = 8\n'
                                 "[train]\nepochs = 1\n[eval]\nks = [1, 1000000]\n"))
    out, _ = _train(capsys, tmp_path, config)
    assert "top-1000000" in out and "nan" not in out and "top-100 " not in out
    assert re.search(r"ks-huge\s*│\s*[\d.]+\s*│\s*1\.0000", out)
