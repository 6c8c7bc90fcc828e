"""Runs, checkpoints, bundles and indexes: keyed by every input, checked on load, replaced safely.

Cases field-16, rel-01 (export), rel-02 (export), rel-06, rel-07, rel-08, rel-09, rel-10, rel-13.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from config_helpers import small_config
from towerrec import fsio
from towerrec.cli.app import main
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import ConfigError, TowerrecError
from towerrec.runs import finished_run, load_run, train_run
from towerrec.serve import export_bundle, load_bundle
from towerrec.train import checkpoint as checkpoint_module


def _config(**sections):
    base = {
        "name": "t",
        "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"query_features": ["user_id", "user_history"], "history_length": 5, "candidate_features": ["item_id"], "embedding_dim": 8,
                  "layer_sizes": [8], "similarity": "cosine"},
        "train": {"epochs": 2, "batch_size": 512, "optimizer": "adam", "learning_rate": 0.02},
        "eval": {"ks": [1, 10]},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return small_config(base)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(120, 50, 2500, seed=7)


def _train(config, dataset, root, **kwargs):
    messages: list[str] = []
    result = train_run(config, runs_root=root, dataset=dataset, progress=False, log=messages.append, **kwargs)
    return result, messages


class Evil:
    """A pickle whose loading would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Evil(marker)))


def _one_line(message: str) -> None:
    assert "\n" not in message and "weights_only" not in message and "Traceback" not in message


# -- field-16: every input is in the key -----------------------------------------------------------------


def _price_config(path: Path):
    return _config(data={"item_features": str(path)},
                   model={"candidate_features": ["item_id", "item:price"]})


def _normaliser(run_dir: Path) -> dict:
    features = json.loads((run_dir / "features.json").read_text())["features"]
    return next(f["normalizer"] for f in features if f["spec"]["name"] == "item:price")


@pytest.mark.filterwarnings("ignore:.*catalogue items have no row")
def test_editing_an_item_features_file_in_place_trains_a_new_model(dataset, tmp_path):
    ids = dataset.items["item_id"].to_list()
    prices = tmp_path / "prices.csv"
    prices.write_text("item_id,price\n" + "".join(f"{i},{7 + (i % 3) * 0.1}\n" for i in ids))
    config = _price_config(prices)
    first, _ = _train(config, dataset, tmp_path / "runs")
    prices.write_text("item_id,price\n" + "".join(f"{i},{70 + (i % 11)}\n" for i in ids))  # same name, v2
    second, messages = _train(config, dataset, tmp_path / "runs")
    assert not second.reused and not any("reusing" in m for m in messages)
    assert second.run_dir != first.run_dir
    assert _normaliser(first.run_dir)["mean"] < 8 < 70 < _normaliser(second.run_dir)["mean"]
    meta = json.loads((second.run_dir / "meta.json").read_text())
    assert "+items:" in meta["data_fingerprint"] and meta["data_fingerprint"] == second.data.dataset.fingerprint


def test_a_run_dir_of_other_inputs_under_the_same_name_is_never_reused(dataset, tmp_path):
    config = _config()
    first, _ = _train(config, dataset, tmp_path)
    meta_path = first.run_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["data_fingerprint"] = meta["data_fingerprint"][:8] + "-some-other-data"  # same prefix, other data
    meta_path.write_text(json.dumps(meta))
    assert finished_run(config, first.data.dataset.fingerprint, tmp_path) is None
    again, messages = _train(config, dataset, tmp_path)
    assert not again.reused and any("holds another run" in m for m in messages)
    assert json.loads(meta_path.read_text())["data_fingerprint"] == first.data.dataset.fingerprint
    third, messages = _train(config, dataset, tmp_path)
    assert third.reused and "reusing" in messages[-1]


