"""Export: a run becomes a self-contained bundle that reproduces the run's recommendations."""

import json

import numpy as np
import pytest
import torch

from _serve_helpers import tiny_run
from towerrec.errors import TowerrecError
from towerrec.index import BruteForceIndex, FaissIndex
from towerrec.serve import export_bundle, load_bundle
from towerrec.train.models import catalogue_embeddings, query_embeddings


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs"))


def test_bundle_reproduces_the_run_for_known_users(run, tmp_path):
    out = export_bundle(run.run_dir, tmp_path / "b", data=run.data)
    bundle = load_bundle(out)
    data = run.data
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["bundle.json", "config.toml", "features.json", "model", "candidates.safetensors",
         "users.safetensors", "users.parquet", "items.parquet", "index"]
    )
    assert sorted(p.name for p in (out / "model").iterdir()) == ["model.json", "model.safetensors"]
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    torch.testing.assert_close(bundle.candidate_embeddings, catalogue_embeddings(run.model, data.catalogue, data.num_items))
    rows = np.arange(bundle.num_users)
    theirs = bundle.embed(bundle.known_user_queries(rows))
    # the run's own query embeddings of the test examples, one per user row present
    examples = data.test
    mine = query_embeddings(run.model, examples)
    known = examples.user_rows >= 0
    torch.testing.assert_close(theirs[examples.user_rows[known]], mine[known], rtol=1e-5, atol=1e-5)
    assert torch.equal(bundle.seen.indptr, data.seen.indptr) and torch.equal(bundle.user_queries["user_history"], data.history)
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["num_items"] == data.num_items and manifest["index"]["kind"] == "brute_force"
    assert bundle.items.columns[:2] == ["item_id", "title"] and "genres" in bundle.items.columns


def test_faiss_bundle_and_refusals(run, tmp_path):
    out = export_bundle(run.run_dir, tmp_path / "h", data=run.data, index="hnsw", index_params={"ef_search": 100})
    assert isinstance(load_bundle(out).index, FaissIndex)
    with pytest.raises(TowerrecError, match="already exists"):
        export_bundle(run.run_dir, out, data=run.data)
    export_bundle(run.run_dir, out, data=run.data, overwrite=True)
    assert isinstance(load_bundle(out).index, BruteForceIndex)
    with pytest.raises(TowerrecError, match="index kind"):
        export_bundle(run.run_dir, tmp_path / "x", data=run.data, index="annoy")
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()
    (out / "users.safetensors").unlink()
    with pytest.raises(TowerrecError, match="users.safetensors: missing"):
        load_bundle(out)
    with pytest.raises(TowerrecError, match="not a serving bundle"):
        load_bundle(tmp_path)


def test_cli_index_build_and_export(run, tmp_path):
    from towerrec.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(run.run_dir), "--kind", "ivf", "--nlist", "2", "--out", str(tmp_path / "ix")])
    assert exit_info.value.code in (0, None)
    assert (tmp_path / "ix" / "index.faiss").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(run.run_dir), "--kind", "nope"])
    assert exit_info.value.code == 1
