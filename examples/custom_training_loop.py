"""Your own model class: compute_loss, trained by towerrec's Trainer or by a plain PyTorch loop; save and load.

Mirrors the TensorFlow Recommenders pattern of subclassing ``tfrs.Model`` and overriding
``compute_loss`` (https://www.tensorflow.org/recommenders/examples/basic_retrieval, "Implementing a
model") and its custom training loop (``train_step``): the model says how to compute its loss, the
task owns the loss, and either ``tr.Trainer`` or your own loop drives the optimizer.

    python examples/custom_training_loop.py --data-dir ../shared/datasets/ml-100k
    python examples/custom_training_loop.py --fast          # a subset, one epoch
"""

import argparse
import tempfile

import torch

import towerrec as tr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="MovieLens-100K folder or zip (default: download and cache)")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--fast", action="store_true", help="the first 20,000 ratings, one epoch")
args = parser.parse_args()
epochs = 1 if args.fast else args.epochs


class MovieModel(tr.RetrievalModel):
    """User and movie embeddings scored by their dot product; the in-batch softmax as the loss."""

    def __init__(self, num_users: int, num_movies: int, dim: int = 32) -> None:
        super().__init__()  # the constructor's arguments are recorded: tr.save / tr.load rebuild the model
        self.user_embedding = tr.layers.embedding(num_users, dim)  # small init (PyTorch's N(0, 1) trains worse)
        self.movie_embedding = tr.layers.embedding(num_movies, dim)
        self.task = tr.tasks.Retrieval()

    def query_embeddings(self, batch):  # [batch, dim]
        return self.user_embedding(batch["user"])

    def candidate_embeddings(self, batch):  # [n, dim]
        return self.movie_embedding(batch["movie"])

    def compute_loss(self, batch):
        # Given the movie ids, the task computes the softmax over the batch's unique movies and removes
        # accidental hits; given each movie's sampling probability, it corrects the popularity bias (logQ).
        return self.task(self.query_embeddings(batch), self.candidate_embeddings(batch), candidate_ids=batch["movie"],
                         candidate_sampling_probability=batch["probability"])


dataset = tr.load_dataset("movielens-100k", args.data_dir, progress=False)
if args.fast:
    dataset = tr.Dataset(dataset.name, dataset.interactions.head(20_000), dataset.items, dataset.users)
split = tr.make_split(dataset.interactions, "tfrs-random", test_fraction=0.2, seed=42)
users = tr.Vocabulary.fit(split.train["user_id"])  # raw id -> row (row 0: users not seen in train)
movies = tr.Vocabulary.fit(dataset.items["item_id"])  # the whole catalogue


def encode(frame):
    return {"user": torch.as_tensor(users.lookup(frame["user_id"])[0]),
            "movie": torch.as_tensor(movies.lookup(frame["item_id"])[0])}


train, test = encode(split.train), encode(split.test)
counts = torch.bincount(train["movie"], minlength=movies.size).float()  # train ratings per movie
train["probability"] = (counts / counts.sum())[train["movie"]]  # how often a batch holds each row's movie
all_movies = {"movie": torch.arange(movies.size)}


@torch.no_grad()
def evaluate(model):  # factorized top-K over the whole catalogue, seen items kept (TFRS's protocol)
    model.eval()
    return tr.evaluate_retrieval(model.query_embeddings(test), model.candidate_embeddings(all_movies),
                                 test["movie"], ks=(10, 100))


def report(name, metrics):
    print(f"{name}: top-10 accuracy {metrics['top_10_accuracy']:.4f}, "
          f"top-100 accuracy {metrics['top_100_accuracy']:.4f}")


# (a) towerrec's Trainer: shuffling, optimizer, progress, checkpoints, callbacks, device.
torch.manual_seed(0)
model = MovieModel(users.size, movies.size)
tr.Trainer(model, train, epochs=epochs, batch_size=4096, optimizer="adam", learning_rate=0.01, progress=False).fit()
report("Trainer", evaluate(model))

# (b) the same model in a plain PyTorch loop: compute_loss is all the loop needs.
torch.manual_seed(0)
looped = MovieModel(users.size, movies.size)
optimizer = torch.optim.Adam(looped.parameters(), lr=0.01)
for epoch in range(epochs):
    looped.train()
    for rows in torch.randperm(len(train["user"])).split(4096):
        loss = looped.compute_loss({name: column[rows] for name, column in train.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
report("plain loop", evaluate(looped))

# The popularity baseline: every user scores a movie by its train count.
report("popularity", tr.evaluate_retrieval(torch.ones(len(test["movie"]), 1), counts[:, None], test["movie"],
                                           ks=(10, 100)))

# Save and load: JSON (class name, constructor arguments) + safetensors; never a pickle.
with tempfile.TemporaryDirectory() as folder:
    tr.save(model, f"{folder}/movie-model")
    loaded = tr.load(f"{folder}/movie-model")
    same = torch.equal(loaded.user_embedding.weight, model.user_embedding.weight)
    print(f"saved and loaded a {type(loaded).__name__}: same weights {same}")
