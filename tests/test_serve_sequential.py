"""Sequential (GRU / SASRec) bundles: exported, served, and answering what `towerrec recommend` answers."""

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.runs import load_run, train_run
from towerrec.serve import Bundle, export_bundle, load_bundle
from towerrec.serve.app import create_app
from towerrec.recommend import recommend_from_histories

MIN_RATING = 2.0
SETUPS = {
    "gru": ({"encoder": "gru", "user_embedding": True, "step_features": ["rating", "genre", "year"]}, "brute-force"),
    "sasrec": ({"encoder": "sasrec", "num_blocks": 1}, "hnsw"),
}


@pytest.fixture(scope="module", params=sorted(SETUPS))
def served(request, tmp_path_factory):
    sequence, index = SETUPS[request.param]
    root = tmp_path_factory.mktemp(f"seq-{request.param}")
    dataset = make_synthetic(120, 50, 2500, seed=3)
    config = small_config({
        "name": f"seq-{request.param}", "data": {"dataset": "synthetic"},
        "model": {"kind": "sequential", "embedding_dim": 8},
        "sequence": {"max_length": 5, "min_rating": MIN_RATING, **sequence},
        "train": {"epochs": 1, "batch_size": 128, "optimizer": "adam", "learning_rate": 0.01},
    })
    result = train_run(config, runs_root=root / "runs", dataset=dataset, progress=False, log=lambda *_: None)
    bundle = load_bundle(export_bundle(result.run_dir, root / "bundle", data=result.data, index=index))
    with TestClient(create_app(bundle)) as client:
        yield load_run(result.run_dir), bundle, client, dataset


def _timelines(dataset) -> dict[int, list[int]]:
    """Each user's items (rating >= MIN_RATING) in time order, as raw ids: computed here, independently."""
    events = dataset.interactions.with_row_index("row").filter(pl.col("rating") >= MIN_RATING)
    ordered = events.sort(["user_id", "timestamp", "row"]).group_by("user_id", maintain_order=True).agg("item_id")
    return dict(zip(ordered["user_id"].to_list(), ordered["item_id"].to_list()))


def _expected(run, history_ids: list[int], k: int, user=None, seen_ids=None) -> list:
    position = {v: i for i, v in enumerate(run.catalogue["item_id"].to_list())}
    history = [position[i] for i in history_ids]
    seen = None if seen_ids is None else {"q": [position[i] for i in seen_ids]}
    found = recommend_from_histories(run, {"q": history}, k=k, users=None if user is None else {"q": user}, seen=seen)
    return [r.item_id for r in found["q"]]


def test_bundle_is_sequential_and_knows_every_user_with_a_timeline(served):
    _, bundle, client, dataset = served
    assert isinstance(bundle, Bundle) and bundle.manifest["model_kind"] == "sequential"
    assert bundle.manifest["query_builder"] == "sequential" and type(bundle.model).__name__ == "SequentialModel"
    assert sorted(bundle.user_ids.tolist()) == sorted(_timelines(dataset))
    health = client.get("/healthz").json()
    assert health["uses_history"] and health["user_features"] == [] and health["num_items"] == bundle.num_items


def test_known_users_get_what_recommend_gives_for_their_timeline(served):
    run, bundle, client, dataset = served
    timelines = _timelines(dataset)
    for user in list(timelines)[::7]:
        body = client.get(f"/recommend?user_id={user}&k=5").json()
        assert body["known_user"] and body["user_id"] == user
        assert [i["item_id"] for i in body["items"]] == _expected(run, timelines[user], 5, user=user)
        assert [r["item_id"] for r in bundle.recommend(user, k=5)] == _expected(run, timelines[user], 5, user=user)
        assert not set(timelines[user]) & {i["item_id"] for i in body["items"]}
        assert client.post("/recommend", json={"user_id": user, "k": 5}).json()["items"] == body["items"]


def test_new_user_history_and_known_user_with_recent_items(served):
    run, bundle, client, dataset = served
    items = bundle.items["item_id"].to_list()
    history = [items[3], items[17], items[8]]
    body = client.post("/recommend", json={"history": history, "k": 6}).json()
    assert not body["known_user"]
    assert [i["item_id"] for i in body["items"]] == _expected(run, history, 6)
    assert [r["item_id"] for r in bundle.recommend(history=history, k=6)] == _expected(run, history, 6)
    with pytest.warns(UserWarning, match=r"ignoring history item id\(s\) not in the catalogue: \[999999\]"):
        unknown_dropped = bundle.recommend(history=[999999, *history], k=6)  # the run's unknown_items = "warn"
    assert [r["item_id"] for r in unknown_dropped] == _expected(run, history, 6)
    user, timeline = next(iter(_timelines(dataset).items()))
    recent = [i for i in items if i not in timeline][:2]
    both = client.post("/recommend", json={"user_id": user, "history": recent, "k": 4}).json()
    assert [i["item_id"] for i in both["items"]] == _expected(run, timeline + recent, 4, user=user)


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("post", "/recommend", {"features": {"age": 30}, "history": [1]}, 422),
        ("post", "/recommend", {"history": [10**9]}, 404),
        ("post", "/recommend", {}, 422),
        ("get", "/recommend?user_id=999999", None, 404),
        ("get", "/similar?item_id=999999", None, 404),
    ],
)
def test_bad_input_is_a_clear_4xx(served, method, url, body, status):
    _, _, client, _ = served
    response = client.get(url) if method == "get" else client.post(url, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_similar_items_exclude_the_item(served):
    _, bundle, client, _ = served
    item = bundle.items["item_id"][0]
    body = client.get(f"/similar?item_id={item}&k=5").json()
    assert len(body["items"]) == 5 and item not in {i["item_id"] for i in body["items"]}
    scores = np.array([i["score"] for i in body["items"]])
    assert (np.diff(scores) <= 0).all()