def test_a_config_that_toml_cannot_store_is_refused_before_training(dataset, tmp_path, monkeypatch):
    from towerrec.config import RunConfig

    config = _config(train={"learning_rate": 0.05})
    faithful = RunConfig.to_toml
    monkeypatch.setattr(RunConfig, "to_toml", lambda self: faithful(self).replace("learning_rate = 0.05\n", ""))
    with pytest.raises(ConfigError, match=r"\[train\] learning_rate cannot be stored in the run's config.toml"):
        _train(config, dataset, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # refused before any run folder exists


def test_min_rating_off_round_trips_through_the_run_config(dataset, tmp_path):
    config = _config(model={"kind": "sequential"}, sequence={"min_rating": None, "protocol": "leave-last-out"},
                     train={"epochs": 1})
    result, _ = _train(config, dataset, tmp_path)
    assert load_run(result.run_dir).config.sequence.min_rating is None


# -- rel-09: an edited config.toml is refused --------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    result, _ = _train(_config(), dataset, root)
    return result


@pytest.fixture
def run_copy(trained, tmp_path):
    import shutil

    target = tmp_path / "runs" / trained.run_dir.name
    shutil.copytree(trained.run_dir, target)
    return target


@pytest.mark.parametrize(("old", "new"), [("seed = 1", "seed = 7"), ('similarity = "cosine"', 'similarity = "dot"')])
def test_an_edited_run_config_is_refused(run_copy, old, new):
    path = run_copy / "config.toml"
    recorded = json.loads((run_copy / "meta.json").read_text())["config_hash"]
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(TowerrecError) as err:
        load_run(run_copy)
    assert "config.toml was changed after training (hash " in err.value.message
    assert f"≠ {recorded})" in err.value.message and "restore the file" in err.value.hint
    _one_line(err.value.message)


def test_a_run_folder_renamed_to_another_config_hash_is_refused(run_copy, tmp_path):
    name, digest, key = run_copy.name.rsplit("-", 2)
    moved = run_copy.with_name(f"{name}-{'0' * 12}-{key}")
    run_copy.rename(moved)
    with pytest.raises(TowerrecError, match=f"changed after training .* ≠ {'0' * 12}"):
        load_run(moved)


def test_an_edited_bundle_config_is_refused(trained, tmp_path):
    out = export_bundle(trained.run_dir, tmp_path / "b", data=trained.data)
    path = out / "config.toml"
    path.write_text(path.read_text().replace('similarity = "cosine"', 'similarity = "dot"'))
    with pytest.raises(TowerrecError, match=r"b/config.toml was changed after training \(hash"):
        load_bundle(out)


# -- rel-07 / rel-10: damaged run files are named; reuse checks them ----------------------------------------


def test_a_truncated_model_is_named_and_train_does_not_reuse_it(dataset, run_copy, capsys):
    model = run_copy / "model.safetensors"
    model.write_bytes(model.read_bytes()[:500])
    with pytest.raises(TowerrecError) as err:
        load_run(run_copy)
    # model.json records the weights' SHA-256: the truncation is caught before the file is read
    assert f"{model}: damaged or changed" in err.value.message and "--retrain" in err.value.hint
    _one_line(err.value.message)
    with pytest.raises(TowerrecError) as err:  # `train` of the same config refuses the damaged run
        _train(_config(), dataset, run_copy.parent)
    assert str(model) in err.value.message and "--retrain" in err.value.hint
    retrained, _ = _train(_config(), dataset, run_copy.parent, retrain=True)
    assert not retrained.reused and load_run(retrained.run_dir).model is not None


def test_a_malicious_pickle_as_model_is_refused_and_never_run(run_copy, tmp_path):
    marker = tmp_path / "MARKER"
    _evil_pickle(run_copy / "model.safetensors", marker)
    with pytest.raises(TowerrecError, match="model.safetensors: (unreadable|damaged or changed)"):
        load_run(run_copy)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["catalogue.parquet", "features.json", "history.jsonl", "metrics.json"])
def test_a_changed_run_file_is_named(run_copy, name):
    path = run_copy / name
    data = bytearray(path.read_bytes())
    if name == "catalogue.parquet":
        data = data[:300]
    elif name == "features.json":  # swap two characters of the vocabulary: still valid JSON
        text = data.decode()
        data = bytearray(text.replace('"user_ids"', '"user_ids" ', 1).encode())
    else:
        data += b" "
    path.write_bytes(bytes(data))
    with pytest.raises(TowerrecError) as err:
        load_run(run_copy)
    assert str(path) in err.value.message and "--retrain" in err.value.hint
    _one_line(err.value.message)


