"""Multi-task recommenders on MovieLens-100K: one model learns to retrieve movies AND to predict ratings.

Mirrors the TensorFlow Recommenders tutorial "Multi-task recommenders"
(https://www.tensorflow.org/recommenders/examples/multitask): user id and movie title towers
(embeddings of 32) shared by a retrieval task (in-batch softmax) and a rating head (Dense 256, 64, 1
over the two embeddings, mean squared error), trained with the loss weights (rating, retrieval) =
(1, 0), (0, 1) and (1, 1). Each model is evaluated on both tasks: RMSE of its predicted ratings and
top-100 accuracy over the whole catalogue (TFRS's protocol, rated movies not excluded).

    python examples/multitask.py --data-dir ../shared/datasets/ml-100k
    python examples/multitask.py --fast          # a subset, one epoch (the test suite runs this)

Without --data-dir, towerrec downloads MovieLens-100K into $TOWERREC_HOME (checksum-verified).
"""

import argparse

import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs

# Data: ratings split 80/20 at random (seed 42), titles as candidates, as in the tutorial.
dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
config = tr.config_from_dict({
    "data": {"split": "tfrs-random", "test_fraction": 0.2, "seed": 42, "candidate_key": "title"},
    "model": {"query_features": ["user_id"], "candidate_features": ["movie_title"]},
})
data = tr.prepare(config, dataset, progress=False)  # each example keeps its rating: the ranking label
print(f"{len(data.train):,} train / {len(data.test):,} test ratings, {data.num_items:,} movies")


def multitask_model(rating_weight: float, retrieval_weight: float) -> tr.MultiTaskModel:
    """The tutorial's MovielensModel: two towers, a rating head over both, and the two weighted tasks."""
    torch.manual_seed(42)
    user_model = tr.Tower(data.features.inputs("query"), embedding_dim=32)
    movie_model = tr.Tower(data.features.inputs("candidate"), embedding_dim=32)
    return tr.MultiTaskModel(
        user_model, movie_model,
        rating_layers=(256, 64),  # Dense 256 (ReLU) -> Dense 64 (ReLU) -> Dense 1
        ranking_weight=rating_weight, retrieval_weight=retrieval_weight,
        # TFRS's retrieval task: a summed in-batch softmax, no corrections; its ranking task: MSE
        retrieval_task=tr.tasks.Retrieval(logq_correction=False, remove_accidental_hits=False, reduction="sum"),
        ranking_task=tr.tasks.Ranking(loss="mse"),
    )


for name, weights in (("rating-specialised", (1.0, 0.0)), ("retrieval-specialised", (0.0, 1.0)),
                      ("joint", (1.0, 1.0))):
    model = multitask_model(*weights)
    # Prepared data gives a multi-task model each rating's features, candidate_index and label;
    # the trainer evaluates both tasks.
    trainer = tr.Trainer(model, data, epochs=epochs, batch_size=8192, optimizer="adagrad", learning_rate=0.1,
                         ks=(100,), exclude_seen=False, eval_every=epochs, progress=False)
    trainer.fit()
    metrics = trainer.evaluate("test")
    print(f"{name} (rating {weights[0]:g}, retrieval {weights[1]:g}): RMSE {metrics['rmse']:.4f}, "
          f"top-100 accuracy {metrics['top_100_accuracy']:.4f}")

# Baselines: popularity ranks every user's list by the movies' train counts; the mean train rating as every rating.
popularity = tr.PopularityModel(data.num_items).fit(data.train.targets.numpy())
popular = tr.train.evaluate_examples(popularity, data, data.test, ks=(100,), exclude_seen=False)
mean_rmse = tr.metrics.rmse(data.train.ratings.mean().expand(len(data.test)), data.test.ratings)
print(f"baselines: mean rating RMSE {mean_rmse:.4f}, popularity top-100 accuracy {popular['top_100_accuracy']:.4f}")
