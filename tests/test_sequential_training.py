"""Sequential retrieval: protocol builders, learning beyond popularity, CLI train + recommend --history."""

import re

import numpy as np
import polars as pl
import pytest
import torch

from config_helpers import small_config, small_toml
from cli_helpers import run_cli_text as run_cli
from towerrec.data.sequences import build_sequence_examples
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.data.tables import Dataset
from towerrec.errors import TowerrecError
from towerrec.recommend import history_to_indices
from towerrec.train.batches import SequenceBatches
from towerrec.train.evaluate import evaluate_examples, popularity_metrics
from towerrec.train.models import build_model
from towerrec.train.sequence_data import left_pad, prepare_sequences
from towerrec.train.trainer import Trainer


def _config(**sections):
    base = {"name": "seq", "model": {"kind": "sequential", "embedding_dim": 16},
            "train": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.01}}
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return small_config(base)


def _tiny() -> Dataset:
    # user 1: items 10, 11, 12, 13, 14 in time order (given shuffled); user 2: 3 events; user 3: 2 events
    inter = pl.DataFrame({
        "user_id": [1, 1, 1, 1, 1, 2, 2, 2, 3, 3],
        "item_id": [12, 10, 14, 11, 13, 20, 21, 22, 10, 20],
        "rating": [5.0, 4.0, 3.0, 5.0, 1.0, 4.0, 4.0, 4.0, 5.0, 5.0],
        "timestamp": [3, 1, 5, 2, 4, 1, 2, 3, 1, 2],
    }, schema_overrides={"rating": pl.Float32})
    items = pl.DataFrame({"item_id": [10, 11, 12, 13, 14, 20, 21, 22],
                          "title": [f"t{i}" for i in range(8)], "year": [1990] * 8,
                          "genres": [["a"]] * 8}, schema_overrides={"year": pl.Int32})
    return Dataset("tiny", inter, items, fingerprint="tiny")


def test_left_pad():
    values = np.arange(10)
    out = left_pad(values, np.array([3, 10, 0]), np.array([3, 5, 0]), 4)
    assert out.tolist() == [[0, 0, 1, 2], [6, 7, 8, 9], [0, 0, 0, 0]]


def test_leave_last_out_builder():
    config = _config(sequence={"protocol": "leave-last-out", "max_length": 3, "min_rating": None})
    data = prepare_sequences(config, _tiny())
    ids = list(data.item_ids)
    idx = {v: i + 1 for i, v in enumerate(ids)}  # padded index of an item id
    # test: last item per user with >= 3 events; validation: second-last
    assert [ids[t] for t in data.test.targets.tolist()] == [14, 22]
    assert [ids[t] for t in data.validation.targets.tolist()] == [13, 21]
    assert data.test.inputs[0].tolist() == [idx[11], idx[12], idx[13]]  # most recent 3 before the target
    assert data.validation.inputs[1].tolist() == [0, 0, idx[20]]
    # seen = the whole earlier history, not just the context window
    seen0 = data.test.seen.indices[data.test.seen.indptr[0]:data.test.seen.indptr[1]].tolist()
    assert sorted(ids[i] for i in seen0) == [10, 11, 12, 13]
    # training never sees held-out targets: user 1 trains on 10 -> 11 -> 12, user 3 (short) on 10 -> 20
    rows = {tuple(r) for r in data.train.inputs.tolist()}
    assert (0, idx[10], idx[11]) in rows and (0, 0, idx[10]) in rows
    assert data.train.targets[data.train.inputs[:, -1] == idx[11]].tolist() == [[0, idx[11], idx[12]]]
    assert not ((data.train.targets == idx[13]) | (data.train.targets == idx[14]) | (data.train.targets == idx[22])).any()


def test_tfrs_sequences_builder_matches_the_examples():
    dataset = _tiny()
    config = _config(sequence={"protocol": "tfrs-sequences", "max_length": 2, "train_fraction": 0.5})
    data = prepare_sequences(config, dataset)
    train, test = build_sequence_examples(dataset.interactions, max_context_length=2, train_fraction=0.5, seed=42)
    ids = list(data.item_ids)
    assert [ids[t] for t in data.test.targets.tolist()] == test["label_item_id"].to_list()
    assert [ids[t - 1] for t in data.train.targets[:, -1].tolist()] == train["label_item_id"].to_list()
    for row, context in zip(data.test.inputs.tolist(), test["context"].to_list()):
        assert [ids[i - 1] for i in row if i] == context
    # rating >= 2 filter: item 13 (rating 1) never appears
    assert idx_never(data, ids.index(13) + 1)


