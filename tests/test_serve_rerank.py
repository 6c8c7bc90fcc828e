"""Retrieve-then-rank in exported bundles and over HTTP: the ranker's files, both stages' scores, the rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from _serve_helpers import tiny_run
from towerrec.errors import ConfigError, RequestError, TowerrecError
from towerrec.features import FittedFeatures
from towerrec.layers.embedding import embedding
from towerrec.model import CANDIDATE_INDEX, RankingModel
from towerrec.rules import BusinessRules
from towerrec.serve import export_bundle, load_bundle
from towerrec.serve.app import create_app

CANDIDATES = 20
NO_HORROR = {"exclude": [{"name": "no-horror-under-13", "items": {"column": "genres", "op": "contains",
                                                                   "value": "Horror"},
                          "users": {"column": "age", "op": "<", "value": 13}}]}


class ItemBiasRanker(RankingModel):
    """A small ranker: user · item embeddings plus a per-item bias; items by catalogue position (set_catalogue)."""

    def __init__(self, num_users: int, num_items: int, dim: int = 4) -> None:
        super().__init__()
        self.user, self.item = embedding(num_users, dim), embedding(num_items, dim)
        self.bias = nn.Parameter(torch.zeros(num_items))
        self.register_buffer("catalogue_item", torch.zeros(0, dtype=torch.int64), persistent=False)

    def set_catalogue(self, features):
        self.catalogue_item = features["item_id"].to(self.bias.device)

    def score(self, batch):
        index = batch[CANDIDATE_INDEX]
        items = self.catalogue_item[index]
        users = self.user(batch["user_id"])
        if index.dim() == 2:
            users = users[:, None, :]
        return (users * self.item(items)).sum(-1) + self.bias[items]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("rerank-runs"))


@pytest.fixture(scope="module")
def ranker(run):
    features = run.data.features
    torch.manual_seed(3)
    model = ItemBiasRanker(features.inputs("query")[0].cardinality, features.inputs("candidate")[0].cardinality)
    with torch.no_grad():
        model.bias.copy_(torch.randn(model.bias.shape) * 3)  # a ranking unlike the retrieval order
    return model.eval(), features


@pytest.fixture(scope="module")
def folders(run, ranker, tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    model, features = ranker
    common = {"data": run.data, "ranker": model, "ranker_features": features, "candidates": CANDIDATES}
    return {
        "plain": export_bundle(run.run_dir, root / "plain", data=run.data),
        "ranked": export_bundle(run.run_dir, root / "ranked", **common),
        "rules": export_bundle(run.run_dir, root / "rules", rules=BusinessRules.from_dict(NO_HORROR), **common),
    }


@pytest.fixture(scope="module")
def bundles(folders):
    return {name: load_bundle(folder) for name, folder in folders.items()}


def _ranker_scores(ranker, bundle, user_id, positions):
    model, features = ranker
    encoded = features.encode_queries(pl.DataFrame({"user_id": [user_id]}))["user_id"]
    batch = {"user_id": encoded, CANDIDATE_INDEX: torch.tensor([positions])}
    with torch.no_grad():
        return model.score(batch)[0].tolist()


def test_the_bundle_keeps_the_ranker_as_json_and_safetensors(folders):
    out = folders["rules"]
    ranker_files = sorted(p.relative_to(out).as_posix() for p in (out / "ranker").rglob("*") if p.is_file())
    assert ranker_files == ["ranker/candidates.safetensors", "ranker/features.json", "ranker/model/model.json",
                            "ranker/model/model.safetensors", "ranker/users.safetensors"]
    assert sorted(p.name for p in (out / "rules").iterdir()) == ["items.parquet", "rules.json", "users.parquet"]
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["ranker"]["candidates"] == CANDIDATES and manifest["ranker"]["model_class"].endswith("ItemBiasRanker")
    assert manifest["rules"]["item_columns"] == ["genres"] and manifest["rules"]["user_columns"] == ["age"]
    assert {"ranker/model/model.safetensors", "ranker/users.safetensors", "rules/rules.json"} <= set(manifest["checksums"])


def test_a_bundle_without_ranker_is_unchanged(folders, bundles):
    out = folders["plain"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["bundle.json", "config.toml", "features.json", "model", "candidates.safetensors", "users.safetensors",
         "users.parquet", "items.parquet", "index"])
    manifest = json.loads((out / "bundle.json").read_text())
    assert "ranker" not in manifest and "rules" not in manifest
    plain = bundles["plain"]
    assert plain.ranking is None and plain.candidates is None
    assert set(plain.recommend(int(plain.user_ids[0]), k=3)[0]) == {"item_id", "title", "score"}


def test_recommend_retrieves_ranks_and_cuts_to_k(bundles, ranker):
    plain, ranked = bundles["plain"], bundles["ranked"]
    for row in range(0, 40, 7):
        user = int(plain.user_ids[row])
        retrieved = plain.recommend(user, k=CANDIDATES)
        positions = plain.item_positions([r["item_id"] for r in retrieved]).tolist()
        scores = _ranker_scores(ranker, ranked, user, positions)
        expected = sorted(range(len(positions)), key=lambda i: -scores[i])[:5]
        found = ranked.recommend(user, k=5)
        assert [r["item_id"] for r in found] == [retrieved[i]["item_id"] for i in expected]
        assert [r["ranking_score"] for r in found] == pytest.approx([scores[i] for i in expected], rel=1e-5)
        assert [r["retrieval_score"] for r in found] == pytest.approx([retrieved[i]["score"] for i in expected],
                                                                     rel=1e-5, abs=1e-6)
        finals = [r["score"] for r in found]
        assert finals == sorted(finals, reverse=True) and finals == [r["ranking_score"] for r in found]
    user = int(plain.user_ids[1])
    ids = [r["item_id"] for r in ranked.recommend(user, k=5)]
    assert [r["item_id"] for r in plain.recommend(user, k=5)] != ids  # the ranker did reorder
    assert [r["item_id"] for r in ranked.recommend(user, k=4, exclude_ids=ids[:1])] == ids[1:5]


def test_k_above_candidates_retrieves_k(bundles):
    ranked = bundles["ranked"]
    found = ranked.recommend(int(ranked.user_ids[0]), k=CANDIDATES + 10)
    left = ranked.num_items - len(np.unique(ranked.seen_positions(0)))
    assert len(found) == min(CANDIDATES + 10, left)


def test_rules_apply_to_known_and_new_users(bundles, run):
    rules, ranked = bundles["rules"], bundles["ranked"]
    users = run.data.dataset.users
    horror = {i for i, g in zip(run.data.dataset.items["item_id"].to_list(), run.data.dataset.items["genres"].to_list())
              if "Horror" in g}
    young = [u for u, a in zip(users["user_id"].to_list(), users["age"].to_list()) if a < 13]
    known_young = [u for u in young if rules.user_rows([u])[0] >= 0]
    assert known_young
    would_have = 0
    for user in known_young:
        assert not horror & {r["item_id"] for r in rules.recommend(user, k=10)}
        would_have += bool(horror & {r["item_id"] for r in ranked.recommend(user, k=10)})
    assert would_have  # without the rule, some of them get horror films
    adult = next(u for u, a in zip(users["user_id"].to_list(), users["age"].to_list())
                 if a >= 13 and rules.user_rows([u])[0] >= 0 and horror & {r["item_id"] for r in ranked.recommend(u, k=10)})
    assert rules.recommend(adult, k=10) == ranked.recommend(adult, k=10)  # the rule leaves adults alone
    history = [next(iter(horror))]
    child = rules.recommend(history=history, features={"age": 10}, k=10)
    grown = rules.recommend(history=history, features={"age": 40}, k=10)
    assert not horror & {r["item_id"] for r in child} and horror & {r["item_id"] for r in grown}
    assert "age" in rules.feature_columns() and "age" not in ranked.feature_columns()
    with pytest.raises(RequestError, match="features.age"):
        rules.recommend(history=history, features={"age": "ten"}, k=3)


def test_rules_that_remove_everything_give_fewer_items(run, ranker, tmp_path):
    model, features = ranker
    out = export_bundle(run.run_dir, tmp_path / "none", data=run.data, ranker=model, ranker_features=features,
                        candidates=CANDIDATES, rules=BusinessRules(deny=tuple(run.data.catalogue_ids.tolist())))
    bundle = load_bundle(out)
    user = int(bundle.user_ids[0])
    assert bundle.recommend(user, k=5) == []
    with TestClient(create_app(bundle)) as client:
        body = client.get(f"/recommend?user_id={user}&k=5").json()
        assert body["k"] == 0 and body["items"] == [] and body["k_requested"] == 5


def test_the_popular_fallback_obeys_the_rules(run, ranker, tmp_path, bundles):
    model, features = ranker
    popular = [r["item_id"] for r in bundles["ranked"].recommend("nobody", k=5, fallback="popular")]
    denied = popular[:2]
    out = export_bundle(run.run_dir, tmp_path / "deny", data=run.data, ranker=model, ranker_features=features,
                        candidates=CANDIDATES, rules=BusinessRules(deny=tuple(denied)))
    answered = [r["item_id"] for r in load_bundle(out).recommend("nobody", k=5, fallback="popular")]
    assert len(answered) == 5 and not set(denied) & set(answered)
    assert answered[:3] == popular[2:]  # the rest keep their popularity order


def test_http_answers_both_scores_like_python(bundles):
    rules = bundles["rules"]
    with TestClient(create_app(rules)) as client:
        health = client.get("/healthz").json()
        assert health["candidates"] == CANDIDATES and health["rules"] and health["ranker"] == "ItemBiasRanker"
        schema = client.get("/openapi.json").json()["components"]["schemas"]["Item"]["properties"]
        assert {"score", "retrieval_score", "ranking_score"} <= set(schema)
        for row in (0, 5, 9):
            user = int(rules.user_ids[row])
            expected = rules.recommend(user, k=6)
            for body in (client.get(f"/recommend?user_id={user}&k=6").json(),
                         client.post("/recommend", json={"user_id": user, "k": 6}).json()):
                _same(body["items"], expected)
        history = rules.items["item_id"].to_list()[:3]
        posted = client.post("/recommend", json={"history": history, "features": {"age": 10}, "k": 6})
        assert posted.status_code == 200, posted.text
        _same(posted.json()["items"], rules.recommend(history=history, features={"age": 10}, k=6))
        user = int(rules.user_ids[2])
        recent = client.post("/recommend", json={"user_id": user, "history": history, "k": 4}).json()
        _same(recent["items"], rules.recommend(user, history=history, k=4))
        bad = client.post("/recommend", json={"history": history, "features": {"age": "ten"}})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("features.age")
        unknown = client.post("/recommend", json={"history": history, "features": {"shoe_size": 4}})
        assert unknown.status_code == 422 and "shoe_size" in unknown.json()["detail"]


def _same(served, answered):
    keys = ("score", "retrieval_score", "ranking_score")
    assert [(r["item_id"], r["title"]) for r in served] == [(r["item_id"], r["title"]) for r in answered]
    for key in keys:
        assert [r[key] for r in served] == pytest.approx([r[key] for r in answered], rel=1e-5, abs=1e-6)
    finals = [r["score"] for r in served]
    assert finals == sorted(finals, reverse=True)


@pytest.mark.parametrize("name", ["ranker/model/model.safetensors", "ranker/candidates.safetensors",
                                  "ranker/users.safetensors", "ranker/features.json", "rules/rules.json",
                                  "rules/users.parquet"])
def test_a_damaged_ranker_or_rules_file_is_refused_at_load(folders, tmp_path, name):
    copy = shutil.copytree(folders["rules"], tmp_path / "copy")
    path = copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(TowerrecError) as error:
        load_bundle(copy)
    assert name.split("/")[-1] in error.value.message and "\n" not in error.value.message
    path.unlink()
    with pytest.raises(TowerrecError, match="missing"):
        load_bundle(copy)


def test_a_ranker_of_another_catalogue_is_refused(run, ranker, tmp_path):
    model, features = ranker
    shuffled = FittedFeatures(features.features, features._catalogue.reverse(), features._user_ids, features._users)
    with pytest.raises(TowerrecError, match="the ranker was trained on another catalogue than the retriever: "
                                            "catalogue position 0 holds item 60, not 1"):
        export_bundle(run.run_dir, tmp_path / "x", data=run.data, ranker=model, ranker_features=shuffled)
    assert not (tmp_path / "x").exists()
    smaller = FittedFeatures(features.features, features._catalogue.head(50), features._user_ids, features._users)
    with pytest.raises(TowerrecError, match="50 items, not 60"):
        export_bundle(run.run_dir, tmp_path / "x", data=run.data, ranker=model, ranker_features=smaller)


def test_export_refuses_bad_ranker_arguments(run, ranker, tmp_path):
    model, features = ranker
    out = tmp_path / "x"
    with pytest.raises(TowerrecError, match="not a ranking run"):
        export_bundle(run.run_dir, out, data=run.data, ranker=run.run_dir)
    with pytest.raises(TypeError, match="needs ranker_features"):
        export_bundle(run.run_dir, out, data=run.data, ranker=model)
    with pytest.raises(TypeError, match="rules= go with ranker="):
        export_bundle(run.run_dir, out, data=run.data, rules=BusinessRules.from_dict(NO_HORROR))
    with pytest.raises(ValueError, match="candidates must be an integer from 1"):
        export_bundle(run.run_dir, out, data=run.data, ranker=model, ranker_features=features, candidates=0)
    unknown = {"exclude": [{"name": "r", "items": {"column": "rated", "op": "==", "value": "X"}}]}
    with pytest.raises(ConfigError, match="column 'rated' is not in the items table"):
        export_bundle(run.run_dir, out, data=run.data, ranker=model, ranker_features=features,
                      rules=BusinessRules.from_dict(unknown))
    assert not out.exists()


def test_cli_export_rules_need_rerank(run, tmp_path, capsys):
    from towerrec.cli.app import main

    rules = tmp_path / "rules.toml"
    rules.write_text('deny = [1]\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run.run_dir), "--out", str(tmp_path / "b"), "--rules", str(rules)])
    text = capsys.readouterr()
    assert exit_info.value.code == 1 and "--rules go with --rerank" in text.out + text.err


# -- a ranking run ([model] kind = "ranking") and the CLI ------------------------------------------------

def _ranking_run(root, num_items: int = 60):
    from towerrec.config import config_from_dict
    from towerrec.data.synthetic import make_synthetic
    from towerrec.runs import train_run

    config = config_from_dict({
        "name": f"rank{num_items}", "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
        "model": {"kind": "ranking", "query_features": ["user_id", "user_age"], "candidate_features": ["item_id"],
                  "embedding_dim": 8, "layer_sizes": [16]},
        "train": {"epochs": 1, "batch_size": 256, "optimizer": "adam", "learning_rate": 0.01},
        "ranking": {"user_item_bias": True},
    })
    return train_run(config, runs_root=root, dataset=make_synthetic(150, num_items, 3000, seed=5), progress=False,
                     log=lambda *_: None)


def test_cli_export_with_a_ranking_run_rules_and_summed_scores(run, tmp_path, capsys, monkeypatch):
    from towerrec.cli.app import main
    from towerrec.runs import load_run
    from towerrec.serve import export as export_module

    real = export_module.export_bundle  # a synthetic run's data cannot be re-read from its config: hand it over
    monkeypatch.setattr(export_module, "export_bundle", lambda *a, **kw: real(*a, **{**kw, "data": run.data}))
    ranking = _ranking_run(tmp_path / "runs")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[exclude]]\nname = "no-horror-under-13"\nitems = { column = "genres", op = "contains", '
                     'value = "Horror" }\nusers = { column = "age", op = "<", value = 13 }\n')
    out = tmp_path / "bundle"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run.run_dir), "--out", str(out), "--rerank", str(ranking.run_dir), "--candidates", "25",
              "--rules", str(rules), "--score", "sum", "--retrieval-weight", "0.5"])
    assert exit_info.value.code in (0, None), capsys.readouterr()
    bundle = load_bundle(out)
    assert bundle.candidates == 25 and bundle.manifest["ranker"]["run"] == ranking.run_dir.name
    assert bundle.ranking.score == "sum" and bundle.ranking.retrieval_weight == 0.5
    assert (out / "ranker" / "config.toml").is_file() and bundle.manifest["rules"]["user_columns"] == ["age"]
    ranker = load_run(ranking.run_dir)
    ranker.model.set_catalogue(ranker.features.encode_candidates())
    ages = dict(zip(run.data.dataset.users["user_id"].to_list(), run.data.dataset.users["age"].to_list()))
    user = next(int(u) for u in bundle.user_ids[3:] if ages[int(u)] >= 13)  # the rule leaves this user alone
    plain = load_bundle(export_bundle(run.run_dir, tmp_path / "plain", data=run.data))
    retrieved = plain.recommend(user, k=25)
    positions = plain.item_positions([r["item_id"] for r in retrieved]).tolist()
    batch = {**ranker.features.encode_queries(pl.DataFrame({"user_id": [user]})),
             "user_row": torch.from_numpy(ranker.features.user_index([user])), CANDIDATE_INDEX: torch.tensor([positions])}
    with torch.no_grad():
        ranking_scores = np.array(ranker.model.score(batch)[0].tolist(), dtype=np.float64)
    retrieval = np.array([r["score"] for r in retrieved])

    def z(v):
        return (v - v.mean()) / v.std()

    final = z(ranking_scores) + 0.5 * z(retrieval)
    expected = [retrieved[i]["item_id"] for i in sorted(range(25), key=lambda i: -final[i])[:8]]
    found = bundle.recommend(user, k=8)
    assert [r["item_id"] for r in found] == expected
    assert [r["score"] for r in found] == pytest.approx(sorted(final, reverse=True)[:8], rel=1e-4, abs=1e-5)
    assert [r["ranking_score"] for r in found] == pytest.approx(
        [ranking_scores[positions.index(p)] for p in bundle.item_positions(expected).tolist()], rel=1e-5, abs=1e-6)
    other = _ranking_run(tmp_path / "runs", num_items=50)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run.run_dir), "--out", str(tmp_path / "x"), "--rerank", str(other.run_dir)])
    text = capsys.readouterr()
    assert exit_info.value.code == 1 and "was trained on another catalogue than the retriever" in text.out + text.err
    assert "50 items, not 60" in text.out + text.err
