"""Deep & cross networks on MovieLens-100K: a cross layer learns explicit feature interactions for rating prediction.

Mirrors the TensorFlow Recommenders tutorial "Deep & Cross Network (DCN)"
(https://www.tensorflow.org/recommenders/examples/dcn): movie id, user id, zip code, occupation,
gender and bucketized age, each embedded in 32 and concatenated, then a DCN-v2 cross layer (full rank,
or low rank with ``projection_dim=20``) before Dense 192, 192 -> 1, against a deep network of Dense 192,
192, 192 -> 1 without one; mean squared error, Adam 0.01, batch 8192, 8 epochs; each model's test RMSE.
As in the tutorial, the full-rank cross layer's weight matrix shows which feature pairs it learnt to
cross: the feature pair with the largest block norm is printed.

    python examples/dcn.py --data-dir ../shared/datasets/ml-100k
    python examples/dcn.py --fast          # a subset, one epoch (the test suite runs this)

Without --data-dir, towerrec downloads MovieLens-100K into $TOWERREC_HOME (checksum-verified).
"""

import argparse

import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

# Data: the tutorial's features; ratings split 80/20 at random (seed 42).
dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
user_features = ["user_id", "user_zip_code", "user_occupation", "user_gender", "user_age_group"]
config = tr.config_from_dict({
    "data": {"split": "tfrs-random", "test_fraction": 0.2, "seed": 42},
    "model": {"kind": "ranking", "query_features": user_features, "candidate_features": ["movie_id"]},
    "ranking": {"loss": "mse", "rating_min": 1, "rating_max": 5},
})
data = tr.prepare(config, dataset, progress=False)
inputs = [*data.features.inputs("query"), *data.features.inputs("candidate")]
print(f"{len(data.train):,} train / {len(data.test):,} test ratings; features: {', '.join(i.name for i in inputs)}")


def ranking_model(**settings) -> tr.DeepRankingModel:
    """Every feature embedded in 32 -> [cross layer] -> dense layers -> 1 (the tutorial's DCN class)."""
    torch.manual_seed(42)
    return tr.DeepRankingModel(data.features.inputs("query"), data.features.inputs("candidate"), embedding_dim=32,
                               init="keras-uniform", loss="mse", **settings)


models = {
    "DCN (cross layer, full rank)": ranking_model(interaction="cross", layer_sizes=[192, 192]),
    "DCN (low rank, projection 20)": ranking_model(interaction="cross", projection_dim=20, layer_sizes=[192, 192]),
    "DNN (no cross layer)": ranking_model(layer_sizes=[192, 192, 192]),
}
for name, model in models.items():
    trainer = tr.Trainer(model, data, epochs=epochs, batch_size=8192, optimizer="adam", learning_rate=0.01,
                         eval_every=epochs, progress=False)
    trainer.fit()
    print(f"{name:>29}: RMSE {trainer.evaluate('test')['rmse']:.4f}")

# Which feature pairs did the full-rank cross layer learn to cross? Block (i, j) of its [D, D] kernel maps
# feature j's embedding into feature i's slot of x0 * (W x): its Frobenius norm measures that interaction.
dcn = models["DCN (cross layer, full rank)"]
kernel = dcn.cross.layers[0].dense.weight.detach()
widths = [table.out_dim for table in [*dcn.query_tables.values(), *dcn.candidate_tables.values()]]
bounds = torch.tensor([0, *widths]).cumsum(0).tolist()
norms = torch.tensor([[kernel[bounds[i]:bounds[i + 1], bounds[j]:bounds[j + 1]].norm().item()
                       for j in range(len(inputs))] for i in range(len(inputs))])
off_diagonal = norms - torch.diag(torch.diag(norms))
i, j = divmod(int(off_diagonal.argmax()), len(inputs))
print(f"strongest crossed pair: {inputs[i].name} x {inputs[j].name} (block norm {norms[i, j]:.2f}; "
      f"mean over pairs {off_diagonal.sum() / (len(inputs) ** 2 - len(inputs)):.2f})")