def idx_never(data, padded_index):
    return not any((t == padded_index).any() for t in (data.train.inputs, data.test.inputs, data.train.targets))


def _distinct_timelines(users: int = 20, length: int = 15) -> Dataset:
    # Every (user, position) has its own item id, so an item names the test example it labels.
    ids = [u * 1000 + i for u in range(users) for i in range(length)]
    inter = pl.DataFrame({"user_id": [u for u in range(users) for _ in range(length)], "item_id": ids,
                          "rating": [4.0] * len(ids), "timestamp": [i for _ in range(users) for i in range(length)]},
                         schema_overrides={"rating": pl.Float32})
    items = pl.DataFrame({"item_id": ids, "title": [str(i) for i in ids], "year": [1990] * len(ids),
                          "genres": [["a"]] * len(ids)}, schema_overrides={"year": pl.Int32})
    return Dataset("distinct", inter, items, fingerprint="distinct")


def test_all_positions_targets_are_the_next_items_except_test_labels():
    config = _config(sequence={"protocol": "tfrs-sequences", "max_length": 4, "all_positions": True})
    data = prepare_sequences(config, _distinct_timelines())
    inputs, targets = data.train.inputs, data.train.targets
    test_labels = set((data.test.targets + 1).tolist())
    inner = targets[:, :-1]
    kept = inner > 0
    # Every kept inner target is the next input; every dropped one (with an input there) is a test label.
    assert torch.equal(inner[kept], inputs[:, 1:][kept])
    dropped = (~kept) & (inputs[:, 1:] > 0)
    assert dropped.any() and set(inputs[:, 1:][dropped].tolist()) <= test_labels
    # No training target at all is a test example's label (all-positions training would leak otherwise).
    assert not set(targets[targets > 0].tolist()) & test_labels
    assert kept.sum() > dropped.sum()


