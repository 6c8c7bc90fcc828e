"""Efficient serving: exact and approximate top-K indexes, their recall, and a bundle that answers in one call.

Mirrors the TensorFlow Recommenders tutorial "Efficient serving"
(https://www.tensorflow.org/recommenders/examples/efficient_serving): a trained two-tower model's
movie embeddings go into a brute-force index and into approximate FAISS indexes (HNSW, IVF; TFRS
uses ScaNN); as in the tutorial, the catalogue is padded with many decoy items so that the
approximate search has something to save. The approximate answers are compared with the exact
ones (recall@10), then the model and an HNSW index are exported as a serving bundle that is loaded
and asked ``bundle.recommend(user_id, k)``.

    python examples/efficient_serving.py --data-dir ../shared/datasets/ml-100k
    python examples/efficient_serving.py --fast          # a subset, one epoch, few decoys
"""

import argparse
import tempfile
import time

import polars as pl
import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--decoys", type=int, default=100_000, help="random items added to the searched catalogue")
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch, 2,000 decoys")
args = parser.parse_args()
epochs, decoys = (1, 2_000) if args.fast else (args.epochs, args.decoys)

dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
config = tr.config_from_dict({"model": {"query_features": ["user_id"], "candidate_features": ["item_id"]}})
data = tr.prepare(config, dataset, progress=False)
model = tr.build_two_tower(data.features, embedding_dim=32)
tr.Trainer(model, data, epochs=epochs, batch_size=4096, optimizer="adam", learning_rate=0.01, progress=False).fit()

model.eval()
user_ids = data.features.user_ids.tolist()  # every train user, as a query
with torch.no_grad():
    movies = model.candidate_embeddings(data.catalogue)  # [N, 32]
    users = model.query_embeddings(data.features.encode_queries(pl.DataFrame({"user_id": user_ids})))
noise = torch.randn(decoys, movies.shape[1], generator=torch.Generator().manual_seed(0)) * movies.std()
embeddings = torch.cat([movies, noise])  # decoys get ids -1, -2, ...
ids = [*data.features.catalogue_ids.tolist(), *range(-1, -decoys - 1, -1)]

exact = tr.BruteForceIndex(embeddings, ids)
indexes = {"brute force": exact,
           "HNSW": tr.FaissIndex(embeddings, ids, variant="hnsw"),
           "IVF": tr.FaissIndex(embeddings, ids, variant="ivf", nprobe=8)}
print(f"{len(user_ids):,} users searched over {len(ids):,} items ({decoys:,} decoys)")
for name, index in indexes.items():
    started = time.perf_counter()
    index.search(users, k=10)
    seconds = time.perf_counter() - started
    recall = tr.recall_against(index, exact, users, k=10)
    print(f"{name:>11}: {len(user_ids) / seconds:,.0f} queries/s, recall@10 against brute force {recall:.3f}")

with tempfile.TemporaryDirectory() as folder:
    # An index saves and loads on its own (safetensors / FAISS files + JSON), as does the model.
    indexes["HNSW"].save(f"{folder}/index")
    same = tr.load_index(f"{folder}/index").search(users[:5], k=10).ids == indexes["HNSW"].search(users[:5], k=10).ids
    print(f"HNSW index saved and loaded: same answers {same}")

    # A bundle holds the model, the catalogue, an index and the known users: everything a server needs.
    seen = data.split.train.group_by("user_id").agg("item_id")
    seen = dict(zip(seen["user_id"].to_list(), seen["item_id"].to_list()))
    title = dict(zip(dataset.items["item_id"].to_list(), dataset.items["title"].to_list()))
    tr.export_bundle(model=model, out=f"{folder}/bundle", item_ids=data.features.catalogue_ids,
                     candidate_features=data.catalogue, titles=[title[i] for i in data.features.catalogue_ids],
                     known_users={"ids": user_ids,
                                  "queries": data.features.encode_queries(pl.DataFrame({"user_id": user_ids})),
                                  "seen": [seen.get(u, []) for u in user_ids]},
                     index="hnsw")
    bundle = tr.load_bundle(f"{folder}/bundle")
    user = user_ids[0]
    print(f"bundle.recommend({user}, k=3):", "; ".join(r["title"] for r in bundle.recommend(user, k=3)))
