"""export_bundle(model=...): a retrieval model written and trained in Python, exported, loaded and served."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from towerrec.errors import RequestError, TowerrecError
from towerrec.layers.embedding import embedding
from towerrec.model import RetrievalModel
from towerrec.models.sequential import SequentialModel
from towerrec.serve import Bundle, export_bundle, load_bundle
from towerrec.serve.app import create_app
from towerrec.tasks.retrieval import Retrieval
from towerrec.train.trainer import Trainer

NUM_USERS, NUM_ITEMS = 30, 24
ITEM_IDS = [100 + 7 * i for i in range(NUM_ITEMS)]  # ids are not positions
USER_IDS = [f"u{i}" for i in range(NUM_USERS)]


class TasteModel(RetrievalModel):
    """A user's own model: a user-embedding query tower and an item-embedding candidate tower."""

    def __init__(self, num_users: int, num_items: int, dim: int = 8) -> None:
        super().__init__()
        self.user, self.item = embedding(num_users, dim), embedding(num_items, dim)
        self.task = Retrieval()

    def query_embeddings(self, batch):
        return self.user(batch["user"])

    def candidate_embeddings(self, batch):
        return self.item(batch["item"])

    def compute_loss(self, batch):
        return self.task(self.query_embeddings(batch), self.candidate_embeddings(batch), candidate_ids=batch["item"])


