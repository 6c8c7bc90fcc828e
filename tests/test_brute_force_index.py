"""Brute-force index: argsort answers, exclusions, save/load round trips and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from towerrec.errors import TowerrecError
from towerrec.index import BruteForceIndex, Index
from towerrec.metrics.topk import CSR


def _data(seed: int = 0, num_items: int = 30, num_queries: int = 7, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_items, dim, generator=g), torch.randn(num_queries, dim, generator=g)


def test_search_matches_argsort() -> None:
    items, queries = _data()
    ids = [100 + i for i in range(30)]
    found = BruteForceIndex(items, ids).search(queries, 5)
    scores = queries @ items.T
    expected = torch.argsort(scores, dim=1, descending=True)[:, :5]
    assert torch.equal(found.indices, expected)
    torch.testing.assert_close(found.scores, scores.gather(1, expected))
    assert found.ids == [[100 + i for i in row] for row in expected.tolist()]
    assert isinstance(found.ids[0][0], int)


def test_search_honours_exclusions_given_as_ids_or_internal_positions() -> None:
    items, queries = _data(1)
    rng = np.random.default_rng(1)
    lists = [rng.choice(30, size=int(rng.integers(0, 20)), replace=False).tolist() for _ in range(7)]
    index = BruteForceIndex(items, [1000 + 10 * i for i in range(30)])  # ids differ from positions
    found = index.search(queries, 4, exclude_ids=[[1000 + 10 * p for p in row] for row in lists])
    scores = queries @ items.T
    for row, excluded in enumerate(lists):
        scores[row, excluded] = -torch.inf
        assert not set(found.indices[row].tolist()) & set(excluded)
    assert torch.equal(found.indices, torch.argsort(scores, dim=1, descending=True)[:, :4])
    assert torch.equal(index.search(queries, 4, exclude_positions=CSR.from_lists(lists)).indices, found.indices)
    assert torch.equal(index.search(queries, 4, exclude_positions=lists).indices, found.indices)


def test_exclude_ids_are_ids_not_positions() -> None:
    """Issue 14: with ids [10, 20, 30], excluding id 20 drops the item at position 1, not position 20 (or 2)."""
    items = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    index = BruteForceIndex(items, [10, 20, 30])
    query = torch.tensor([[1.0, 0.0]])
    assert index.search(query, 3).ids == [[30, 20, 10]]
    found = index.search(query, 3, exclude_ids=[[30]])
    assert found.ids == [[20, 10]] and found.indices[0, :2].tolist() == [1, 0] and found.counts.tolist() == [2]
    # ids the index does not hold (here 1 and 2, which ARE valid positions) are ignored
    assert index.search(query, 3, exclude_ids=[[1, 2, 999]]).ids == [[30, 20, 10]]
    strings = BruteForceIndex(items, ["a", "b", "c"])
    assert strings.search(query, 2, exclude_ids=[np.array(["c"])]).ids == [["b", "a"]]
    assert strings.search(query, 2, exclude_ids=[["zzz"]]).ids == [["c", "b"]]


@pytest.mark.parametrize(
    ("exclude_ids", "error", "message"),
    [
        ([["20"]], TypeError, "integers, got '20'"),  # a str never matches an integer id
        ([[2.0]], TypeError, "integers, got 2.0"),
        ([20], TypeError, r"exclude_ids\[0\]: expected a list of ids for query 0"),
        ("20", TypeError, "one list of ids per query"),
        ([[20], [10]], ValueError, "2 lists but there are 1 queries"),
    ],
)
def test_bad_exclude_ids_are_rejected(exclude_ids, error, message) -> None:
    index = BruteForceIndex(torch.eye(3), [10, 20, 30])
    with pytest.raises(error, match=message):
        index.search(torch.ones(1, 3), 2, exclude_ids=exclude_ids)
    with pytest.raises(TypeError, match="not both"):
        index.search(torch.ones(1, 3), 2, exclude_ids=[[10]], exclude_positions=[[0]])


def test_numpy_arrays_and_lists_are_accepted_like_tensors() -> None:
    items, queries = _data(4)
    ids = list(range(30))
    want = BruteForceIndex(items, ids).search(queries, 5, exclude_ids=[[1, 2]] * 7)
    for convert in (lambda t: t.numpy(), lambda t: t.tolist(), lambda t: t.double().numpy()):
        got = BruteForceIndex(convert(items), ids).search(convert(queries), 5, exclude_ids=np.array([[1, 2]] * 7))
        assert got.ids == want.ids


@pytest.mark.parametrize(
    ("queries", "error", "message"),
    [
        ([[1.0, 2.0, 3.0], [1.0]], ValueError, "queries is ragged: row 1 has 1 values, row 0 has 3"),
        ([1.0, 2.0, 3.0], ValueError, r"queries must be a 2-D \[rows, dim\] matrix, got shape \[3\]"),
        ([["a", "b", "c"]], TypeError, "queries must hold numbers"),
        (np.array([["a", "b", "c"]]), TypeError, "queries must hold numbers"),
        ("abc", TypeError, "queries must be a tensor, a numpy array or a list"),
    ],
)
def test_bad_query_arrays_are_rejected(queries, error, message) -> None:
    with pytest.raises(error, match=message):
        BruteForceIndex(torch.eye(3), [10, 20, 30]).search(queries, 2)


def test_chunked_search_equals_one_chunk() -> None:
    items, queries = _data(2, num_queries=11)
    index = BruteForceIndex(items, list(range(30)))
    exclude = [[i % 30, (i * 7) % 30] for i in range(11)]
    whole = index.search(queries, 6, exclude_ids=exclude)
    chunked = index.search(queries, 6, exclude_ids=exclude, chunk_size=3)
    assert torch.equal(whole.indices, chunked.indices)
    torch.testing.assert_close(whole.scores, chunked.scores)  # BLAS blocking may differ in the last bit


def test_k_equal_to_what_remains_after_exclusion_is_allowed() -> None:
    items, queries = _data(num_items=4, num_queries=1)
    found = BruteForceIndex(items, ["a", "b", "c", "d"]).search(queries, 2, exclude_ids=[["a", "a", "d"]])
    assert sorted(found.ids[0]) == ["b", "c"]  # duplicates in an exclusion list count once


@pytest.mark.parametrize(
    ("ids", "metadata"),
    [(list(range(7, 37)), {"run": "w1"}), ([f"movie {i}" for i in range(30)], {}), (np.arange(30) * 3, None)],
)
def test_save_load_round_trip_keeps_id_types(tmp_path: Path, ids, metadata) -> None:
    items, queries = _data(3)
    index = BruteForceIndex(items, ids, metadata=metadata)
    index.save(tmp_path / "idx")
    loaded = BruteForceIndex.load(tmp_path / "idx")
    expected_ids = [int(i) for i in ids] if isinstance(ids, np.ndarray) else ids
    assert loaded.ids == expected_ids
    assert [type(i) for i in loaded.ids] == [type(i) for i in expected_ids]
    assert loaded.metadata == (metadata or {})
    before, after = index.search(queries, 3), loaded.search(queries, 3)
    assert before.ids == after.ids and torch.equal(before.scores, after.scores)
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["format_version"] == 2 and manifest["kind"] == "brute_force"
    assert set(manifest["checksums"]) == {"embeddings.safetensors"}


def test_index_implements_the_interface() -> None:
    items, _ = _data()
    index = BruteForceIndex(items, list(range(30)))
    assert isinstance(index, Index) and index.is_exact
    rebuilt = index.build(items[:3], ["x", "y", "z"])
    assert rebuilt is index and index.num_candidates == 3 and index.ids == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("k", "exclude", "message"),
    [
        (0, None, "k must be"),
        (1, [[30]] + [[]] * 6, "excluded positions"),
        (1, [[]], "rows"),
    ],
)
def test_search_errors(k: int, exclude, message: str) -> None:
    items, queries = _data()
    with pytest.raises(TowerrecError, match=message):
        BruteForceIndex(items, list(range(30))).search(queries, k, exclude_positions=exclude)


def test_a_query_with_fewer_than_k_items_left_gets_those_left() -> None:
    """field-04: min(k, items left) per query; the other queries keep their k; never an error."""
    items, queries = _data()
    index = BruteForceIndex(items, list(range(100, 130)))
    exclude = [[]] * 5 + [list(range(100, 127))] + [list(range(100, 130))]
    found = index.search(queries, 10, exclude_ids=exclude)
    assert found.counts.tolist() == [10] * 5 + [3, 0] and found.short == [5, 6]
    assert [len(ids) for ids in found.ids] == [10] * 5 + [3, 0]
    assert sorted(found.ids[5]) == [127, 128, 129]
    assert found.indices[5, 3:].eq(-1).all() and torch.isinf(found.scores[5, 3:]).all()
    assert found.indices[6].eq(-1).all()
    full = index.search(queries, 10)
    assert torch.equal(found.indices[:5], full.indices[:5])
    everything = index.search(queries, 31)  # k above the catalogue: the whole catalogue, best first
    assert everything.indices.shape == (7, 30) and everything.counts.eq(30).all() and everything.short == []


def test_search_rejects_queries_of_the_wrong_size() -> None:
    items, _ = _data()
    with pytest.raises(TowerrecError, match="queries must be"):
        BruteForceIndex(items, list(range(30))).search(torch.zeros(2, 5), 1)


@pytest.mark.parametrize(
    ("ids", "message"),
    [(list(range(29)), "29 ids for 30"), ([0] * 30, "unique"), ([0] * 15 + ["a"] * 15, "all integers or all strings")],
)
def test_bad_ids_are_rejected(ids, message: str) -> None:
    items, _ = _data()
    with pytest.raises(TowerrecError, match=message):
        BruteForceIndex(items, ids)


def test_nan_embeddings_are_rejected() -> None:
    items, _ = _data()
    items[3, 1] = torch.nan
    with pytest.raises(TowerrecError, match="NaN"):
        BruteForceIndex(items, list(range(30)))


def _saved(tmp_path: Path) -> Path:
    items, _ = _data()
    BruteForceIndex(items, list(range(30))).save(tmp_path / "idx")
    return tmp_path / "idx"


def test_load_missing_folder_or_files(tmp_path: Path) -> None:
    with pytest.raises(TowerrecError, match="missing index.json"):
        BruteForceIndex.load(tmp_path / "nowhere")
    folder = _saved(tmp_path)
    (folder / "embeddings.safetensors").unlink()
    with pytest.raises(TowerrecError, match="missing"):
        BruteForceIndex.load(folder)


def test_load_rejects_other_format_versions_and_kinds(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    manifest = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(TowerrecError, match="format_version 99") as error:
        BruteForceIndex.load(folder)
    assert error.value.hint
    (folder / "index.json").write_text(json.dumps({**manifest, "kind": "faiss"}))
    with pytest.raises(TowerrecError, match="'faiss' index"):
        BruteForceIndex.load(folder)


def _rechecksum(folder: Path) -> None:
    """Record the current bytes in index.json, as if a bug had written them: the content checks still refuse."""
    from towerrec import fsio

    manifest = json.loads((folder / "index.json").read_text())
    manifest["checksums"] = fsio.checksums(folder, manifest["checksums"])
    (folder / "index.json").write_text(json.dumps(manifest))


def test_load_rejects_corrupt_or_mismatched_files(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    (folder / "embeddings.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TowerrecError, match="embeddings.safetensors: damaged or changed since towerrec wrote it"):
        BruteForceIndex.load(folder)  # index.json records each data file's SHA-256
    _rechecksum(folder)
    with pytest.raises(TowerrecError, match="unreadable"):
        BruteForceIndex.load(folder)
    save_file({"embeddings": torch.zeros(4, 6)}, str(folder / "embeddings.safetensors"))
    _rechecksum(folder)
    with pytest.raises(TowerrecError, match="do not match"):
        BruteForceIndex.load(folder)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(TowerrecError, match="invalid JSON at line"):
        BruteForceIndex.load(folder)
