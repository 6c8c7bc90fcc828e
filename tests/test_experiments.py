"""The feature-set experiment runner: configs, caching, outputs, recommendations, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from config_helpers import small_config
from cli_helpers import run_cli_text as run_cli
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError, DataError, TowerrecError
from towerrec.experiments import experiment_from_dict, parse_feature_set, run_configs, run_experiment
from towerrec.experiments.runner import ExperimentConfig
from towerrec.features.item_table import join_item_features, read_item_table
from towerrec.train.prepared import prepare

FAST = {"train": {"batch_size": 256}, "eval": {"ks": [1, 5, 10, 50, 100]}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and immune to a busy machine's OpenMP spin-waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(100, 150, 2500, seed=3)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("w2data")
    save_dataset(dataset, root / "ds")
    return root / "ds"


def experiment(tmp: Path, dataset_dir: Path, **changes) -> ExperimentConfig:
    values = {
        "experiment": {"name": "t", "feature_sets": ["none", "timestamp,movie_title_text"], "num_epochs": 2,
                       "eval_every": 1, "embedding_size": 8, "layer_sizes": [16, 8],
                       "runs_dir": str(tmp / "runs"), "out_dir": str(tmp / "out")},
        "data": {"dataset": str(dataset_dir)},
        **FAST,
    }
    values["experiment"].update(changes)
    return experiment_from_dict(values)


def test_feature_sets_parse_and_go_to_their_tower():
    assert parse_feature_set("none") == ()
    assert parse_feature_set("timestamp+movie_title_text, movie_genres") == (
        "timestamp", "movie_title_text", "movie_genres")
    cfg = ExperimentConfig(feature_sets=("none", "timestamp,movie_title_text,user_age"))
    (l0, c0), (l1, c1) = run_configs(cfg)
    assert (l0, c0.model.query_features, c0.model.candidate_features) == ("none", ("user_id",), ("movie_title",))
    assert l1 == "timestamp+movie_title_text+user_age"
    assert c1.model.query_features == ("user_id", "timestamp", "user_age")
    assert c1.model.candidate_features == ("movie_title", "movie_title_text")
    assert c1.model.layer_sizes == (64, 32) and c1.model.embedding_dim == 32 and c1.train.eval_every == 5
    assert c0.hash() != c1.hash()


def test_unknown_feature_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        parse_feature_set("timestamp,movie_lenght")
    assert "movie_lenght" in err.value.message and "movie_title_text" in err.value.message
    assert "movie_length" in err.value.message
    with pytest.raises(ConfigError, match="unknown key"):
        experiment_from_dict({"experiment": {"num_epoch": 3}})
    with pytest.raises(ConfigError, match="listed twice"):
        ExperimentConfig().with_changes(feature_sets=("timestamp", "timestamp"))


def test_runs_caches_charts_tables_and_recommends(tmp_path, dataset_dir, dataset):
    cfg = experiment(tmp_path, dataset_dir, recommend_for_user=str(dataset.interactions["user_id"][0]))
    logs: list[str] = []
    first = run_experiment(cfg, progress=False, log=logs.append)
    assert [r.reused for r in first.runs] == [False, False]
    for key in ("chart_html", "chart_png", "results_md", "results_json", "recommendations_md"):
        assert first.outputs[key].is_file() and first.outputs[key].stat().st_size > 0
    assert first.outputs["chart_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in first.outputs["chart_html"].read_text()[:5_000_000].lower()
    table = json.loads(first.outputs["results_json"].read_text())
    assert [r["feature_set"] for r in table["runs"]] == ["none", "timestamp+movie_title_text"]
    for row in table["runs"]:
        assert set(row["tfrs_protocol"]) == {"top_1", "top_5", "top_10", "top_50", "top_100"}
        assert row["examples_per_s"] > 0 and row["train_seconds"] > 0
    assert len(first.runs[0].history) == 2 and "test/top_100_accuracy" in first.runs[0].history[0]
    recs = first.recommendations
    assert recs["rated"] and set(recs["models"]) == {"none", "timestamp+movie_title_text"}
    rated = {r["title"] for r in recs["rated"]}
    assert all(len(v) == 10 for v in recs["models"].values())
    assert not rated & {r["title"] for r in recs["models"]["none"]}  # seen excluded by default
    md = first.outputs["recommendations_md"].read_text()
    assert md.index("highest-rated") < md.index("## none")

    logs.clear()
    second = run_experiment(cfg, progress=False, log=logs.append)
    assert [r.reused for r in second.runs] == [True, True]
    assert sum("reusing the finished run" in m for m in logs) == 2
    assert second.runs[1].metrics == first.runs[1].metrics

    third = run_experiment(cfg, retrain=True, progress=False, log=lambda _m: None)
    assert [r.reused for r in third.runs] == [False, False]


def test_changed_knob_or_data_trains_a_new_model(tmp_path, dataset_dir):
    cfg = experiment(tmp_path, dataset_dir, feature_sets=["none"], num_epochs=1)
    run_experiment(cfg, progress=False, log=lambda _m: None)
    again = run_experiment(cfg.with_changes(embedding_size=4), progress=False, log=lambda _m: None)
    assert not again.runs[0].reused
    other = make_synthetic(100, 150, 2500, seed=4)
    changed = run_experiment(cfg, progress=False, log=lambda _m: None, dataset=other)
    assert not changed.runs[0].reused


def test_unknown_user_is_a_clear_error_before_training(tmp_path, dataset_dir):
    cfg = experiment(tmp_path, dataset_dir, recommend_for_user="999999")
    with pytest.raises(TowerrecError, match="no such user"):
        run_experiment(cfg, progress=False, log=lambda _m: None)
    assert not (tmp_path / "runs").exists()


def test_interrupted_experiment_keeps_finished_runs(tmp_path, dataset_dir, monkeypatch):
    import towerrec.runs as runs

    cfg = experiment(tmp_path, dataset_dir)
    real = runs.train_run
    calls = []

    def flaky(config, **kw):
        calls.append(config.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(config, **kw)

    monkeypatch.setattr(runs, "train_run", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, progress=False, log=lambda _m: None)
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["feature_set"] for r in table["runs"]] == ["none"]
    monkeypatch.setattr(runs, "train_run", real)
    resumed = run_experiment(cfg, progress=False, log=lambda _m: None)
    assert [r.reused for r in resumed.runs] == [True, False]


# -- item-features table -------------------------------------------------------


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "items.csv"
    path.write_text(text)
    return path


def test_item_table_join_defaults_flags_and_fingerprint(tmp_path, dataset):
    ids = dataset.items["item_id"].to_list()
    rows = "\n".join(f"{i},{100 + i}" for i in ids[:-2]) + f"\n{ids[-2]},\n999999,5"
    path = _write(tmp_path, "movie_id,length\n" + rows + "\n")
    warnings: list[str] = []
    joined = join_item_features(dataset, path, "movie_id", warn=warnings.append)
    items = joined.items.sort("item_id")
    assert items["length"].null_count() == 0
    last = items.filter(pl.col("item_id") == ids[-1])
    assert last["length"][0] == 90.0 and last["length_missing"][0] == 1.0  # the article's 90-minute default
    assert items.filter(pl.col("item_id") == ids[0])["length_missing"][0] == 0.0
    assert any("1 of" in w and "length=90" in w for w in warnings) and any("ignored" in w for w in warnings)
    assert joined.fingerprint != dataset.fingerprint
    path.write_text(path.read_text().replace(f"{ids[0]},{100 + ids[0]}", f"{ids[0]},1"))
    assert join_item_features(dataset, path, "movie_id").fingerprint != joined.fingerprint
    custom = join_item_features(dataset, path, "movie_id", {"length": 120.0})
    assert custom.items.filter(pl.col("item_id") == ids[-1])["length"][0] == 120.0


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("movie_id,length\n1,90\n2,abc\n", 3, "length", "not a number"),
        ("movie_id,length\n1,90\n2,80\n1,70\n", 4, "movie_id", "appears twice"),
        ("movie_id,length\n1,90\n,80\n", 3, "movie_id", "empty item id"),
    ],
)
def test_item_table_errors_name_file_line_and_column(tmp_path, text, line, field, words):
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_item_table(path, "movie_id")
    e = err.value
    assert (e.file, e.line, e.field) == (str(path), line, field) and words in e.message
    assert str(path) in e.message


def test_item_table_missing_id_column(tmp_path):
    with pytest.raises(DataError, match="no id column 'movie_id'"):
        read_item_table(_write(tmp_path, "id,length\n1,2\n"), "movie_id")


@pytest.mark.filterwarnings("ignore:.*catalogue items have no row")
def test_movie_length_and_item_columns_feed_the_candidate_tower(tmp_path, dataset):
    ids = dataset.items["item_id"].to_list()
    path = _write(tmp_path, "movie_id,length,studio\n" + "\n".join(f"{i},{90 + i % 7},s{i % 3}" for i in ids[:-1]) + "\n")
    cfg = small_config({
        "data": {"dataset": "synthetic", "item_features": str(path), "item_features_on": "movie_id"},
        "model": {"candidate_features": ["item_id", "movie_length", "item:studio"], "embedding_dim": 8},
    })
    with pytest.warns(UserWarning, match="1 of"):
        data = prepare(cfg, dataset, progress=False)
    assert set(data.catalogue) == {"item_id", "movie_length", "movie_length_missing", "item:studio"}
    assert data.catalogue["movie_length"].shape == (len(ids), 1)
    bad = cfg.replace(model={"candidate_features": ["item_id", "item:nope"]})
    with pytest.raises(ConfigError, match="no item column 'nope'"):
        prepare(bad, dataset, progress=False)
    no_table = cfg.replace(data={"item_features": None})
    with pytest.raises(DataError, match="length"):
        prepare(no_table.replace(model={"candidate_features": ["item_id", "movie_length"]}), dataset, progress=False)


# -- the CLI -------------------------------------------------------------------


def test_cli_experiment_end_to_end(tmp_path, dataset_dir, dataset, capsys):
    user = str(dataset.interactions["user_id"][0])
    args = ["experiment", "--dataset", str(dataset_dir), "--num-epochs", "1", "--eval-every", "1",
            "--feature-set", "none", "--feature-set", "timestamp", "--embedding-size", "8",
            "--layer-sizes", "16", "8", "--recommend-for-user", user, "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--quiet", "--name", "cli"]
    code, out = run_cli(capsys, *args)
    assert code in (0, None), out
    assert "feature set" in out and "Recommendations for user" in out and "curves.png" in out
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert table["experiment"]["layer_sizes"] == [16, 8]
    code, out = run_cli(capsys, *args)
    assert "reusing the finished run" in out and "2 reused" in out


def test_cli_bad_input(tmp_path, dataset_dir, capsys):
    base = ["experiment", "--dataset", str(dataset_dir), "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "o")]
    code, out = run_cli(capsys, *base, "--feature-set", "timestamp,bogus")
    assert code == 1 and "bogus" in out and "movie_title_text" in out
    code, out = run_cli(capsys, *base, "--layer-sizes", "64", "x")
    assert code == 1 and "--layer-sizes" in out
    code, out = run_cli(capsys, *base, "--recommend-for-user", "424242", "--num-epochs", "1")
    assert code == 1 and "no such user" in out
    bad = tmp_path / "lengths.csv"
    bad.write_text("movie_id,length\n1,90\n2,long\n")
    code, out = run_cli(capsys, *base, "--item-features", str(bad), "--on", "movie_id")
    assert code == 1 and "lengths.csv" in out and "line 3" in out and "length" in out