def _pairs(n: int = 900) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    users = torch.randint(NUM_USERS, (n,), generator=g)
    items = (torch.randint(NUM_ITEMS // 3, (n,), generator=g) * 3 + users % 3) % NUM_ITEMS
    return {"user": users, "item": items}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = TasteModel(NUM_USERS, NUM_ITEMS)
    pairs = _pairs()
    Trainer(model, pairs, epochs=3, batch_size=64, learning_rate=0.05, progress=False).fit()
    seen = [sorted({ITEM_IDS[i] for i in pairs["item"][pairs["user"] == u].tolist()}) for u in range(NUM_USERS)]
    return model.eval(), seen


def _export(model, seen, out, **kwargs):
    arguments = {"item_ids": ITEM_IDS, "candidate_features": {"item": torch.arange(NUM_ITEMS)},
                 "titles": [f"Movie {i}" for i in ITEM_IDS],
                 "known_users": {"ids": USER_IDS, "queries": {"user": torch.arange(NUM_USERS)}, "seen": seen}}
    return export_bundle(model=model, out=out, **{**arguments, **kwargs})


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    model, seen = trained
    return load_bundle(_export(model, seen, tmp_path_factory.mktemp("python") / "bundle"))


def _brute_force(model, user: int, k: int, exclude: list[int]) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        scores = model.user.weight[user] @ model.item.weight.T
    positions = [ITEM_IDS.index(i) for i in exclude]
    scores[positions] = -torch.inf
    top = torch.topk(scores, k)
    return [ITEM_IDS[p] for p in top.indices.tolist()], top.values.tolist()


def test_recommend_is_the_brute_force_top_k_of_the_model(trained, bundle):
    model, seen = trained
    assert isinstance(bundle, Bundle) and bundle.manifest["query_builder"] == "tensors"
    assert bundle.num_items == NUM_ITEMS and bundle.num_users == NUM_USERS
    for user in range(0, NUM_USERS, 4):
        found = bundle.recommend(USER_IDS[user], k=5)
        ids, scores = _brute_force(model, user, 5, seen[user])
        assert [r["item_id"] for r in found] == ids
        assert [r["score"] for r in found] == pytest.approx(scores, rel=1e-5, abs=1e-6)
        assert found[0]["title"] == f"Movie {ids[0]}" and not set(ids) & set(seen[user])
    everything = bundle.recommend(USER_IDS[1], k=5, exclude_seen=False)
    assert [r["item_id"] for r in everything] == _brute_force(model, 1, 5, [])[0]
    skip = [everything[0]["item_id"], 999_999]  # an id not in the catalogue excludes nothing
    assert [r["item_id"] for r in bundle.recommend(USER_IDS[1], k=4, exclude_seen=False, exclude_ids=skip)] == \
        [r["item_id"] for r in everything[1:5]]


def test_a_new_user_is_their_query_features(bundle):
    as_known = bundle.recommend(USER_IDS[3], k=6, exclude_seen=False)
    assert bundle.recommend(features={"user": 3}, k=6) == as_known
    assert bundle.feature_columns() == ["user"]
    with pytest.raises(RequestError, match="features: this model reads query features"):
        bundle.recommend(features={"age": 3})
    with pytest.raises(TowerrecError, match="not a known user"):
        bundle.recommend("nobody")
    popular = bundle.recommend("nobody", k=3, fallback="popular")
    counts = bundle.item_counts
    assert [r["score"] for r in popular] == sorted(counts.tolist(), reverse=True)[:3]


def test_precomputed_embeddings_give_the_same_bundle(trained, bundle, tmp_path):
    model, seen = trained
    with torch.no_grad():
        embeddings = model.item.weight.detach().clone()
    other = load_bundle(_export(model, seen, tmp_path / "e", candidate_features=None, candidate_embeddings=embeddings))
    for user in USER_IDS[:5]:
        assert other.recommend(user, k=4) == bundle.recommend(user, k=4)


def test_the_http_app_serves_a_python_model(bundle):
    with TestClient(create_app(bundle)) as client:
        health = client.get("/healthz").json()
        assert health["num_items"] == NUM_ITEMS and health["user_features"] == ["user"] and not health["uses_history"]
        body = client.get(f"/recommend?user_id={USER_IDS[2]}&k=5").json()
        assert body["known_user"]
        _same(body["items"], bundle.recommend(USER_IDS[2], k=5))
        posted = client.post("/recommend", json={"features": {"user": 2}, "k": 5}).json()
        _same(posted["items"], bundle.recommend(USER_IDS[2], k=5, exclude_seen=False))
        assert client.get("/recommend?user_id=nobody").status_code == 404
        for bad in (2.5, "2", True, NUM_USERS + 5):  # not a whole number, not a number, out of the model's range
            response = client.post("/recommend", json={"features": {"user": bad}})
            assert response.status_code == 422 and response.json()["detail"].startswith("features"), response.text


def _same(served: list[dict], answered: list[dict]) -> None:
    """The HTTP answer (numpy scores) equals bundle.recommend's (torch scores) up to float rounding."""
    assert [(r["item_id"], r["title"]) for r in served] == [(r["item_id"], r["title"]) for r in answered]
    assert [r["score"] for r in served] == pytest.approx([r["score"] for r in answered], rel=1e-5, abs=1e-6)


def test_export_refuses_bad_arguments_at_export_time(trained, tmp_path):
    model, seen = trained
    out = tmp_path / "x"
    cases = [
        ({"item_ids": ITEM_IDS[:-1] + [ITEM_IDS[0]]}, ValueError, "item_ids must be unique; 100 appears"),
        ({"item_ids": ITEM_IDS[:-1]}, ValueError, r"candidate_features\['item'\] has 24 rows, item_ids has 23"),
        ({"titles": ["a"]}, ValueError, "titles has 1 entries"),
        ({"candidate_features": None}, TypeError, "exactly one of candidate_features"),
        ({"candidate_embeddings": torch.zeros(NUM_ITEMS, 8)}, TypeError, "exactly one of candidate_features"),
        ({"candidate_features": None, "candidate_embeddings": torch.full((NUM_ITEMS, 8), float("nan"))},
         ValueError, "not finite"),
        ({"candidate_features": None, "candidate_embeddings": torch.zeros(3, 8)}, ValueError, r"\[N, d\] with N"),
        ({"candidate_features": {"wrong": torch.arange(NUM_ITEMS)}}, ValueError, "candidate_embeddings failed"),
        ({"known_users": {"ids": USER_IDS, "queries": {"user": torch.arange(3)}}}, ValueError, "has 3 rows"),
        ({"known_users": {"ids": USER_IDS, "queries": {"user": torch.arange(NUM_USERS)}, "seen": [[1]] * NUM_USERS}},
         ValueError, r"item id\(s\) \[1\] that are not in item_ids"),
        ({"known_users": {"ids": USER_IDS, "queries": {"person": torch.arange(NUM_USERS)}}}, ValueError,
         "query_embeddings failed"),
        ({"item_ids": [1.5] * NUM_ITEMS}, ValueError, "all integers or all strings"),
    ]
    for change, error, words in cases:
        with pytest.raises(error, match=words):
            _export(model, seen, out, **change)
        assert not out.exists()
    with pytest.raises(TypeError, match="RetrievalModel"):
        export_bundle(model=torch.nn.Linear(2, 2), out=out, item_ids=[1], candidate_embeddings=torch.zeros(1, 2))


def test_device_reaches_the_model_and_a_missing_gpu_is_one_clear_error(trained, bundle):
    assert bundle.device == torch.device("cpu") and bundle.model.device == torch.device("cpu")
    if torch.cuda.is_available():
        on_gpu = load_bundle(bundle.folder, device="cuda")
        assert on_gpu.model.device.type == "cuda" and on_gpu.candidate_embeddings.device.type == "cpu"
        assert [r["item_id"] for r in on_gpu.recommend(USER_IDS[0], k=5)] == \
            [r["item_id"] for r in bundle.recommend(USER_IDS[0], k=5)]
        return
    with pytest.raises(TowerrecError, match="'cuda' is not available: PyTorch sees no CUDA GPU here") as error:
        load_bundle(bundle.folder, device="cuda")
    assert "\n" not in error.value.message
    with pytest.raises(TowerrecError, match="not a device PyTorch knows"):
        load_bundle(bundle.folder, device="gpu9")


def test_cli_serve_device_without_a_gpu_is_one_clear_error(bundle, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from towerrec.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(bundle.folder), "--device", "cuda"])
    text = capsys.readouterr()
    assert exit_info.value.code == 1 and "PyTorch sees no CUDA GPU here" in text.out + text.err


def test_an_old_bundle_format_is_refused(bundle, tmp_path):
    import shutil

    copy = shutil.copytree(bundle.folder, tmp_path / "old")
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["format_version"] = 2
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(TowerrecError, match="bundle format 2, this towerrec reads 3"):
        load_bundle(copy)


def test_a_python_sequential_model_serves_new_users_by_history(tmp_path):
    torch.manual_seed(1)
    model = SequentialModel(NUM_ITEMS, embedding_dim=8, max_length=4).eval()
    histories = [[ITEM_IDS[(u + j) % NUM_ITEMS] for j in range(3)] for u in range(5)]
    rows = torch.zeros(5, 4, dtype=torch.int64)
    for r, history in enumerate(histories):
        rows[r, 1:] = torch.tensor([ITEM_IDS.index(i) + 1 for i in history])
    out = export_bundle(model=model, out=tmp_path / "seq", item_ids=ITEM_IDS, candidate_features={},
                        known_users={"ids": [10, 11, 12, 13, 14], "queries": {"history": rows}, "seen": histories})
    bundle = load_bundle(out)
    assert bundle.manifest["query_builder"] == "sequential" and bundle.uses_history
    with torch.no_grad():
        scores = model.encode(rows[:1]) @ model.candidate_weight().T
    scores[0, [ITEM_IDS.index(i) for i in histories[0]]] = -torch.inf
    expected = [ITEM_IDS[p] for p in torch.topk(scores[0], 5).indices.tolist()]
    assert [r["item_id"] for r in bundle.recommend(10, k=5)] == expected
    assert [r["item_id"] for r in bundle.recommend(history=histories[0], k=5)] == expected
    assert bundle.recommend("10", k=5) == bundle.recommend(10, k=5)  # a str spelling of an int id
    with pytest.raises(TowerrecError, match=r"history item id\(s\) \[5\] are not in the catalogue"):
        bundle.recommend(history=[5, *histories[0]], k=5)
    assert bundle.recommend(history=[5, *histories[0]], k=5, unknown_items="ignore") == bundle.recommend(
        history=histories[0], k=5)
    assert [r["item_id"] for r in bundle.recommend(history=[5], k=2, unknown_items="ignore", fallback="popular")] == \
        [r["item_id"] for r in bundle.popular(2)]