def test_features_json_of_a_foreign_shape_is_one_line(run_copy):
    (run_copy / "features.json").write_text("[1, 2]")
    with pytest.raises(TowerrecError, match="features.json: not the fitted features towerrec writes"):
        load_run(run_copy)


def test_cli_names_the_damaged_file(run_copy, capsys):
    path = run_copy / "catalogue.parquet"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(run_copy)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert exit_info.value.code == 1 and "catalogue.parquet" in text and "internal error" not in text


# -- rel-07 / rel-08 / rel-10: checkpoints --------------------------------------------------------------------


@pytest.fixture
def interrupted(dataset, tmp_path, monkeypatch):
    """A run killed after the checkpoint of epoch 1 (epoch 2 already in history.jsonl)."""
    config = _config(train={"epochs": 3})
    original = checkpoint_module.Checkpointer.save

    def crash(self, model, optimizer, state, **kwargs):
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed")
        original(self, model, optimizer, state, **kwargs)

    monkeypatch.setattr(checkpoint_module.Checkpointer, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(config, dataset, tmp_path / "runs")
    monkeypatch.setattr(checkpoint_module.Checkpointer, "save", original)
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    return config, run_dir


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_resume_truncates_history_to_the_checkpoint(dataset, interrupted):
    config, run_dir = interrupted
    assert _epochs(run_dir) == [1, 2]
    result, messages = _train(config, dataset, run_dir.parent)
    assert any("resuming" in m for m in messages) and result.metrics["resumed_from_epoch"] == 1
    assert _epochs(run_dir) == [1, 2, 3]


def _checkpoint_error(config, dataset, run_dir) -> TowerrecError:
    with pytest.raises(TowerrecError) as err:
        _train(config, dataset, run_dir.parent)
    _one_line(err.value.message)
    assert f"pass --retrain (or delete {run_dir / 'checkpoints'}) to start over" in err.value.hint
    return err.value


def test_a_truncated_checkpoint_model_is_named(dataset, interrupted):
    config, run_dir = interrupted
    path = run_dir / "checkpoints" / "epoch-0001" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:500])
    error = _checkpoint_error(config, dataset, run_dir)
    assert str(path) in error.message and "checkpoint epoch-0001 is unreadable" in error.hint


def test_a_checkpoint_state_without_its_entries_is_named(dataset, interrupted):
    config, run_dir = interrupted
    (run_dir / "checkpoints" / "state.json").write_text('{"epoch": 1}')
    error = _checkpoint_error(config, dataset, run_dir)
    assert "state.json: not a towerrec checkpoint state" in error.message


@pytest.mark.parametrize("damage", ["evil", "garbage", "missing", "evil-with-matching-checksum"])
def test_a_damaged_optimizer_state_is_one_line_without_unsafe_advice(dataset, interrupted, tmp_path, damage):
    config, run_dir = interrupted
    folder = run_dir / "checkpoints"
    path = folder / "epoch-0001" / "optimizer.pt"
    marker = tmp_path / "MARKER"
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"garbage\n")
    else:
        _evil_pickle(path, marker)
    if damage == "evil-with-matching-checksum":  # pretend the checksum was forged too: torch still refuses
        state = json.loads((folder / "state.json").read_text())
        state["checksums"]["epoch-0001/optimizer.pt"] = fsio.sha256_file(path)
        (folder / "state.json").write_text(json.dumps(state))
    error = _checkpoint_error(config, dataset, run_dir)
    assert str(path) in error.message and "checkpoint epoch-0001 is unreadable" in error.hint
    if damage == "evil-with-matching-checksum":
        assert "refused to unpickle" in error.message
    assert not marker.exists()
    result, _ = _train(config, dataset, run_dir.parent, retrain=True)
    assert result.metrics["resumed_from_epoch"] == 0 and _epochs(run_dir) == [1, 2, 3]


