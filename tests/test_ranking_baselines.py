"""Rating baselines beside a ranking model: the global and per-item mean train rating, by the model's metric code."""

import math
from types import SimpleNamespace

import pytest
import torch

from towerrec.config import RankingConfig
from towerrec.train.evaluate import ranking_baselines, rating_baseline_scores
from towerrec.train.prepared import EncodedExamples


def _examples(items, users, ratings) -> EncodedExamples:
    return EncodedExamples(queries={}, targets=torch.tensor(items), user_rows=torch.tensor(users),
                           ratings=torch.tensor(ratings, dtype=torch.float32))


@pytest.fixture
def data():
    # train: item 0 rated 5 and 3 (mean 4), item 1 rated 2 (mean 2), item 2 unrated; one rating missing (implicit)
    train = _examples([0, 0, 1, 2], [0, 1, 1, 0], [5.0, 3.0, 2.0, float("nan")])
    # test: user 0 rates item 0 5 and item 1 1; user 1 rates item 2 (no train rating) 4
    test = _examples([0, 1, 2], [0, 0, 1], [5.0, 1.0, 4.0])
    return SimpleNamespace(train=train, test=test, num_items=3)


def test_baseline_scores_are_the_global_and_item_mean_train_ratings(data):
    scores = rating_baseline_scores(data, data.test)
    torch.testing.assert_close(scores["global_mean"], torch.full((3,), 10 / 3))
    torch.testing.assert_close(scores["item_mean"], torch.tensor([4.0, 2.0, 10 / 3]))  # unrated item: global mean


def test_baseline_metrics_by_hand(data):
    baselines = ranking_baselines(data, data.test, RankingConfig(ks=(2,)))
    assert set(baselines) == {"global_mean", "item_mean"}
    glob, item = baselines["global_mean"], baselines["item_mean"]
    assert glob["rmse"] == pytest.approx(math.sqrt(78 / 27), rel=1e-6)  # errors 5/3, -7/3, 2/3
    assert item["rmse"] == pytest.approx(math.sqrt(22 / 27), rel=1e-6)  # errors 1, -1, 2/3
    assert item["mae"] == pytest.approx((1 + 1 + 2 / 3) / 3, rel=1e-6)
    assert glob["auc"] == 0.5 and item["auc"] == 1.0  # a constant ties every pair; item means order them all
    assert item["ndcg@2"] == pytest.approx(1.0) and item["mrr"] == pytest.approx(1.0)
    assert glob["ndcg@2"] < 1.0  # user 0's two items tie: the expectation over both orders


def test_no_baselines_without_rating_regression(data):
    assert ranking_baselines(data, data.test, RankingConfig(loss="bce", label="binary")) == {}
    data.train.ratings = torch.full((4,), float("nan"))
    assert ranking_baselines(data, data.test, RankingConfig()) == {}
