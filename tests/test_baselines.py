"""Popularity and EASE, checked against direct computations."""

import numpy as np
import torch

from towerrec.models.baselines import EASEModel, PopularityModel, interaction_matrix



def _catalogue(model):
    """[N, d] candidate embeddings of the whole catalogue."""
    size = model.counts.numel() if hasattr(model, "counts") else model.weights.shape[0]
    return model.candidate_embeddings({"candidate_index": torch.arange(size)})

def test_popularity_ranks_by_train_count():
    model = PopularityModel(4).fit(np.array([2, 2, 2, 0, 0, 3]))
    scores = model.query_embeddings({"user_row": torch.tensor([0, 5])}) @ _catalogue(model).T
    assert scores.shape == (2, 4)
    assert torch.equal(scores[0], scores[1])  # the same list for everyone
    assert scores[0].argsort(descending=True).tolist()[:3] == [2, 0, 3]


def test_ease_matches_closed_form_and_has_zero_diagonal():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 200)
    items = rng.integers(0, 12, 200)
    model = EASEModel(30, 12, l2=5.0).fit(users, items)
    x = interaction_matrix(users, items, 30, 12).double()
    p = torch.linalg.inv(x.T @ x + 5.0 * torch.eye(12, dtype=torch.float64))
    b = torch.eye(12, dtype=torch.float64) - p / p.diagonal()
    b.diagonal().zero_()
    torch.testing.assert_close(model.weights.double(), b, atol=1e-5, rtol=1e-4)
    scores = model.query_embeddings({"user_row": torch.tensor([3])}) @ _catalogue(model).T
    torch.testing.assert_close(scores[0].double(), (x[3] @ b), atol=1e-5, rtol=1e-4)


def test_ease_unknown_user_gets_empty_history():
    model = EASEModel(3, 4).fit(np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert torch.count_nonzero(model.query_embeddings({"user_row": torch.tensor([-1])})) == 0


def test_ease_recommends_co_occurring_items():
    # users who have item 0 also have item 1; a new user with item 0 should get item 1 first
    users = np.repeat(np.arange(20), 2)
    items = np.tile([0, 1], 20)
    extra_u, extra_i = np.arange(20, 30), np.full(10, 2)
    model = EASEModel(31, 3, l2=1.0).fit(np.r_[users, extra_u, 30], np.r_[items, extra_i, 0])
    scores = model.query_embeddings({"user_row": torch.tensor([30])}) @ _catalogue(model).T
    assert scores[0, 1] > scores[0, 2]


def test_ease_scores_sparse_histories_like_dense_rows(monkeypatch):
    from towerrec.metrics.topk import CSR
    from towerrec.models import baselines

    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 25, 150), rng.integers(0, 15, 150)
    model = EASEModel(25, 15, l2=2.0).fit(users, items)
    rows = torch.tensor([3, 7, -1, 3])
    histories = CSR.from_lists([[items[j] for j in np.flatnonzero(users == r)] * 2 if r >= 0 else [] for r in rows.tolist()])
    expected = model.query_embeddings({"user_row": rows}) @ _catalogue(model).T
    for ratio in (1, 10**9):  # sparse product, then dense rows
        monkeypatch.setattr(baselines, "SPARSE_SPEED_RATIO", ratio)
        torch.testing.assert_close(model.score_histories(histories), expected, atol=1e-5, rtol=1e-5)