# -- rel-06: two trainings of one run ---------------------------------------------------------------------------


def test_a_second_train_of_the_same_run_waits_then_reuses(dataset, tmp_path, monkeypatch):
    from towerrec.train.trainer import Trainer

    original = Trainer._append_history

    def slow(self, record):
        time.sleep(0.3)
        original(self, record)

    monkeypatch.setattr(Trainer, "_append_history", slow)
    config = _config(train={"epochs": 4})
    results: dict[str, object] = {}
    logs: dict[str, list[str]] = {"a": [], "b": []}

    def run(name):
        results[name] = train_run(config, runs_root=tmp_path, dataset=dataset, progress=False,
                                  log=logs[name].append)

    first = threading.Thread(target=run, args=("a",))
    first.start()
    for _ in range(200):
        if any(p.is_dir() and (p / "meta.json").is_file() for p in tmp_path.iterdir()):
            break
        time.sleep(0.02)
    second = threading.Thread(target=run, args=("b",))
    second.start()
    first.join()
    second.join()
    assert not results["a"].reused and results["b"].reused
    assert any("waiting: another towerrec process is writing run" in m for m in logs["b"])
    assert _epochs(results["a"].run_dir) == [1, 2, 3, 4]


# -- --retrain deletes only a run directory ---------------------------------------------------------------------


def test_retrain_never_deletes_a_folder_that_is_not_a_run(dataset, trained, tmp_path):
    import shutil

    target = tmp_path / trained.run_dir.name
    shutil.copytree(trained.run_dir, target)
    (target / "thesis.tex").write_text("important")
    with pytest.raises(TowerrecError, match="not removed: it is not a run directory towerrec wrote"):
        _train(_config(), dataset, tmp_path, retrain=True)
    assert (target / "thesis.tex").read_text() == "important"


# -- bundles: rel-07, rel-10, rel-13 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    return export_bundle(trained.run_dir, tmp_path_factory.mktemp("bundles") / "bundle", data=trained.data)


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "b"))


def _bundle_error(folder: Path) -> TowerrecError:
    with pytest.raises(TowerrecError) as err:
        load_bundle(folder)
    _one_line(err.value.message)
    assert "export the bundle again" in err.value.hint or "export) it again" in err.value.hint
    return err.value


def test_bundle_manifest_lists_a_checksum_of_every_file(bundle):
    manifest = json.loads((bundle / "bundle.json").read_text())
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted(manifest["checksums"]) == [f for f in files if f != "bundle.json"]
    assert "index/index.json" in manifest["checksums"] and "index/embeddings.safetensors" in manifest["checksums"]


@pytest.mark.parametrize("case", ["items-truncated", "features-list", "config-binary", "vocabulary-swapped",
                                  "index-flipped"])
def test_a_damaged_bundle_is_refused_naming_the_file(bundle_copy, case):
    if case == "items-truncated":
        path = bundle_copy / "items.parquet"
        path.write_bytes(path.read_bytes()[:300])
    elif case == "features-list":
        path = bundle_copy / "features.json"
        path.write_text("[1, 2]")
    elif case == "config-binary":
        path = bundle_copy / "config.toml"
        path.write_bytes(b"\xff\xfe\x00")
    elif case == "vocabulary-swapped":  # rel-10: user 42 would answer with user 43's list
        path = bundle_copy / "features.json"
        features = json.loads(path.read_text())
        column = features["user_ids"]["columns"]["user_id"]
        column[0], column[1] = column[1], column[0]
        path.write_text(json.dumps(features))
    else:
        path = bundle_copy / "index" / "embeddings.safetensors"
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x55
        path.write_bytes(bytes(data))
    error = _bundle_error(bundle_copy)
    assert str(path) in error.message


@pytest.mark.parametrize(("key", "value"), [("user_id_type", "float"), ("dim", 7), ("latest_timestamp", None)])
def test_a_bundle_manifest_with_wrong_facts_refuses_to_start(bundle_copy, key, value):
    path = bundle_copy / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(manifest))
    error = _bundle_error(bundle_copy)
    assert str(path) in error.message or "embedding sizes disagree (bundle.json 7" in error.message


