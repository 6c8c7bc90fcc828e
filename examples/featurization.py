"""Side and context features: built-in feature names, your own FeatureSpec, and what they buy.

Mirrors the TensorFlow Recommenders tutorials "Using side features: feature preprocessing"
(https://www.tensorflow.org/recommenders/examples/featurization) and "Taking advantage of
context features" (https://www.tensorflow.org/recommenders/examples/context_features):
ids become vocabulary lookups, timestamps are bucketized and normalized, text is tokenized,
a column can be hashed; then a user-id model is compared with one that also reads the
timestamp and user features, beside the popularity baseline.

    python examples/featurization.py --data-dir ../shared/datasets/ml-100k
    python examples/featurization.py --fast          # a subset, one epoch per model
"""

import argparse

import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch per model")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
split = tr.make_split(dataset.interactions, "tfrs-random", test_fraction=0.2, seed=42)

# Built-in names expand to specs (``timestamp`` gives a bucketized and a normalized input) ...
print("built-in features:", ", ".join(tr.features.BUILTIN_NAMES))
# ... and any column can be spelled out: here the user's zip code, hashed into 100 buckets.
zip_hashed = tr.FeatureSpec("user_zip_hashed", side="query", kind="hashed", column="zip", num_buckets=100)


def fit_and_evaluate(query_features):
    """Fit the features on train, train a two-tower model, return its test metrics (seen items kept)."""
    features = tr.FeatureSet([*query_features, "movie_title", "movie_genres"]).fit(
        split.train, dataset.items, dataset.users)  # query side on train, candidate side on the catalogue

    def encode(frame):  # query features of each row + the catalogue position of its movie
        batch = features.encode_queries(frame)  # user columns come from the users table kept at fit
        batch["candidate_index"] = torch.as_tensor(features.item_index(frame["item_id"].to_numpy()))
        return batch

    tower = {side: tr.Tower(features.inputs(side), embedding_dim=32, layer_sizes=[32]) for side in ("query", "candidate")}
    model = tr.TwoTowerModel(tower["query"], tower["candidate"])
    train = encode(split.train)
    counts = torch.bincount(train["candidate_index"], minlength=features.num_items)
    model.set_catalogue(features.encode_candidates(), counts)  # batches name candidates by catalogue position;
    # the counts give each candidate's sampling probability for the task's logQ correction
    tr.Trainer(model, train, epochs=epochs, batch_size=4096, optimizer="adam",
               learning_rate=0.01, progress=False).fit()
    model.eval()
    with torch.no_grad():
        test = encode(split.test)
        return tr.evaluate_retrieval(model.query_embeddings(test), model.candidate_embeddings(model.catalogue_rows(
            torch.arange(features.num_items))), test["candidate_index"], ks=(10, 100)), features


for name, query_features in (("user id", ["user_id"]),
                             ("+ context and user features", ["user_id", "timestamp", "user_age",
                                                              "user_gender", "user_occupation", zip_hashed])):
    metrics, features = fit_and_evaluate(query_features)
    inputs = ", ".join(f"{i.name} ({i.kind}" + (f", {i.cardinality} rows)" if i.cardinality else ")")
                       for i in features.inputs("query"))  # numeric (normalized) inputs have no embedding table
    print(f"{name}: query inputs {inputs}")
    print(f"  top-10 accuracy {metrics['top_10_accuracy']:.4f}, top-100 accuracy {metrics['top_100_accuracy']:.4f}")

# The baseline: score every movie by its number of train ratings.
targets = torch.as_tensor(features.item_index(split.test["item_id"].to_numpy()))
counts = torch.bincount(torch.as_tensor(features.item_index(split.train["item_id"].to_numpy())),
                        minlength=features.num_items)
popular = tr.evaluate_retrieval(torch.ones(len(targets), 1), counts[:, None].float(), targets, ks=(10, 100))
print(f"popularity: top-10 accuracy {popular['top_10_accuracy']:.4f}, "
      f"top-100 accuracy {popular['top_100_accuracy']:.4f}")
