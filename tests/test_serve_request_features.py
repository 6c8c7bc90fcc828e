"""New-user feature values are checked for type and finiteness (field-06).

Every answer is either k items (a finite value outside the train range is clipped to it)
or a 4xx naming the JSON field; NaN query embeddings never yield a 200 with an empty list.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient

from _serve_helpers import tiny_run
from towerrec.errors import RequestError, ServingError
from towerrec.serve import export_bundle, load_bundle
from towerrec.serve.app import create_app
from towerrec.serve.precomputed import Catalogue
from towerrec.serve.request_features import INT64, check_feature_value


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-ts")
    run = tiny_run(root / "runs", query_features=("user_id", "timestamp", "user_age", "user_gender"), name="ts")
    return load_bundle(export_bundle(run.run_dir, root / "bundle", data=run.data))


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(bundle)) as c:
        yield c


def _post(client, body: str):
    return client.post("/recommend", content=body, headers={"content-type": "application/json"})


# The CASE's eight requests (k = 3), plus JSON's non-standard literals Python accepts, and other columns.
OK = [
    '{"features": {"timestamp": 880000000}, "k": 3}',
    '{"features": {"timestamp": 4102444800}, "k": 3}',  # year 2100: clipped to the train range
    '{"features": {"timestamp": "2024-01-01"}, "k": 3}',  # ISO date: parsed, then clipped
    '{"features": {"timestamp": null}, "k": 3}',  # unknown: the latest train timestamp
    '{"features": {"timestamp": "880000000"}, "k": 3}',
    '{"features": {"timestamp": -1e18}, "k": 3}',
    '{"features": {"age": 1000000}, "k": 3}',  # clipped to the train range
]
BAD = [
    ('{"features": {"timestamp": 1e300}, "k": 3}', "features.timestamp", "does not fit a 64-bit integer"),
    ('{"features": {"timestamp": "inf"}, "k": 3}', "features.timestamp", "'inf' is not a finite number"),
    ('{"features": {"timestamp": "NaN"}, "k": 3}', "features.timestamp", "'NaN' is not a finite number"),
    ('{"features": {"timestamp": true}, "k": 3}', "features.timestamp", "true is not a valid value"),
    ('{"features": {"timestamp": NaN}, "k": 3}', "features.timestamp", "NaN is not a finite number"),
    ('{"features": {"timestamp": Infinity}, "k": 3}', "features.timestamp", "Infinity is not a finite number"),
    ('{"features": {"timestamp": 1e999}, "k": 3}', "features.timestamp", "Infinity is not a finite number"),
    ('{"features": {"timestamp": "next tuesday"}, "k": 3}', "features.timestamp", "neither epoch seconds nor an ISO"),
    ('{"features": {"timestamp": 100000000000000000000000}, "k": 3}', "features.timestamp", "64-bit"),
    ('{"features": {"age": "old"}, "k": 3}', "features.age", "'old' is not a number"),
    ('{"features": {"age": 1e300}, "k": 3}', "features.age", "1e+300 does not fit a 32-bit integer"),
    ('{"features": {"age": 25.5}, "k": 3}', "features.age", "25.5 is not an integer"),
    ('{"features": {"age": -Infinity}, "k": 3}', "features.age", "-Infinity is not a finite number"),
    ('{"features": {"age": false}, "k": 3}', "features.age", "false is not a valid value"),
    ('{"features": {"gender": true}, "k": 3}', "features.gender", "true is not a valid value"),
    ('{"features": {"gender": 1.5}, "k": 3}', "features.gender", "is not an id"),
]


@pytest.mark.parametrize("body", OK)
def test_valid_or_out_of_range_values_get_k_items(client, body):
    answer = _post(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["k"] == 3 and len(answer.json()["items"]) == 3


@pytest.mark.parametrize("body, field, words", BAD)
def test_invalid_values_are_422_naming_the_field(client, body, field, words):
    answer = _post(client, body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith(f"{field}: ") and words in detail
    assert answer.json()["errors"][0]["loc"] == ["body", *field.split(".")]


def test_a_value_of_no_allowed_type_is_one_message_not_one_per_union_member(client):
    answer = _post(client, '{"features": {"age": [1, 2]}, "k": 3}')
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "features.age: expected an integer, a number, a boolean or a string, got a list")
    assert [e["loc"] for e in answer.json()["errors"]] == [["body", "features", "age"]]


def test_an_iso_date_is_the_same_instant_as_its_epoch_seconds(client):
    when = int(datetime(1998, 1, 1, tzinfo=timezone.utc).timestamp())
    by_date = _post(client, '{"features": {"timestamp": "1998-01-01T00:00:00Z"}, "k": 5}').json()["items"]
    by_seconds = _post(client, f'{{"features": {{"timestamp": {when}}}, "k": 5}}').json()["items"]
    assert by_date == by_seconds


def test_values_beyond_the_train_range_answer_as_its_ends(client, bundle):
    latest = int(bundle.manifest["latest_timestamp"])
    far = _post(client, '{"features": {"timestamp": 4102444800}, "k": 5}').json()["items"]
    far2 = _post(client, '{"features": {"timestamp": 9000000000}, "k": 5}').json()["items"]
    assert far == far2  # both clipped to the train maximum
    assert len(_post(client, f'{{"features": {{"timestamp": {latest}}}, "k": 5}}').json()["items"]) == 5


def test_the_python_api_raises_the_same_errors(bundle):
    with pytest.raises(RequestError, match=r"^features.timestamp: Infinity is not a finite number$"):
        bundle.new_user_queries({"timestamp": math.inf}, np.empty(0, dtype=np.int64))
    queries = bundle.new_user_queries({"timestamp": 10**15, "age": 2**31 - 1}, np.empty(0, dtype=np.int64))
    assert all(torch_finite(v) for v in queries.values())
    assert np.isfinite(bundle.embed(queries).numpy()).all()


def torch_finite(tensor) -> bool:
    return bool(tensor.isfinite().all()) if tensor.is_floating_point() else True


@pytest.mark.parametrize("value, numeric, integer, expected", [
    ("2024-01-01", True, INT64, 1704067200),
    ("1998-04-01T12:00:00+02:00", True, INT64, 891424800),
    ("12.5", True, None, 12.5),
    (None, True, INT64, None),
    ("F", False, None, "F"),
    (42, False, None, 42),
])
def test_check_feature_value(value, numeric, integer, expected):
    assert check_feature_value("timestamp", value, numeric=numeric, integer=integer) == expected


def test_a_nan_query_is_a_clear_server_error_not_an_empty_answer(bundle):
    catalogue = Catalogue(bundle)
    query = np.full(catalogue.candidates.shape[1], np.nan, dtype=np.float32)
    with pytest.raises(ServingError, match="NaN or infinity"):
        catalogue.top_k(query, 3, np.empty(0, dtype=np.int64))


def test_a_nan_embedding_answers_500_with_a_message(bundle, monkeypatch):
    app = create_app(bundle, batching=False)
    monkeypatch.setattr(bundle, "embed", lambda queries: __import__("torch").full((1, 8), float("nan")))
    with TestClient(app) as c:
        answer = c.post("/recommend", json={"features": {"timestamp": 880000000}, "k": 3})
    assert answer.status_code == 500 and "NaN or infinity" in answer.json()["detail"]
