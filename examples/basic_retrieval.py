"""Basic retrieval on MovieLens-100K: a user tower, a movie tower and the retrieval task.

Mirrors the TensorFlow Recommenders tutorial "Recommending movies: retrieval"
(https://www.tensorflow.org/recommenders/examples/basic_retrieval): user id and movie title
embeddings, an in-batch softmax, factorized top-K evaluation over the whole catalogue, a
brute-force index and the top movies for user 42, with the popularity baseline beside the model.

    python examples/basic_retrieval.py --data-dir ../shared/datasets/ml-100k
    python examples/basic_retrieval.py --fast          # a subset, one epoch (the test suite runs this)

Without --data-dir, towerrec downloads MovieLens-100K into $TOWERREC_HOME (checksum-verified).
"""

import argparse

import polars as pl
import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

# Data: the ratings as interactions, split 80/20 at random (seed 42) as in the tutorial.
dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
config = tr.config_from_dict({
    "data": {"split": "tfrs-random", "test_fraction": 0.2, "seed": 42},
    "model": {"query_features": ["user_id"], "candidate_features": ["movie_title"]},
})
data = tr.prepare(config, dataset, progress=False)  # vocabularies fitted on train; tensors
print(f"{len(data.train):,} train / {len(data.test):,} test ratings, {data.num_items:,} movies")

# Model: one embedding per user id and per movie title (TFRS: StringLookup + Embedding), dot product.
user_model = tr.Tower(data.features.inputs("query"), embedding_dim=32)
movie_model = tr.Tower(data.features.inputs("candidate"), embedding_dim=32)
task = tr.tasks.Retrieval()  # in-batch softmax; logQ correction and accidental-hit removal on
model = tr.TwoTowerModel(user_model, movie_model, task=task)

# Training and factorized top-K evaluation over the whole catalogue (TFRS's protocol: seen items kept).
trainer = tr.Trainer(model, data, epochs=epochs, batch_size=4096, optimizer="adam", learning_rate=0.01,
                     ks=(10, 100), exclude_seen=False, eval_every=epochs, progress=False)
fit = trainer.fit()
print(f"trained {len(fit.history)} epoch(s) at {fit.examples_per_s:,.0f} examples/s, "
      f"last loss {fit.history[-1]['loss']:.4f}")
model_metrics = trainer.evaluate("test")

# Always report a baseline: popularity ranks every user's list by the movies' train counts.
popularity = tr.PopularityModel(data.num_items).fit(data.train.targets.numpy())
popular_metrics = tr.train.evaluate_examples(popularity, data, data.test, ks=(10, 100), exclude_seen=False)
for name, metrics in (("two-tower", model_metrics), ("popularity", popular_metrics)):
    print(f"{name:>10}: top-10 accuracy {metrics['top_10_accuracy']:.4f}, "
          f"top-100 accuracy {metrics['top_100_accuracy']:.4f}")

# An index over the movie embeddings, queried with user 42's embedding, excluding what 42 rated in train.
model.eval()
with torch.no_grad():
    movie_ids = data.features.catalogue_ids
    index = tr.BruteForceIndex(model.candidate_embeddings(data.catalogue), movie_ids)
    query = model.query_embeddings(data.features.encode_queries(pl.DataFrame({"user_id": [42]})))
seen = data.split.train.filter(pl.col("user_id") == 42)["item_id"].to_list()
found = index.search(query, k=3, exclude_ids=[seen])
titles = dict(zip(dataset.items["item_id"].to_list(), dataset.items["title"].to_list()))
print("top 3 for user 42:", "; ".join(titles[i] for i in found.ids[0]))
