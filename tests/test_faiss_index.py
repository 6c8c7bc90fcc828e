"""The FAISS index honours the Index interface: exact settings give brute force's answer, exclusions, save/load."""

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch

from towerrec.errors import TowerrecError
from towerrec.index import BruteForceIndex, FaissIndex, load_index, recall_against
from towerrec.index.faiss_index import SlowSearchWarning
from towerrec.metrics.topk import CSR

N, D = 300, 16
EXACT = {"hnsw": {"ef_search": N}, "ivf": {"nlist": 6, "nprobe": 6}, "ivfpq": {"nlist": 6, "nprobe": 6, "refine": N}}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    items = torch.randn(N, D, generator=g)
    queries = torch.randn(40, D, generator=g)
    ids = [f"item{i}" for i in range(N)]
    rng = np.random.default_rng(0)
    exclude = [rng.choice(N, size=int(rng.integers(0, 60)), replace=False) for _ in range(len(queries))]
    return items, queries, ids, exclude


def _ids_of(ids, exclude):
    """The positions of each query's exclusions as item ids (what the public API takes)."""
    return [[ids[i] for i in row] for row in exclude]


@pytest.mark.parametrize("variant", ["hnsw", "ivf", "ivfpq"])
def test_exact_settings_give_the_brute_force_answer(data, variant):
    items, queries, ids, exclude = data
    exact = BruteForceIndex(items, ids)
    index = FaissIndex(items, ids, variant=variant, **EXACT[variant])
    for k, excl in ((1, None), (10, _ids_of(ids, exclude)), (50, _ids_of(ids, exclude))):
        got, want = index.search(queries, k, exclude_ids=excl), exact.search(queries, k, exclude_ids=excl)
        assert torch.equal(got.indices, want.indices)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-4)
        assert got.ids == want.ids
    assert recall_against(index, exact, queries, 10, exclude_ids=_ids_of(ids, exclude)) == 1.0
    assert recall_against(index, exact, queries.numpy(), 10, exclude_ids=_ids_of(ids, exclude)) == 1.0


@pytest.mark.filterwarnings("ignore::towerrec.index.faiss_index.SlowSearchWarning")
@pytest.mark.parametrize("variant", ["hnsw", "ivf"])
def test_approximate_settings_never_return_excluded_items_and_always_k(data, variant):
    items, queries, ids, exclude = data
    params = {"hnsw": {"ef_search": 16, "hnsw_m": 4}, "ivf": {"nlist": 7, "nprobe": 1}}[variant]
    index = FaissIndex(items, ids, variant=variant, **params)
    found = index.search(queries, 100, exclude_positions=CSR.from_lists(exclude))
    assert found.indices.shape == (len(queries), 100)
    for row, excl in zip(found.indices.tolist(), exclude):
        assert len(set(row)) == 100 and not set(row) & set(excl.tolist())
    assert 0 < recall_against(index, BruteForceIndex(items, ids), queries, 10) <= 1


@pytest.mark.parametrize("variant", ["hnsw", "ivf", "ivfpq"])
def test_a_query_with_fewer_than_k_items_left_gets_those_left(data, variant):
    """field-04: the same min(k, items left) contract as brute force, for every FAISS variant."""
    items, queries, ids, _ = data
    index = FaissIndex(items, ids, variant=variant)
    exclude = [list(range(N - 5))] + [[]] * 3 + [list(range(N))]
    found = index.search(queries[:5], 10, exclude_ids=_ids_of(ids, exclude))
    assert found.counts.tolist() == [5, 10, 10, 10, 0]
    assert sorted(found.ids[0]) == sorted(ids[N - 5:]) and found.ids[4] == []
    assert found.indices[0, 5:].eq(-1).all() and found.indices[4].eq(-1).all()
    assert found.indices.shape == (5, 10)
    assert index.search(queries[:2], N + 1).counts.tolist() == [N, N]


