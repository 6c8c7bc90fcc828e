"""Retrieve-then-rank (towerrec.pipeline): retrieval of N candidates, ranking, rules, the cut; both scores kept."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from cli_helpers import run_cli_text
from config_helpers import small_config, small_toml
from towerrec.data.store import save_dataset
from towerrec.data.synthetic import make_synthetic
from towerrec.data.tables import Dataset
from towerrec.errors import TowerrecError
from towerrec.model import CANDIDATE_INDEX, USER_ROW, RankingModel
from towerrec.pipeline import RetrieveThenRank, check_same_catalogue, combine_scores, rerank
from towerrec.recommend import recommend
from towerrec.rules import BusinessRules
from towerrec.runs import load_run, train_run
from towerrec.train.prepared import prepare


class PositionRanker(RankingModel):
    """Scores a candidate by minus its catalogue position (+ the user row / 1000): a known order."""

    def __init__(self, sign: float = -1.0):
        super().__init__()
        self.sign = sign
        self.unused = nn.Parameter(torch.zeros(1))

    def score(self, batch):
        index = batch[CANDIDATE_INDEX].float()
        return self.sign * index + batch[USER_ROW].float().unsqueeze(-1) / 1000 + 0 * self.unused


class BadShapeRanker(RankingModel):
    def score(self, batch):
        return torch.zeros(batch[CANDIDATE_INDEX].shape[0])


def _dataset(num_items: int = 40) -> Dataset:
    return make_synthetic(60, num_items, 1200, seed=5)


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    config = small_config(name="pipe", data={"dataset": "synthetic"},
                          model={"embedding_dim": 8}, train={"epochs": 1, "batch_size": 256})
    dataset = _dataset()
    result = train_run(config, runs_root=tmp_path_factory.mktemp("runs"), dataset=dataset, progress=False,
                       log=lambda m: None)
    run = load_run(result.run_dir)
    return run, result.data


def test_final_lists_are_the_retrieved_candidates_in_ranking_order(retrieval):
    run, data = retrieval
    pipeline = RetrieveThenRank(run.model, PositionRanker(), data, candidates=15)
    users = [1, 2, 3, 10]
    out = pipeline.recommend(users, k=5)
    retrieved = recommend(run, data, users, k=15)
    ids = data.catalogue_ids.tolist()
    for user in users:
        candidates = retrieved[user]
        by_position = sorted(candidates, key=lambda r: ids.index(r.item_id))[:5]  # PositionRanker's order
        got = out[user]
        assert [r.item_id for r in got] == [r.item_id for r in by_position]
        rank = {r.item_id: i + 1 for i, r in enumerate(candidates)}
        score = {r.item_id: r.score for r in candidates}
        row = int(data.features.user_index(np.array([user]))[0])
        for item in got:
            assert item.retrieval_rank == rank[item.item_id]
            assert item.retrieval_score == pytest.approx(score[item.item_id], rel=1e-5)
            assert item.ranking_score == pytest.approx(-ids.index(item.item_id) + row / 1000, abs=1e-4)
            assert item.score == item.ranking_score  # score="ranker"


def test_k_above_candidates_retrieves_k(retrieval):
    run, data = retrieval
    pipeline = RetrieveThenRank(run.model, PositionRanker(), data, candidates=3)
    got = pipeline.recommend([1], k=8)[1]
    assert len(got) == 8  # max(k, candidates) retrieved, as a bundle does
    assert sorted(r.item_id for r in got) == sorted(r.item_id for r in recommend(run, data, [1], k=8)[1])


def test_seen_and_excluded_items_never_come_back(retrieval):
    run, data = retrieval
    pipeline = RetrieveThenRank(run.model, PositionRanker(), data, candidates=40)
    user = 1
    seen = set(data.split.train.filter(pl.col("user_id") == user)["item_id"].to_list())
    first = [r.item_id for r in pipeline.recommend([user], k=40)[user]]
    assert first and not seen & set(first)
    assert len(first) == 40 - len(seen)  # every unseen item, none twice
    dropped = first[:3]
    again = [r.item_id for r in pipeline.recommend([user], k=40, exclude_ids=dropped + [99999])[user]]
    assert again == first[3:]
    mapped = pipeline.recommend([user, 2], k=5, exclude_ids={user: dropped})
    assert [r.item_id for r in mapped[user]] == first[3:8]
    with_seen = pipeline.recommend([user], k=40, exclude_seen=False)[user]
    assert len(with_seen) == 40


def test_rules_apply_after_ranking_before_the_cut(retrieval):
    run, data = retrieval
    users = data.dataset.users
    horror = set(data.dataset.items.filter(pl.col("genres").list.contains("Horror"))["item_id"].to_list())
    rules = BusinessRules.from_dict({"exclude": [{"name": "no-horror-under-30",
                                                  "items": {"column": "genres", "op": "contains", "value": "Horror"},
                                                  "users": {"column": "age", "op": "<", "value": 30}}],
                                     "cap": [{"name": "variety", "column": "genres", "max": 2}]})
    pipeline = RetrieveThenRank(run.model, PositionRanker(), data, candidates=40, rules=rules)
    plain = RetrieveThenRank(run.model, PositionRanker(), data, candidates=40)
    young = users.filter(pl.col("age") < 30)["user_id"].to_list()[0]
    older = users.filter(pl.col("age") >= 30)["user_id"].to_list()[0]
    genres = dict(zip(data.dataset.items["item_id"].to_list(), data.dataset.items["genres"].to_list()))
    for user in (young, older):
        got = [r.item_id for r in pipeline.recommend([user], k=6)[user]]
        assert len(got) == 6
        counts: dict[str, int] = {}
        for item in got:
            for genre in genres[item]:
                counts[genre] = counts.get(genre, 0) + 1
        assert max(counts.values()) <= 2
        # the same as the rules applied by hand to the unruled pipeline's full ranked list
        full = plain.recommend([user], k=40)[user]
        expected = rules.compile(data.dataset.items, users).apply([r.item_id for r in full],
                                                                 [r.score for r in full], 6, user=user)
        assert got == expected
    assert not horror & {r.item_id for r in pipeline.recommend([young], k=6)[young]}


def test_sum_combines_standardised_scores():
    retrieval = np.array([[3.0, 2.0, 1.0, -np.inf]])
    ranking = np.array([[1.0, 1.0, 4.0, 0.0]])
    valid = np.array([[True, True, True, False]])
    z_ret = (retrieval[0, :3] - 2.0) / np.sqrt(2 / 3)
    z_rank = (ranking[0, :3] - 2.0) / np.sqrt(2.0)
    got = combine_scores(retrieval, ranking, valid, "sum", retrieval_weight=0.5)
    np.testing.assert_allclose(got[0, :3], z_rank + 0.5 * z_ret)
    assert got[0, 3] == -np.inf
    np.testing.assert_allclose(combine_scores(retrieval, ranking, valid, "ranker")[0, :3], ranking[0, :3])
    flat = combine_scores(np.ones((1, 3)), np.ones((1, 3)), np.ones((1, 3), bool), "sum")
    np.testing.assert_allclose(flat, 0.0)  # equal scores standardise to 0, not NaN
    with pytest.raises(ValueError, match="score must be one of ranker, sum"):
        combine_scores(retrieval, ranking, valid, "max")
    with pytest.raises(ValueError, match="NaN or infinite"):
        combine_scores(retrieval, np.array([[np.nan, 1.0, 1.0, 1.0]]), valid)


def test_rerank_core_on_given_candidates():
    candidates = np.array([[5, 2, 9, -1], [0, 1, 2, 3]])
    retrieved = np.array([[0.9, 0.8, 0.7, -np.inf], [0.4, 0.3, 0.2, 0.1]])
    queries = {USER_ROW: torch.tensor([0, 1])}
    out = rerank(PositionRanker(), queries, candidates, retrieved, 3)
    assert out.items.tolist() == [[2, 5, 9], [0, 1, 2]]
    assert out.candidates.tolist() == [[1, 0, 2], [0, 1, 2]]
    np.testing.assert_allclose(out.retrieval_scores, [[0.8, 0.9, 0.7], [0.4, 0.3, 0.2]])
    np.testing.assert_allclose(out.ranking_scores, [[-2, -5, -9], [0.001, -0.999, -1.999]], atol=1e-6)
    short = rerank(PositionRanker(), queries, candidates, retrieved, 4)
    assert short.counts.tolist() == [3, 4] and short.items[0, 3] == -1 and np.isnan(short.scores[0, 3])
    with pytest.raises(ValueError, match="scores must be shaped like candidate_index"):
        rerank(BadShapeRanker(), queries, candidates, retrieved, 3)
    with pytest.raises(TypeError, match="RankingModel"):
        rerank(nn.Linear(1, 1), queries, candidates, retrieved, 3)


def test_a_ranker_of_another_catalogue_is_refused(retrieval):
    run, data = retrieval
    other = prepare(small_config(data={"dataset": "synthetic"}), _dataset(num_items=41), progress=False)
    with pytest.raises(TowerrecError, match=r"the ranker was trained on another catalogue than the retriever: "
                                            r"41 items, not 40"):
        RetrieveThenRank(run.model, PositionRanker(), data, ranker_data=other)
    with pytest.raises(TowerrecError, match=r"catalogue position 1 holds item 7, not 2"):
        check_same_catalogue([1, 2, 3], [1, 7, 3])
    check_same_catalogue(np.array([1, 2]), [1, 2])


def test_bad_arguments(retrieval):
    run, data = retrieval
    with pytest.raises(TypeError, match="the ranker must be a towerrec RankingModel"):
        RetrieveThenRank(run.model, run.model, data)
    with pytest.raises(TypeError, match="the retriever must be a towerrec RetrievalModel"):
        RetrieveThenRank(PositionRanker(), PositionRanker(), data)
    with pytest.raises(ValueError, match="candidates must be an integer ≥ 1"):
        RetrieveThenRank(run.model, PositionRanker(), data, candidates=0)
    with pytest.raises(ValueError, match="score must be one of"):
        RetrieveThenRank(run.model, PositionRanker(), data, score="product")
    for weight in (True, float("nan"), "2"):  # the same check as a bundle's export
        with pytest.raises(ValueError, match="retrieval_weight must be a finite number"):
            RetrieveThenRank(run.model, PositionRanker(), data, score="sum", retrieval_weight=weight)
    pipeline = RetrieveThenRank(run.model, PositionRanker(), data)
    with pytest.raises(TowerrecError, match="user\\(s\\) 99999 not in the training data"):
        pipeline.recommend([1, 99999])
    with pytest.raises(TowerrecError, match="k must be ≥ 1"):
        pipeline.recommend([1], k=0)
    assert pipeline.recommend(["1"], k=2)["1"]  # text ids find integer users


# -- the CLI: towerrec recommend RUN --rerank RANKER_RUN ---------------------------------------
@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank-cli")
    save_dataset(make_synthetic(60, 40, 1200, seed=5), root / "ds")
    save_dataset(make_synthetic(60, 41, 1200, seed=5), root / "other")
    configs = {
        "retrieval": small_toml(f'name = "ret"\n[data]\ndataset = "{root / "ds"}"\n'
                                '[model]\nembedding_dim = 8\n[train]\nepochs = 1\nbatch_size = 256\n'),
        "ranking": small_toml(f'name = "rank"\n[data]\ndataset = "{root / "ds"}"\n'
                              '[model]\nkind = "ranking"\nquery_features = ["user_id"]\ncandidate_features = ["item_id"]\n'
                              'embedding_dim = 8\nlayer_sizes = [8]\n[ranking]\nloss = "mse"\n'
                              '[train]\nepochs = 1\nbatch_size = 256\n'),
        "other": small_toml(f'name = "other"\n[data]\ndataset = "{root / "other"}"\n'
                            '[model]\nkind = "ranking"\nquery_features = ["user_id"]\ncandidate_features = ["item_id"]\n'
                            'embedding_dim = 8\nlayer_sizes = [8]\n[ranking]\nloss = "mse"\n'
                            '[train]\nepochs = 1\nbatch_size = 256\n'),
    }
    paths = {}
    for name, text in configs.items():
        paths[name] = root / f"{name}.toml"
        paths[name].write_text(text)
    return root, paths


def _train(capsys, root, config):
    code, out = run_cli_text(capsys, "train", str(config), "--runs", str(root / "runs"))
    assert code == 0, out
    return re.search(r"run directory: (\S+)", out).group(1)


def test_cli_recommend_rerank_prints_both_scores(capsys, cli_runs):
    root, configs = cli_runs
    retrieval = _train(capsys, root, configs["retrieval"])
    ranking = _train(capsys, root, configs["ranking"])
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rerank", ranking, "--candidates", "20",
                             "--user", "3", "-k", "5")
    assert code == 0, out
    lines = [line for line in out.splitlines() if re.match(r"\s+\d+\. ", line)]
    assert "top 5 for user 3 (retrieved 20, re-ranked)" in out and len(lines) == 5
    ranking_scores = [float(re.search(r"ranking (-?\d+\.\d+)", line).group(1)) for line in lines]
    assert ranking_scores == sorted(ranking_scores, reverse=True)  # ordered by the ranker
    ranks = [int(re.search(r"retrieval -?\d+\.\d+ #(\d+)", line).group(1)) for line in lines]
    assert all(1 <= r <= 20 for r in ranks) and len(set(ranks)) == 5

    rules = root / "rules.toml"
    rules.write_text('[[cap]]\nname = "variety"\ncolumn = "genres"\nmax = 1\n')
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rerank", ranking, "--rules", rules,
                             "--score", "sum", "--user", "3", "-k", "3")
    assert code == 0 and "rules applied" in out and "final " in out, out

    # bad input: one clear line each
    rules.write_text('[[cap]]\nname = "variety"\ncolumn = "genre"\nmax = 1\n')
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rerank", ranking, "--rules", rules, "--user", "3")
    assert code != 0 and "cap 'variety': column 'genre' is not in the items table" in out
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rules", rules, "--user", "3")
    assert code != 0 and "--rules work(s) with --rerank" in out
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rerank", retrieval, "--user", "3")
    assert code != 0 and "not a ranking run" in out
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rerank", ranking, "--score", "max", "--user", "3")
    assert code != 0 and "--score 'max' is not a score mode" in out
    other = _train(capsys, root, configs["other"])
    code, out = run_cli_text(capsys, "recommend", retrieval, "--rerank", other, "--user", "3")
    assert code != 0 and "was trained on another catalogue than" in out and "41 items, not 40" in out
    assert "Traceback" not in out
