"""The precomputed serving path gives what the query tower and the index give, for every user."""

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient

from _serve_helpers import tiny_run
from towerrec.index import BruteForceIndex
from towerrec.serve import export_bundle, load_bundle
from towerrec.serve.app import create_app
from towerrec.train.prepared import HISTORY
from towerrec.serve.precomputed import Catalogue, KnownUsers


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("fast") / "runs")


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    return load_bundle(export_bundle(run.run_dir, tmp_path_factory.mktemp("fast-bundle") / "b", data=run.data))


@pytest.fixture(scope="module")
def users(bundle):
    return KnownUsers(bundle, Catalogue(bundle))


def _tower_path(bundle, row, k, exclude_seen):
    """The answer the slow path gives: the tower on this user alone, then the index's search."""
    embedding = bundle.embed(bundle.known_user_queries(np.array([row])))
    exclude = [bundle.seen_positions(row)] if exclude_seen else None
    found = bundle.index.search(embedding, k, exclude_positions=exclude)
    return found.indices[0].tolist(), found.scores[0].tolist()


def test_precomputed_embeddings_are_the_tower_outputs(bundle, users):
    rows = np.arange(bundle.num_users)
    one_by_one = torch.cat([bundle.embed(bundle.known_user_queries(rows[r : r + 1])) for r in rows]).numpy()
    assert users.embeddings.shape == one_by_one.shape and users.embeddings.dtype == np.float32
    np.testing.assert_allclose(users.embeddings, one_by_one, atol=1e-5)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_every_known_user_gets_the_tower_paths_answer(bundle, users, exclude_seen):
    k = 10
    for row in range(bundle.num_users):
        positions, scores = users.recommend(row, k, exclude_seen)
        expected_positions, expected_scores = _tower_path(bundle, row, k, exclude_seen)
        assert positions == expected_positions, row
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
        if exclude_seen:
            assert not set(positions) & set(bundle.seen_positions(row).tolist())


def test_top_k_matches_the_brute_force_index_with_exclusions(bundle):
    catalogue = Catalogue(bundle)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(30, bundle.candidate_embeddings.shape[1], generator=generator)
    rng = np.random.default_rng(0)
    for q, query in enumerate(queries):
        exclude = rng.choice(bundle.num_items, size=q * 3, replace=True)  # repeats allowed, as in seen lists
        positions, scores = catalogue.top_k(query.numpy(), 7, exclude)
        found = bundle.index.search(query[None], 7, exclude_positions=[exclude])
        assert len(positions) == min(7, bundle.num_items - len(np.unique(exclude))) == int(found.counts[0])
        assert positions == found.indices[0, : len(positions)].tolist()
        np.testing.assert_allclose(scores, found.scores[0, : len(positions)].tolist(), atol=1e-5)
    everything = catalogue.top_k(queries[0].numpy(), bundle.num_items, np.empty(0, dtype=np.int64))[0]
    assert sorted(everything) == list(range(bundle.num_items))


def test_ties_come_out_by_position(bundle):
    catalogue = Catalogue(bundle)
    catalogue.candidates = np.ones_like(catalogue.candidates)  # every item scores the same
    positions, _ = catalogue.top_k(np.ones(catalogue.candidates.shape[1], dtype=np.float32), 5, np.array([1, 3]))
    assert positions == [0, 2, 4, 5, 6]


def test_id_lookups_agree_with_the_bundle_for_odd_spellings(bundle, users):
    catalogue = users.catalogue
    user, item = int(bundle.user_ids[4]), int(bundle.items["item_id"][5])
    for value in (user, str(user), f"0{user}", f" {user}", f"+{user}", "nobody", "", -1, 2**70, True, float(user)):
        assert users.row(value) == int(bundle.user_rows([value])[0]), value
    for value in (item, str(item), f"00{item}", "x", 2**70, False, float(item)):
        assert catalogue.item_position(value) == int(bundle.item_positions([value])[0]), value
    mixed = [item, f"0{item}", "nope", str(item), 10**9]
    np.testing.assert_array_equal(catalogue.item_positions(mixed), bundle.item_positions(mixed))


def test_items_json_is_valid_json_for_awkward_titles(bundle):
    titles = ['Quote " and \\ backslash', "Ünïcode ☃", "new\nline", None] + [f"t{i}" for i in range(bundle.num_items - 4)]
    odd = dataclasses.replace(bundle, items=bundle.items.with_columns(pl.Series("title", titles, dtype=pl.String)))
    catalogue = Catalogue(odd)
    positions, scores = [0, 1, 2, 3], [0.5, -1.25, 1e-8, 3.0]
    assert json.loads(catalogue.items_json(positions, scores)) == odd.records(positions, scores)


def test_new_user_queries_reuse_the_anonymous_encoding_without_sharing_history(bundle):
    a = bundle.new_user_queries({}, np.array([1, 2]))
    b = bundle.new_user_queries({}, np.array([3]))
    fresh = dataclasses.replace(bundle)  # a new Bundle: empty cache
    assert torch.equal(a[HISTORY], fresh.new_user_queries({}, np.array([1, 2]))[HISTORY])
    assert not torch.equal(a[HISTORY], b[HISTORY])
    for name in a:
        if name != HISTORY:
            assert torch.equal(a[name], fresh.new_user_queries({}, np.array([1]))[name])


def test_app_over_an_hnsw_index_answers_through_the_index(run, tmp_path):
    bundle = load_bundle(export_bundle(run.run_dir, tmp_path / "hnsw", data=run.data, index="hnsw"))
    assert not isinstance(bundle.index, BruteForceIndex)
    with TestClient(create_app(bundle)) as client:
        for row in range(0, bundle.num_users, 15):
            user = int(bundle.user_ids[row])
            body = client.get(f"/recommend?user_id={user}&k=5").json()
            expected, _ = _tower_path(bundle, row, 5, True)
            assert [i["item_id"] for i in body["items"]] == [bundle.items["item_id"][p] for p in expected]
        item = bundle.items["item_id"][0]
        similar = client.get(f"/similar?item_id={item}&k=4").json()
        assert len(similar["items"]) == 4 and item not in {i["item_id"] for i in similar["items"]}