def test_ivf_with_a_tiny_nprobe_widens_the_probe_and_warns_with_the_fix(data, monkeypatch):
    """kind 7: nprobe = 1 with many exclusions used to score most queries exactly, silently."""
    items, queries, ids, exclude = data
    index = FaissIndex(items, ids, variant="ivf", nlist=20, nprobe=1)
    monkeypatch.setattr(FaissIndex, "_exact", lambda *a: pytest.fail("fell back to exact scoring"))
    with pytest.warns(SlowSearchWarning, match=r"raise nprobe from 1 to about \d+ .*--nprobe"):
        found = index.search(queries, 50, exclude_ids=_ids_of(ids, exclude))
    assert found.counts.eq(50).all()
    for row, excl in zip(found.ids, exclude):
        assert len(set(row)) == 50 and not set(row) & {ids[i] for i in excl}
    roomy = FaissIndex(items, ids, variant="ivf", nlist=20, nprobe=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowSearchWarning)
        roomy.search(queries, 10, exclude_ids=_ids_of(ids, exclude))


def test_save_load_round_trip_keeps_answers_params_and_id_types(data, tmp_path):
    items, queries, _, exclude = data
    index = FaissIndex(items, list(range(100, 100 + N)), variant="hnsw", metadata={"run": "x"}, ef_search=64)
    index.save(tmp_path / "ix")
    assert not (tmp_path / "ix" / "index.faiss.tmp").exists()
    loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded, FaissIndex) and loaded.params["ef_search"] == 64 and loaded.metadata == {"run": "x"}
    exclude_ids = [[100 + int(i) for i in row] for row in exclude]
    a, b = index.search(queries, 10, exclude_ids=exclude_ids), loaded.search(queries, 10, exclude_ids=exclude_ids)
    assert torch.equal(a.indices, b.indices) and a.ids == b.ids and isinstance(b.ids[0][0], int)
    BruteForceIndex(items, list(range(N))).save(tmp_path / "bf")
    assert isinstance(load_index(tmp_path / "bf"), BruteForceIndex)


def test_exclude_ids_are_ids_not_positions():
    """Issue 14: with ids [10, 20, 30], excluding id 20 drops the item at position 1."""
    items = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    index = FaissIndex(items, [10, 20, 30], variant="hnsw")
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    found = index.search(query, 3, exclude_ids=[[20, 2, 999]])  # 2 and 999 are no ids: ignored
    assert found.ids == [[30, 10]] and found.indices[0, :2].tolist() == [2, 0]
    assert index.search([[1.0, 0.0]], 1, exclude_ids=np.array([[30]])).ids == [[20]]
    with pytest.raises(TypeError, match="integers"):
        index.search(query, 1, exclude_ids=[["30"]])


def test_recall_against_needs_the_same_catalogue(data):
    items, queries, ids, _ = data
    with pytest.raises(TowerrecError, match="same catalogue"):
        recall_against(FaissIndex(items, ids), BruteForceIndex(items, ids[::-1]), queries, 5)


def test_load_errors_are_clear(data, tmp_path):
    items, _, ids, _ = data
    with pytest.raises(TowerrecError, match="no saved index"):
        load_index(tmp_path / "nothing")
    FaissIndex(items, ids, variant="ivf", nlist=4).save(tmp_path / "ix")
    (tmp_path / "ix" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(TowerrecError, match="index.faiss: damaged or changed since towerrec wrote it"):
        FaissIndex.load(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    manifest["checksums"]["index.faiss"] = hashlib.sha256(b"garbage").hexdigest()  # as if written so
    (tmp_path / "ix" / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(TowerrecError, match="unreadable"):
        FaissIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "index.json").write_text(json.dumps({**manifest, "kind": "mystery"}))
    with pytest.raises(TowerrecError, match="unknown index kind"):
        load_index(tmp_path / "ix")


def test_bad_inputs_raise_towerrec_errors(data):
    items, queries, ids, _ = data
    index = FaissIndex(items, ids, variant="hnsw")
    with pytest.raises(TowerrecError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(TowerrecError, match="queries must be"):
        index.search(queries[:, :3], 5)
    with pytest.raises(TowerrecError, match="NaN"):
        FaissIndex(items * float("nan"), ids)
    with pytest.raises(TowerrecError, match="variant"):
        FaissIndex(items, ids, variant="lsh")
    with pytest.raises(TowerrecError, match="unknown FAISS index option"):
        FaissIndex(items, ids, efsearch=3)
