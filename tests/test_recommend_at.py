"""Recommendations of a model with a timestamp feature: the query time is stated and can be chosen (--at)."""

from __future__ import annotations

import re

import pytest

from cli_helpers import run_cli_text as run_cli
from config_helpers import small_toml
from towerrec.cli.app import main
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import TowerrecError
from towerrec.recommend import open_run_with_data, query_time, recommend, uses_query_time


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("at")
    save_dataset(make_synthetic(200, 80, 3000, seed=2), root / "ds")
    config = root / "c.toml"
    config.write_text(small_toml(
        f'name = "with-time"\n[data]\ndataset = "{root / "ds"}"\n'
        '[model]\nquery_features = ["user_id", "timestamp"]\nlayer_sizes = [8]\nembedding_dim = 8\n'
        '[train]\nepochs = 1\nbatch_size = 256\noptimizer = "adam"\nlearning_rate = 0.05\n'
    ))
    with pytest.raises(SystemExit):
        main(["train", str(config), "--runs", str(root / "runs")])
    return next(p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_query_time_defaults_to_the_latest_timestamp_and_at_changes_the_scores(run_dir):
    run, data = open_run_with_data(run_dir)
    assert uses_query_time(data)
    latest = int(data.dataset.interactions["timestamp"].max())
    earliest = int(data.dataset.interactions["timestamp"].min())
    assert query_time(data) == latest and query_time(data, earliest) == earliest
    user = data.features.user_ids[0]
    default = recommend(run, data, [user], k=5)[user]
    assert [r.score for r in recommend(run, data, [user], k=5, at=latest)[user]] == [r.score for r in default]
    early = recommend(run, data, [user], k=5, at=earliest)[user]
    assert [r.score for r in early] != [r.score for r in default]
    with pytest.raises(TowerrecError, match="Unix timestamp"):
        recommend(run, data, [user], k=5, at="yesterday")  # type: ignore[arg-type]


def test_cli_says_when_the_query_is_asked(capsys, run_dir):
    run, data = open_run_with_data(run_dir)
    user = str(data.features.user_ids[0])
    latest = int(data.dataset.interactions["timestamp"].max())
    code, out = run_cli(capsys, "recommend", str(run_dir), "--user", user, "-k", "3")
    assert code == 0, out
    assert f"query time: {latest} (the dataset's latest timestamp; --at TIMESTAMP to change)" in out
    code, out = run_cli(capsys, "recommend", str(run_dir), "--user", user, "-k", "3", "--at", "1000")
    assert code == 0, out
    assert "query time: 1000 (given by --at)" in out
    assert re.search(r"top 3 for user", out)
