"""Basic ranking on MovieLens-100K: predict the rating a user gives a movie.

Mirrors the TensorFlow Recommenders tutorial "Recommending movies: ranking"
(https://www.tensorflow.org/recommenders/examples/basic_ranking): a ranking model written in Python
(user id and movie title embeddings of 32, concatenated -> Dense 256, 64 -> 1 predicted rating), the
ranking task's mean squared error, Adagrad 0.1, batch 8192, test RMSE, ratings predicted for user 42,
and the model saved and loaded. Two baselines beside it: every rating predicted as the mean train rating,
and as the movie's mean train rating.

    python examples/basic_ranking.py --data-dir ../shared/datasets/ml-100k
    python examples/basic_ranking.py --fast          # a subset, one epoch (the test suite runs this)

Without --data-dir, towerrec downloads MovieLens-100K into $TOWERREC_HOME (checksum-verified).
"""

import argparse
import tempfile

import polars as pl
import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

# Data: the ratings split 80/20 at random (seed 42), movies by title, as in the tutorial.
dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
config = tr.config_from_dict({
    "data": {"split": "tfrs-random", "test_fraction": 0.2, "seed": 42, "candidate_key": "title"},
    "model": {"kind": "ranking", "query_features": ["user_id"], "candidate_features": ["movie_title"]},
    "ranking": {"loss": "mse", "rating_min": 1, "rating_max": 5},
})
data = tr.prepare(config, dataset, progress=False)  # ratings checked: finite, within 1..5
print(f"{len(data.train):,} train / {len(data.test):,} test ratings, {data.num_items:,} movies")


class RankingModel(tr.RankingModel):
    """The tutorial's model: user and movie embeddings -> Dense 256 (ReLU), 64 (ReLU), 1 -> the rating."""

    def __init__(self, user_inputs, num_movies: int) -> None:
        super().__init__()
        self.user_embeddings = tr.Tower(user_inputs, embedding_dim=32)  # the user id's embedding
        self.movie_embeddings = tr.layers.embedding(num_movies, 32, init="keras-uniform")  # per catalogue title
        self.ratings = tr.MLP(64, [256, 64, 1])
        self.task = tr.tasks.Ranking(loss="mse")

    def score(self, batch):
        """``[batch]`` predicted ratings of the movies ``candidate_index`` for the batch's users."""
        user = self.user_embeddings(batch)
        movie = self.movie_embeddings(batch["candidate_index"])
        return self.ratings(torch.cat([user, movie], dim=1)).squeeze(1)

    def compute_loss(self, batch):
        return self.task(batch["label"], self.score(batch))

    def get_config(self):  # the towers' inputs are not JSON values as given: save them as dicts
        return {"user_inputs": self.user_embeddings.get_config()["inputs"], "num_movies": self.movie_embeddings.num_embeddings}

    @classmethod
    def from_config(cls, config):
        return cls([tr.InputSpec(**spec) for spec in config["user_inputs"]], config["num_movies"])


torch.manual_seed(42)
model = RankingModel(data.features.inputs("query"), data.num_items)
# Prepared data gives a ranking model each rating's query features, candidate_index and label.
trainer = tr.Trainer(model, data, epochs=epochs, batch_size=8192, optimizer="adagrad", learning_rate=0.1,
                     eval_every=epochs, progress=False)
fit = trainer.fit()
metrics = trainer.evaluate("test")
print(f"trained {len(fit.history)} epoch(s) at {fit.examples_per_s:,.0f} examples/s")

# Baselines: the mean train rating, and each movie's mean train rating (movies without one: the mean).
train, test = data.train, data.test
mean = train.ratings.mean()
sums = torch.zeros(data.num_items).index_add_(0, train.targets, train.ratings)
counts = torch.zeros(data.num_items).index_add_(0, train.targets, torch.ones(len(train)))
movie_mean = torch.where(counts > 0, sums / counts.clamp(min=1), mean)
print(f"{'ranking model':>17}: RMSE {metrics['rmse']:.4f}, MAE {metrics['mae']:.4f}")
print(f"{'mean rating':>17}: RMSE {tr.metrics.rmse(mean.expand(len(test)), test.ratings):.4f}")
print(f"{'movie mean rating':>17}: RMSE {tr.metrics.rmse(movie_mean[test.targets], test.ratings):.4f}")

# Ratings for user 42 of three movies, from the model saved and loaded again.
titles = ["M*A*S*H (1970)", "Dances with Wolves (1990)", "Speed (1994)"]
title_of = dict(zip(dataset.items["item_id"].to_list(), dataset.items["title"].to_list()))
position = {title_of[item]: i for i, item in enumerate(data.catalogue_ids.tolist())}
with tempfile.TemporaryDirectory() as folder:
    tr.save(model, f"{folder}/ranking-model")
    loaded = tr.load(f"{folder}/ranking-model")
query = data.features.encode_queries(pl.DataFrame({"user_id": [42] * len(titles)}))
with torch.no_grad():
    predicted = loaded.score({**query, "candidate_index": torch.tensor([position[t] for t in titles])})
print("user 42, saved and loaded model: " + "; ".join(f"{t} {r:.2f}" for t, r in zip(titles, predicted.tolist())))
