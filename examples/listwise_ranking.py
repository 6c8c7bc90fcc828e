"""Listwise ranking on MovieLens-100K: one model, three losses (pointwise MSE, pairwise hinge, ListMLE).

Mirrors the TensorFlow Recommenders tutorial "Listwise ranking"
(https://www.tensorflow.org/recommenders/examples/listwise_ranking): 50 lists per user of 5 movies the
user rated (``tr.data.sample_lists``, the tutorial's ``sample_listwise``), a model written in Python
(user and movie embeddings of 32 -> Dense 64, 32 -> one score per movie of the list), trained with
mean squared error, a pairwise hinge loss and ListMLE; each is evaluated by the NDCG of its order of
test lists (one list of 5 rated test movies per user, gain 2^rating - 1), beside a baseline that orders
a list by the movies' mean train rating.

    python examples/listwise_ranking.py --data-dir ../shared/datasets/ml-100k
    python examples/listwise_ranking.py --fast          # a subset, one epoch (the test suite runs this)

Without --data-dir, towerrec downloads MovieLens-100K into $TOWERREC_HOME (checksum-verified).
"""

import argparse

import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

# Data: the tutorial trains on 60% of the shuffled ratings and tests on 20% (the other 20%: validation, unused).
dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
config = tr.config_from_dict({
    "data": {"split": "tfrs-random", "test_fraction": 0.2, "validation_fraction": 0.2, "seed": 42,
             "candidate_key": "title"},
    "model": {"query_features": ["user_id"], "candidate_features": ["movie_title"]},
})
data = tr.prepare(config, dataset, progress=False)  # users as vocabulary rows, movies as catalogue positions
train, test = data.train, data.test
lists = tr.data.sample_lists(train.user_rows, train.targets, train.ratings, lists_per_user=50, list_size=5, seed=42)
known = test.user_rows >= 0  # test lists: one per user of 5 of the user's test movies
test_lists = tr.data.sample_lists(test.user_rows[known], test.targets[known], test.ratings[known],
                                  lists_per_user=1, list_size=5, seed=42)
print(f"{len(lists):,} train lists, {len(test_lists):,} test lists of 5 movies ({lists.num_skipped_users} users "
      "with fewer than 5 train ratings skipped)")


class RankingModel(tr.RankingModel):
    """The tutorial's model: user and movie embeddings, concatenated per list entry, -> Dense 64, 32 -> score."""

    def __init__(self, num_users: int, num_movies: int, loss: str) -> None:
        super().__init__()
        self.user_embeddings = tr.layers.embedding(num_users, 32, init="keras-uniform")
        self.movie_embeddings = tr.layers.embedding(num_movies, 32, init="keras-uniform")
        self.score_model = tr.MLP(64, [64, 32, 1])  # ReLU between; the last layer is linear
        self.task = tr.tasks.Ranking(loss=loss)

    def score(self, batch):
        """``[batch, list_size]`` scores of the movies ``candidate_index`` for the users ``user`` ([batch])."""
        movies = self.movie_embeddings(batch["candidate_index"])  # [batch, list_size, 32]
        users = self.user_embeddings(batch["user"]).unsqueeze(1).expand_as(movies)
        return self.score_model(torch.cat([users, movies], dim=-1)).squeeze(-1)

    def compute_loss(self, batch):
        return self.task(batch["label"], self.score(batch))


def list_ndcg(scores: torch.Tensor) -> float:
    """NDCG of the test lists ordered by ``scores`` ([lists, 5]): the whole list, gain 2^rating - 1."""
    groups = torch.arange(len(test_lists)).repeat_interleave(5)
    metrics = tr.metrics.list_metrics(scores.reshape(-1), torch.as_tensor(test_lists.labels).reshape(-1), groups,
                                      ks=(5,))
    return metrics["ndcg@5"]


train_lists = {"user": lists.users, "candidate_index": lists.items, "label": lists.labels}
test_batch = {"user": torch.as_tensor(test_lists.users), "candidate_index": torch.as_tensor(test_lists.items)}
for loss in ("mse", "hinge", "listmle"):
    torch.manual_seed(42)
    model = RankingModel(data.num_users, data.num_items, loss)
    tr.Trainer(model, train_lists, epochs=epochs, batch_size=8192, optimizer="adagrad", learning_rate=0.1,
               progress=False).fit()
    model.eval()
    with torch.no_grad():
        print(f"{loss:>8}: NDCG {list_ndcg(model.score(test_batch)):.4f}")

# Baseline: each movie's mean train rating (movies without one: the global mean).
sums = torch.zeros(data.num_items).index_add_(0, train.targets, train.ratings)
counts = torch.zeros(data.num_items).index_add_(0, train.targets, torch.ones(len(train)))
mean_rating = torch.where(counts > 0, sums / counts.clamp(min=1), train.ratings.mean())
print(f"movie mean rating: NDCG {list_ndcg(mean_rating[test_batch['candidate_index']]):.4f}")