def _set_users(folder: Path, change) -> None:
    path = folder / "users.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t["seen_indices"].__setitem__(0, 99999), "seen_indices out of range (99999 >= 50)"),
        (lambda t: t["seen_indices"].__setitem__(0, -1), "seen_indices out of range (-1 < 0)"),
        (lambda t: t["seen_indptr"].__setitem__(1, 10**6), "seen_indptr"),
        (lambda t: t.__setitem__("seen_indptr", t["seen_indptr"].flip(0)), "seen_indptr must run from 0"),
        (lambda t: t["query.user_history"].__setitem__((0, 0), 51), "query.user_history out of range (51 >= 51)"),
    ],
)
def test_a_bundle_with_out_of_range_indexes_refuses_to_start(bundle_copy, change, words):
    _set_users(bundle_copy, change)
    error = _bundle_error(bundle_copy)
    assert error.message.startswith(f"{bundle_copy / 'users.safetensors'}: ") and words in error.message


def test_serve_refuses_a_bad_seen_index_instead_of_answering_500(bundle_copy):
    from towerrec.serve.app import create_app

    _set_users(bundle_copy, lambda t: t["seen_indices"].__setitem__(0, 99999))
    with pytest.raises(TowerrecError, match="seen_indices out of range"):
        create_app(bundle_copy)


# -- rel-01 / rel-02: export and index folders -------------------------------------------------------------------


def test_export_overwrite_refuses_a_folder_that_is_not_a_bundle(trained, tmp_path, capsys):
    mywork = tmp_path / "mywork"
    mywork.mkdir()
    (mywork / "notes.txt").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(trained.run_dir), "--out", str(mywork), "--overwrite"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert exit_info.value.code == 1 and "is not a towerrec bundle folder (holds notes.txt)" in text
    assert (mywork / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".mywork.lock")) == ["mywork"]


def test_export_overwrite_keeps_the_old_bundle_until_the_new_one_is_complete(trained, bundle_copy, monkeypatch):
    from towerrec.serve import export as export_module

    before = json.loads((bundle_copy / "bundle.json").read_text())["created"]

    def broken(folder):
        raise TowerrecError("simulated failure while checking the new bundle")

    monkeypatch.setattr(export_module, "load_bundle", broken)
    with pytest.raises(TowerrecError, match="simulated"):
        export_bundle(trained.run_dir, bundle_copy, data=trained.data, overwrite=True)
    monkeypatch.undo()
    assert json.loads((bundle_copy / "bundle.json").read_text())["created"] == before
    load_bundle(bundle_copy)
    assert not [p for p in bundle_copy.parent.iterdir() if p.name.startswith(".b.") and p.is_dir()]
    export_bundle(trained.run_dir, bundle_copy, data=trained.data, overwrite=True)
    load_bundle(bundle_copy)


def test_export_overwrite_keeps_a_file_the_user_put_into_the_bundle(trained, bundle_copy):
    (bundle_copy / "README.txt").write_text("deployment notes")
    with pytest.raises(TowerrecError, match=r"holds files towerrec did not write \(README\.txt\)"):
        export_bundle(trained.run_dir, bundle_copy, data=trained.data, overwrite=True)
    assert (bundle_copy / "README.txt").read_text() == "deployment notes"
    load_bundle(bundle_copy)


def test_export_never_writes_over_the_run_or_the_current_folder(trained, tmp_path, monkeypatch):
    with pytest.raises(TowerrecError, match="holds the input"):
        export_bundle(trained.run_dir, trained.run_dir.parent, data=trained.data, overwrite=True)
    monkeypatch.chdir(trained.run_dir)
    with pytest.raises(TowerrecError):
        export_bundle(trained.run_dir, Path("."), data=trained.data, overwrite=True)
    assert (trained.run_dir / "model.safetensors").is_file()