@pytest.fixture(scope="module")
def walks():
    """Planted order: each user walks the catalogue i -> i + 1 (mod 50) from a random start, with 20% random
    steps; item popularity is flat, so only a model that reads the sequence can beat popularity."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for user in range(200):
        item = int(rng.integers(50))
        for step in range(15):
            users.append(user)
            items.append(item + 1)
            times.append(step)
            item = (item + 1) % 50 if rng.random() < 0.8 else int(rng.integers(50))
    inter = pl.DataFrame({"user_id": users, "item_id": items, "rating": [4.0] * len(users), "timestamp": times},
                         schema_overrides={"rating": pl.Float32})
    # a user may meet an item twice: keep it (sequences may repeat)
    return Dataset("walks", inter, None, fingerprint="walks")


@pytest.mark.parametrize("encoder,objective", [("gru", "sampled"), ("sasrec", "full-softmax"), ("gru", "in-batch")])
def test_model_learns_beyond_popularity(walks, encoder, objective):
    config = _config(
        sequence={"protocol": "leave-last-out", "encoder": encoder, "max_length": 12, "objective": objective,
                  "num_sampled": 20, "min_rating": None, "num_heads": 2},
        task={"remove_accidental_hits": True},
        train={"epochs": 5, "batch_size": 32, "learning_rate": 0.02, "eval_every": 100},
    )
    data = prepare_sequences(config, walks)
    model = build_model(config, data)
    Trainer.from_config(config, SequenceBatches(data), model, progress=False).fit()
    ks = (10,)
    learned = evaluate_examples(model, data, data.test, ks=ks, exclude_seen=False)["top_10_accuracy"]
    popular = popularity_metrics(data, data.test, ks=ks, exclude_seen=False)["top_10_accuracy"]
    assert learned > max(0.5, 2 * popular), (learned, popular)


def test_history_input_handling():
    catalogue = pl.DataFrame({"item_id": [5, 6, 7, 8]})
    with pytest.warns(UserWarning, match="not in the catalogue"):
        assert history_to_indices([5, 99, 7], catalogue) == [0, 2]
    with pytest.raises(TowerrecError, match="not in the catalogue"):
        history_to_indices([5, 99], catalogue, unknown="error")
    assert history_to_indices([5, 6, 7, 8], catalogue, max_length=2) == [2, 3]  # most recent kept


@pytest.mark.parametrize("encoder,user_embedding", [("gru", "false"), ("sasrec", "true")])
def test_cli_train_and_recommend_history(capsys, tmp_path, encoder, user_embedding):
    save_dataset(make_synthetic(100, 60, 2500, seed=5), tmp_path / "ds")
    config = tmp_path / "c.toml"
    config.write_text(small_toml(
        f'name = "seq-{encoder}"\n[data]\ndataset = "{tmp_path / "ds"}"\n'
        '[model]\nkind = "sequential"\nembedding_dim = 16\n'
        f'[sequence]\nprotocol = "leave-last-out"\nencoder = "{encoder}"\nmax_length = 8\nobjective = "full-softmax"\n'
        f'step_features = ["genre", "year", "rating"]\nuser_embedding = {user_embedding}\n'
        '[train]\nepochs = 2\nbatch_size = 32\noptimizer = "adam"\nlearning_rate = 0.01\n[eval]\nks = [1, 10]\n'
    ))
    code, out = run_cli(capsys, "train", str(config), "--runs", str(tmp_path / "runs"))
    assert code == 0, out
    (run_dir,) = [str(d) for d in (tmp_path / "runs").iterdir() if not d.name.startswith(".")]  # not the lock
    assert "top-10" in out

    code, out = run_cli(capsys, "recommend", run_dir, "--history", "1,2,3", "-k", "5")
    assert code == 0, out
    assert len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) == 5
    assert not re.search(r"\(id [123],", out)  # the history itself is excluded

    code, out = run_cli(capsys, "recommend", run_dir, "--user", "3", "-k", "4")
    assert code == 0 and len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) == 4, out

    code, out = run_cli(capsys, "recommend", run_dir, "--history", "1,99999", "-k", "3")
    assert code == 0 and "99999" in out and "warning" in out

    code, out = run_cli(capsys, "recommend", run_dir, "--history", "99999")
    assert code == 1 and "empty history" in out and "--fallback popular" in out
    code, out = run_cli(capsys, "recommend", run_dir, "--history", "99999", "--fallback", "popular", "-k", "3")
    assert code == 0 and len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) == 3

    # issue 13: one batched pass for every user; "dd42" on integer ids is an unknown user; short lists
    code, out = run_cli(capsys, "recommend", run_dir, "--all-users", "-k", "2")
    assert code == 0 and len(re.findall(r"^top 2 for user \d+", out, flags=re.M)) == 100, out[-300:]
    code, out = run_cli(capsys, "recommend", run_dir, "--user", "dd42", "--user", "3", "-k", "2", "--fallback", "popular")
    assert code == 0 and "top 2 for user dd42" in out and "top 2 for user 3" in out, out
    code, out = run_cli(capsys, "recommend", run_dir, "--user", "dd42", "-k", "2")
    assert code == 1 and "'dd42'" in out and "not an integer" not in out
    code, out = run_cli(capsys, "recommend", run_dir, "--history", ",".join(str(i) for i in range(1, 59)), "-k", "5")
    assert code == 0 and "(only 2 unseen items left)" in out and len(re.findall(r"^\s+\d+\. ", out, flags=re.M)) == 2

    code, out = run_cli(capsys, "evaluate", run_dir)
    assert code == 0 and "mrr" in out


def test_user_embedding_personalises_training_users_only(tmp_path):
    from towerrec.recommend import recommend_from_histories
    from towerrec.runs import load_run, train_run

    dataset = make_synthetic(60, 80, 1500, seed=3)
    config = _config(sequence={"protocol": "leave-last-out", "max_length": 6, "objective": "full-softmax",
                               "user_embedding": True, "min_rating": 0.0},  # TOML has no null: 0 keeps all
                     train={"epochs": 2, "batch_size": 32})
    result = train_run(config, runs_root=tmp_path, retrain=True, progress=False, dataset=dataset,
                       log=lambda *_: None)
    data = result.data
    assert data.user_vocabulary == sorted(data.user_vocabulary) and (data.train.users > 0).all()
    assert data.test.users.tolist() == [data.user_vocabulary.index(u) + 1 for u in data.test.user_ids]
    run = load_run(result.run_dir)
    known = str(data.user_vocabulary[0])

    def scores(**kwargs):
        recs = recommend_from_histories(run, {"h": [0, 1, 2]}, k=5, exclude_seen=False, **kwargs)["h"]
        return [(r.item_id, round(r.score, 5)) for r in recs]

    anonymous = scores()
    assert scores(users={"h": "no-such-user"}) == anonymous  # unknown users: the history alone decides
    assert scores(users={"h": known}) != anonymous  # a training user's own vector moves the query
    # the reloaded run's embedding matches the trained one for that user
    torch.testing.assert_close(run.model.user_embedding.weight, result.model.user_embedding.weight)
