"""The HTTP service (FastAPI TestClient): known users, new users, similar items, validation, batching."""

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _serve_helpers import tiny_run
from towerrec.serve import export_bundle, load_bundle
from towerrec.serve.app import create_app
from towerrec.serve.batching import Batcher, Job


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = tiny_run(root / "runs")
    return load_bundle(export_bundle(run.run_dir, root / "bundle", data=run.data))


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(bundle)) as c:
        yield c


@pytest.fixture(scope="module")
def feature_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-features")
    run = tiny_run(root / "runs", query_features=("user_id", "user_gender", "user_age"), name="feat")
    with TestClient(create_app(export_bundle(run.run_dir, root / "bundle", data=run.data))) as c:
        yield c


def _direct(bundle, user_id, k, exclude_seen=True):
    row = int(bundle.user_rows([user_id])[0])
    embedding = bundle.embed(bundle.known_user_queries(np.array([row])))
    exclude = [bundle.seen_positions(row)] if exclude_seen else None
    found = bundle.index.search(embedding, k, exclude_positions=exclude)
    return [bundle.items["item_id"][i] for i in found.indices[0].tolist()]


def test_healthz_and_openapi(client, bundle):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["num_items"] == bundle.num_items and health["uses_history"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/recommend", "/similar"} <= set(paths) and "post" in paths["/recommend"]
    assert client.get("/docs").status_code == 200


def test_known_user_matches_the_bundle_and_excludes_seen(client, bundle):
    user = int(bundle.user_ids[3])
    body = client.get(f"/recommend?user_id={user}&k=5").json()
    assert body["known_user"] and body["user_id"] == user
    assert [item["item_id"] for item in body["items"]] == _direct(bundle, user, 5)
    seen = set(bundle.items["item_id"][i] for i in bundle.seen_positions(3).tolist())
    assert not seen & {item["item_id"] for item in body["items"]}
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    included = client.get(f"/recommend?user_id={user}&k=5&exclude_seen=false").json()
    assert [i["item_id"] for i in included["items"]] == _direct(bundle, user, 5, exclude_seen=False)
    assert [r["item_id"] for r in bundle.recommend(user, k=5)] == _direct(bundle, user, 5)
    assert [r["item_id"] for r in bundle.recommend(str(user), k=5, exclude_seen=False)] == \
        _direct(bundle, user, 5, exclude_seen=False)
    same = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert same["items"] == body["items"]


def test_exclude_ids_leave_out_exactly_those_items_on_get_and_post(client, bundle):
    """Exclusions are item ids at the HTTP API too (unknown ids ignored), for known and new users."""
    user = int(bundle.user_ids[3])
    top = [item["item_id"] for item in client.get(f"/recommend?user_id={user}&k=5").json()["items"]]
    drop = top[:2]
    got = client.get(f"/recommend?user_id={user}&k=3&exclude_ids={drop[0]},{drop[1]},no-such-item").json()
    assert [item["item_id"] for item in got["items"]] == top[2:5]
    posted = client.post("/recommend", json={"user_id": user, "k": 3, "exclude_ids": drop}).json()
    assert [item["item_id"] for item in posted["items"]] == top[2:5]
    expected = [r["item_id"] for r in bundle.recommend(user, k=3, exclude_ids=drop)]
    assert expected == top[2:5]
    history = bundle.items["item_id"].to_list()[:3]
    new_top = [i["item_id"] for i in client.post("/recommend", json={"history": history, "k": 4}).json()["items"]]
    without = client.post("/recommend", json={"history": history, "k": 3, "exclude_ids": new_top[:1]}).json()
    assert [i["item_id"] for i in without["items"]] == new_top[1:4]
    recent = client.post("/recommend", json={"user_id": user, "history": history, "k": 3,
                                             "exclude_ids": drop}).json()
    assert not set(drop) & {i["item_id"] for i in recent["items"]}


def test_new_user_from_history_and_similar_items(client, bundle):
    history = bundle.items["item_id"].to_list()[:3]
    body = client.post("/recommend", json={"history": history, "k": 4}).json()
    assert not body["known_user"] and len(body["items"]) == 4
    assert not set(history) & {item["item_id"] for item in body["items"]}
    assert [r["item_id"] for r in bundle.recommend(history=history, k=4)] == [i["item_id"] for i in body["items"]]
    similar = client.get(f"/similar?item_id={history[0]}&k=3").json()
    assert len(similar["items"]) == 3 and history[0] not in {i["item_id"] for i in similar["items"]}


def test_fewer_items_left_than_k_gives_the_items_left(client, bundle):
    """field-04: HTTP GET/POST and /similar answer min(k, items left) with k = what came back, never 422."""
    n = bundle.num_items
    user = int(bundle.user_ids[0])
    left = n - len(np.unique(bundle.seen_positions(0)))
    body = client.get(f"/recommend?user_id={user}&k=1000")
    assert body.status_code == 200, body.text
    assert body.json()["k"] == left == len(body.json()["items"]) and body.json()["k_requested"] == 1000
    ids = bundle.items["item_id"].to_list()
    history = ids[: n - 3]
    new = client.post("/recommend", json={"history": history, "k": 10})
    assert new.status_code == 200, new.text
    assert sorted(i["item_id"] for i in new.json()["items"]) == sorted(ids[n - 3:])
    assert new.json()["k"] == 3 and new.json()["k_requested"] == 10
    everything = client.post("/recommend", json={"history": ids, "k": 5}).json()
    assert everything["k"] == 0 and everything["items"] == []
    similar = client.get(f"/similar?item_id={ids[0]}&k=1000").json()
    assert similar["k"] == n - 1 and similar["k_requested"] == 1000


def test_new_user_from_features(feature_client):
    health = feature_client.get("/healthz").json()
    assert set(health["user_features"]) == {"gender", "age"} and not health["uses_history"]
    a = feature_client.post("/recommend", json={"features": {"gender": "F", "age": 25}, "k": 5})
    b = feature_client.post("/recommend", json={"features": {"gender": "M", "age": 56}, "k": 5})
    assert a.status_code == b.status_code == 200 and a.json()["items"] != b.json()["items"]
    assert feature_client.post("/recommend", json={"features": {"age": "old"}}).status_code == 422
    wrong = feature_client.post("/recommend", json={"features": {"shoe_size": 42}})
    assert wrong.status_code == 422 and "shoe_size" in wrong.json()["detail"]


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("get", "/recommend?user_id=nobody", None, 404),
        ("get", "/recommend?user_id=99999999", None, 404),
        ("get", "/similar?item_id=99999999", None, 404),
        ("get", "/recommend?user_id=1&k=0", None, 422),
        ("get", "/recommend?user_id=1&k=abc", None, 422),
        ("get", "/recommend?user_id=1&k=100000", None, 422),
        ("get", "/recommend", None, 422),
        ("get", "/similar?item_id=1&k=-3", None, 422),
        ("post", "/recommend", {}, 422),
        ("post", "/recommend", {"history": [99999999]}, 404),
        ("post", "/recommend", {"user_id": 99999999}, 404),
        ("post", "/recommend", {"history": [1], "surprise": 1}, 422),
        ("post", "/recommend", {"history": [1] * 5000}, 422),
        ("post", "/recommend", {"history": [1], "k": 10**30}, 422),
        ("post", "/recommend", {"history": "1,2"}, 422),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, method, url, body, status):
    response = client.get(url) if method == "get" else client.post(url, json=body)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_oversized_and_malformed_bodies_are_rejected(client):
    big = client.post("/recommend", content=b"[" + b"1," * 40000 + b"1]", headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_concurrent_jobs_are_batched_and_match_one_by_one(bundle):
    batcher = Batcher(bundle)
    rows = np.arange(min(40, bundle.num_users))
    queries = bundle.known_user_queries(rows)

    def job(r):
        return Job(k=5, exclude=bundle.seen_positions(int(r)), queries={n: v[r : r + 1] for n, v in queries.items()})

    async def one_by_one():
        return [(await batcher.submit(job(r)))[0] for r in rows]

    async def together():
        return [found[0] for found in await asyncio.gather(*(batcher.submit(job(r)) for r in rows))]

    alone = asyncio.run(one_by_one())
    assert batcher.batches == len(rows)
    assert asyncio.run(together()) == alone
    assert batcher.batches == len(rows) + 1  # all concurrent requests shared one batch
    ids = bundle.items["item_id"].to_list()
    assert [[ids[p] for p in found] for found in alone] == [_direct(bundle, int(bundle.user_ids[r]), 5) for r in rows]


def test_batching_disabled_runs_jobs_one_at_a_time(bundle):
    batcher = Batcher(bundle, enabled=False)
    queries = bundle.known_user_queries(np.arange(4))
    jobs = [Job(k=3, exclude=np.empty(0, dtype=np.int64), queries={n: v[r : r + 1] for n, v in queries.items()}) for r in range(4)]

    async def together():
        return await asyncio.gather(*(batcher.submit(j) for j in jobs))

    assert len(asyncio.run(together())) == 4 and batcher.batches == 4


def test_a_failing_job_fails_alone(bundle):
    batcher = Batcher(bundle)
    queries = bundle.known_user_queries(np.arange(2))
    good = Job(k=3, exclude=np.empty(0, dtype=np.int64), queries={n: v[0:1] for n, v in queries.items()})
    bad = Job(k=0, exclude=np.empty(0, dtype=np.int64), queries={n: v[1:2] for n, v in queries.items()})

    async def both():
        return await asyncio.gather(batcher.submit(good), batcher.submit(bad), return_exceptions=True)

    ok, failed = asyncio.run(both())
    assert len(ok[0]) == 3 and isinstance(failed, Exception) and batcher.batches == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=st.text(max_size=20),
    k=st.one_of(st.integers(-5, 2000), st.text(max_size=5)),
    body=st.dictionaries(
        st.sampled_from(["user_id", "features", "history", "k", "exclude_seen", "x"]),
        st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8),
    ),
)
def test_fuzzed_requests_never_get_a_server_error(client, user, k, body):
    assert client.get("/recommend", params={"user_id": user, "k": k}).status_code < 500
    assert client.get("/similar", params={"item_id": user, "k": k}).status_code < 500
    assert client.post("/recommend", json=body).status_code < 500
