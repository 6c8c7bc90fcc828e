"""Sequential retrieval: the query tower encodes the movies a user watched last (GRU or SASRec).

Mirrors the TensorFlow Recommenders tutorial "Recommending movies: sequential retrieval"
(https://www.tensorflow.org/recommenders/examples/sequential_retrieval): ratings >= 2, each
position of a timeline becomes an example whose context is the previous 10 movies, 90/10 split of
the shuffled examples; a GRU (or, with --encoder sasrec, causal self-attention) over the context's
movie embeddings is the query tower, a movie embedding the candidate tower. Evaluated over the
whole catalogue beside popularity, then asked for the next movies after a given history.

    python examples/sequential_retrieval.py --data-dir ../shared/datasets/ml-100k [--encoder sasrec]
    python examples/sequential_retrieval.py --fast          # a subset, one epoch
"""

import argparse

import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--encoder", choices=["gru", "sasrec"], default="gru")
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
# The tutorial's protocol: timelines of ratings >= 2, contexts of the previous 10 movies, 90/10.
config = tr.config_from_dict({"model": {"kind": "sequential"}, "sequence": {
    "protocol": "tfrs-sequences", "max_length": 10, "min_rating": 2.0, "train_fraction": 0.9}})
data = tr.train.prepare_sequences(config, dataset, progress=False)
print(f"{len(data.train):,} train / {len(data.test):,} test contexts over {data.num_items:,} movies")

# Query tower: movie embeddings (64) -> GRU or self-attention; candidate tower: the same embeddings.
# "full-softmax" scores each context against every movie (the tutorial's in-batch softmax: "in-batch").
model = tr.SequentialModel(data.num_items, embedding_dim=64, encoder=args.encoder, max_length=10,
                           shared_embeddings=True, objective="full-softmax")
trainer = tr.Trainer(model, data, epochs=epochs, batch_size=2048, optimizer="adam", learning_rate=0.005,
                     ks=(10, 100), exclude_seen=False, eval_every=epochs, progress=False)
trainer.fit()
metrics = trainer.evaluate("test")  # the whole catalogue; context movies not excluded (TFRS's protocol)
print(f"{args.encoder}: top-10 accuracy {metrics['top_10_accuracy']:.4f}, "
      f"top-100 accuracy {metrics['top_100_accuracy']:.4f}")
popular = tr.evaluate_retrieval(torch.ones(len(data.test), 1), data.item_counts[:, None].float(),
                                data.test.targets, ks=(10, 100))  # score = the movie's train count
print(f"popularity: top-10 accuracy {popular['top_10_accuracy']:.4f}, "
      f"top-100 accuracy {popular['top_100_accuracy']:.4f}")

# The next movies after a history (item ids, oldest first): the model reads catalogue positions + 1,
# left-padded with 0 to max_length, and scores candidates by catalogue position.
history = [50, 181, 258]  # Star Wars, Return of the Jedi, Contact
position = {item: i for i, item in enumerate(data.item_ids.tolist())}
context = torch.zeros(1, 10, dtype=torch.int64)
context[0, -len(history):] = torch.tensor([position[item] + 1 for item in history])
model.eval()
with torch.no_grad():
    query = model.query_embeddings({"history": context})
    movies = model.candidate_embeddings({"candidate_index": torch.arange(data.num_items)})
found = tr.BruteForceIndex(movies, data.item_ids).search(query, k=3, exclude_ids=[history])
titles = dict(zip(data.item_ids.tolist(), data.titles))
print("after", ", ".join(titles[i] for i in history), "->", "; ".join(titles[i] for i in found.ids[0]))
