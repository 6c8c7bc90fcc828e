"""Tiny trained runs shared by the export and service tests."""

from __future__ import annotations

from pathlib import Path

from towerrec.config import config_from_dict
from towerrec.data.synthetic import make_synthetic
from towerrec.runs import train_run


def tiny_run(root: Path, *, query_features=("user_id", "user_history"), name="tiny"):
    """A two-tower run on 150 users x 60 items, trained for one epoch (about a second)."""
    dataset = make_synthetic(150, 60, 3000, seed=5)
    config = config_from_dict(
        {
            "name": name,
            "data": {"dataset": "synthetic", "split": "tfrs-random", "seed": 1},
            "model": {"query_features": list(query_features), "candidate_features": ["item_id"],
                      "embedding_dim": 8, "layer_sizes": [16, 8], "similarity": "cosine", "history_length": 10},
            "task": {"temperature": 0.2},
            "train": {"epochs": 1, "batch_size": 512, "optimizer": "adam", "learning_rate": 0.02, "eval_every": 1},
            "eval": {"ks": [1, 10]},
        }
    )
    return train_run(config, runs_root=root, dataset=dataset, progress=False, log=lambda *_: None)
