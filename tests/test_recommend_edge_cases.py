"""Request edge cases give the right answer, not an error (issue 13, kinds 5 and 7).

field-04: a user with fewer than k unseen items left gets those left (CLI batch, Python, HTTP).
field-14: an id this dataset cannot hold ("dd42" on integer ids) is an unknown user, as in HTTP.
kind 7: --all-users is one batched pass.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli_helpers import run_cli_text as run_cli
from config_helpers import small_toml
from towerrec.cli.app import main
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic

CASE_04 = Path(__file__).parent / "data" / "field04_events.csv"


def _lists(out: str) -> dict[str, list[int]]:
    """{"user X": [item ids]} from `towerrec recommend` output."""
    lists: dict[str, list[int]] = {}
    who = None
    for line in out.splitlines():
        head = re.match(r"top \d+ for (.+?)(?: \(only \d+ .*left\))?$", line.strip())
        if head:
            who = head.group(1)
            lists[who] = []
        elif who and (item := re.search(r"\(id (\S+), score", line)):
            lists[who].append(int(item.group(1)))
    return lists


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """field-04's case: 30 items, 20 users with 6 ratings, user `heavy` rated items 1-27."""
    root = tmp_path_factory.mktemp("heavy")
    shutil.copy(CASE_04, root / "events.csv")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "import", str(root / "events.csv"), "--user", "user", "--item", "item", "--timestamp", "ts",
              "--out", str(root / "ds")])
    assert exit_info.value.code == 0
    config = root / "tt.toml"
    config.write_text(small_toml(
        f'name = "heavy"\n[data]\ndataset = "{root / "ds"}"\nsplit = "tfrs-random"\ntest_fraction = 0.05\n'
        '[model]\nquery_features = ["user_id"]\ncandidate_features = ["item_id"]\nembedding_dim = 8\n'
        '[train]\nepochs = 2\nbatch_size = 64\noptimizer = "adam"\nlearning_rate = 0.01\n'
    ))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--runs", str(root / "runs")])
    assert exit_info.value.code == 0
    return root, next((root / "runs").glob("heavy-*"))


def test_cli_batch_gives_each_user_min_k_items_left(capsys, heavy):
    _, run_dir = heavy
    code, out = run_cli(capsys, "recommend", run_dir, "-u", "user1", "-u", "heavy", "-u", "user2", "-k", "10")
    assert code == 0, out
    lists = _lists(out)
    assert sorted(lists["user heavy"]) == [15, 28, 29, 30]
    assert len(lists["user user1"]) == len(lists["user user2"]) == 10
    assert "top 10 for user heavy (only 4 unseen items left)" in out
    assert "query" not in out


def test_python_recommend_gives_short_lists_without_failing_the_batch(heavy):
    from towerrec.recommend import open_run_with_data, recommend

    _, run_dir = heavy
    run, data = open_run_with_data(run_dir)
    train = data.split.train
    seen = set(train.filter(train["user_id"] == "heavy")["item_id"].to_list())
    assert len(seen) == 26
    recs = recommend(run, data, ["user1", "heavy", "user2"], k=10)
    assert sorted(r.item_id for r in recs["heavy"]) == sorted(set(range(1, 31)) - seen) == [15, 28, 29, 30]
    assert [len(recs[u]) for u in ("user1", "user2")] == [10, 10]
    assert len(recommend(run, data, ["heavy"], k=10, exclude_seen=False)["heavy"]) == 10
    assert len(recommend(run, data, ["user1"], k=500)["user1"]) == 30 - len(
        set(train.filter(train["user_id"] == "user1")["item_id"].to_list()))


def test_http_get_and_post_give_the_items_left(capsys, heavy):
    from towerrec.serve.app import create_app

    root, run_dir = heavy
    code, out = run_cli(capsys, "export", run_dir, "--out", root / "bundle")
    assert code == 0, out
    with TestClient(create_app(root / "bundle")) as client:
        got = client.get("/recommend?user_id=heavy&k=10")
        assert got.status_code == 200, got.text
        assert sorted(i["item_id"] for i in got.json()["items"]) == [15, 28, 29, 30]
        assert got.json()["k"] == 4 and got.json()["k_requested"] == 10
        new = client.post("/recommend", json={"history": list(range(1, 28)), "k": 10})
        assert new.status_code == 200, new.text
        assert sorted(i["item_id"] for i in new.json()["items"]) == [28, 29, 30] and new.json()["k"] == 3
        assert len(client.get("/recommend?user_id=user1&k=10").json()["items"]) == 10


@pytest.fixture(scope="module")
def int_ids(tmp_path_factory):
    """A run on a dataset with integer user ids (as MovieLens)."""
    root = tmp_path_factory.mktemp("int-ids")
    save_dataset(make_synthetic(60, 40, 600, seed=3), root / "ds")
    config = root / "c.toml"
    config.write_text(small_toml(
        f'name = "ints"\n[data]\ndataset = "{root / "ds"}"\n'
        '[model]\nquery_features = ["user_id"]\nembedding_dim = 8\n'
        '[train]\nepochs = 1\nbatch_size = 256\noptimizer = "adam"\nlearning_rate = 0.01\n'
    ))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--runs", str(root / "runs")])
    assert exit_info.value.code == 0
    return next((root / "runs").glob("ints-*"))


def test_a_non_integer_id_on_integer_ids_is_an_unknown_user(capsys, int_ids):
    """field-14: `--user dd42` is unknown (like HTTP 404), so --fallback popular serves it."""
    code, out = run_cli(capsys, "recommend", int_ids, "--user", "dd42", "-k", "3")
    assert code == 1 and "'dd42' not in the training data" in out and "--fallback popular" in out
    assert "not an integer" not in out
    code, out = run_cli(capsys, "recommend", int_ids, "--user", "dd42", "--user", "aa42", "-k", "3",
                        "--fallback", "popular")
    assert code == 0, out
    lists = _lists(out)
    assert len(lists["user dd42"]) == 3 and lists["user dd42"] == lists["user aa42"]
    code, out = run_cli(capsys, "recommend", int_ids, "--user", "dd42", "--user", "3", "--user", "99999", "-k", "3",
                        "--fallback", "popular")
    assert code == 0, out
    lists = _lists(out)
    assert lists["user 99999"] == lists["user dd42"] and len(lists["user 3"]) == 3


def test_all_users_is_one_call_for_every_train_user(capsys, int_ids):
    from towerrec.recommend import open_run_with_data, recommend

    code, out = run_cli(capsys, "recommend", int_ids, "--all-users", "-k", "5")
    assert code == 0, out
    lists = _lists(out)
    run, data = open_run_with_data(int_ids)
    users = data.features.user_ids.tolist()
    assert list(lists) == [f"user {u}" for u in users]
    one = recommend(run, data, [users[7]], k=5)[users[7]]
    assert lists[f"user {users[7]}"] == [r.item_id for r in one]