def test_index_build_replaces_only_an_index_folder(trained, tmp_path, capsys):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(trained.run_dir), "--kind", "brute-force", "--out", str(out)])
    text = "".join(capsys.readouterr())
    assert exit_info.value.code == 1 and "not a towerrec index folder" in text
    assert (out / "notes.txt").read_text() == "keep"
    (out / "notes.txt").unlink()
    for _ in range(2):  # an empty folder, then our own index: both replaced
        with pytest.raises(SystemExit) as exit_info:
            main(["index", "build", str(trained.run_dir), "--kind", "brute-force", "--out", str(out)])
        assert exit_info.value.code == 0
    manifest = json.loads((out / "index.json").read_text())
    assert set(manifest["checksums"]) == {"embeddings.safetensors"}
    path = out / "embeddings.safetensors"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x55
    path.write_bytes(bytes(data))
    from towerrec.index import load_index

    with pytest.raises(TowerrecError, match="embeddings.safetensors: damaged or changed"):
        load_index(out)


# -- field-16 on MovieLens-100K ---------------------------------------------------------------------------------

REAL_100K = Path(os.environ.get("ML100K") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ml-100k")
PRICES_V1 = "movie_id,price\n1,9.99\n2,4.5\n4,12\n50,7.25\n100,3\n"
PRICES_V2 = "movie_id,price\n1,120\n2,0.5\n4,75\n50,1\n100,300\n181,250\n258,0.99\n"


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_100K.is_dir(), reason="../shared/datasets/ml-100k is absent")
@pytest.mark.filterwarnings("ignore")
def test_field16_prices_edited_in_place_train_the_v2_model(tmp_path, monkeypatch):
    """field-16: same config, prices.csv rewritten in place: the second train is a new run whose item:price
    normaliser is v2's (mean 75.13, std 7.70 on the case's 1,682-item catalogue)."""
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    prices = tmp_path / "prices.csv"
    config = small_config({
        "name": "price",
        "data": {"dataset": "movielens-100k", "data_dir": str(REAL_100K), "split": "tfrs-random",
                 "item_features": str(prices), "item_features_on": "movie_id", "duplicate_titles": "keep"},
        "model": {"query_features": ["user_id"], "candidate_features": ["item_id", "item:price"],
                  "embedding_dim": 16, "layer_sizes": [16]},
        "train": {"epochs": 1, "batch_size": 4096, "optimizer": "adam", "learning_rate": 0.01},
    })
    prices.write_text(PRICES_V1)
    first = train_run(config, runs_root=tmp_path / "runs", progress=False, log=lambda *_: None)
    assert _normaliser(first.run_dir)["mean"] == pytest.approx(7.25, abs=0.01)
    prices.write_text(PRICES_V2)
    messages: list[str] = []
    second = train_run(config, runs_root=tmp_path / "runs", progress=False, log=messages.append)
    assert not second.reused and second.run_dir != first.run_dir and not messages
    normaliser = _normaliser(second.run_dir)
    assert normaliser["mean"] == pytest.approx(75.13, abs=0.01) and normaliser["std"] == pytest.approx(7.70, abs=0.01)


def test_a_run_whose_training_fails_before_a_checkpoint_leaves_no_folder(tmp_path):
    from towerrec.config import RunConfig
    from towerrec.runs import run_dir_for, train_in_run_dir

    config = RunConfig()

    def fails(run_dir):
        raise TowerrecError("query tower outputs 50 dims but candidate tower outputs 16")

    with pytest.raises(TowerrecError, match="50 dims"):
        train_in_run_dir(config, "f" * 64, tmp_path, retrain=False, log=lambda m: None, data=None, train=fails)
    assert not run_dir_for(config, "f" * 64, tmp_path).exists()

    def fails_after_a_checkpoint(run_dir):
        (run_dir / "checkpoints" / "epoch-0001").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_in_run_dir(config, "f" * 64, tmp_path, retrain=False, log=lambda m: None, data=None,
                         train=fails_after_a_checkpoint)
    assert (run_dir_for(config, "f" * 64, tmp_path) / "checkpoints" / "epoch-0001").is_dir()
