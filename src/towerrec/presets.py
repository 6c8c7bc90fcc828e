"""Built-in configurations, shipped inside the package (configs/*.toml mirror them).

``w1-tutorial`` is the TFRS basic-retrieval tutorial, setting for setting;
``default`` is towerrec's best two-tower configuration on MovieLens-100K and
equals ``RunConfig()`` (the dataclass defaults) apart from its name. Every other
preset states each key where it differs from ``default``, so changing a default
never changes what it trains (``tests/test_config_defaults.py``).
"""

from __future__ import annotations

from towerrec.config import RunConfig, config_from_dict

# The baselines read none of the two-tower settings, but every value is part of the config hash that
# names a run directory: these are the values the baseline presets have always had (RunConfig()'s
# before it became the `default` preset), so their run directories stay where they were.
_BASELINE_UNUSED = {
    "model": {"query_features": ["user_id"], "embedding_dim": 32, "layer_sizes": [], "similarity": "dot"},
    "task": {"temperature": 1.0},
    "train": {"epochs": 3, "batch_size": 8192, "optimizer": "adagrad", "learning_rate": 0.1, "eval_every": 1},
}

PRESETS: dict[str, dict] = {
    "w1-tutorial": {
        "name": "w1-tutorial",
        "data": {"dataset": "movielens-100k", "split": "tfrs-random", "test_fraction": 0.2, "seed": 42,
                 "candidate_key": "title"},
        "model": {"query_features": ["user_id"], "candidate_features": ["movie_title"], "embedding_dim": 32,
                  "layer_sizes": [], "similarity": "dot", "init": "keras-uniform"},
        "task": {"temperature": 1.0, "logq_correction": False, "remove_accidental_hits": False, "reduction": "sum"},
        "train": {"epochs": 3, "batch_size": 8192, "optimizer": "adagrad", "learning_rate": 0.1, "seed": 42,
                  "eval_every": 3},
        "eval": {"exclude_seen": False},
    },
    "default": {
        "name": "default",
        "data": {"dataset": "movielens-100k", "split": "tfrs-random", "test_fraction": 0.2, "seed": 42},
        "model": {"query_features": ["user_id", "user_history"], "candidate_features": ["item_id"],
                  "embedding_dim": 64, "layer_sizes": [128, 64], "similarity": "cosine", "history_length": 100},
        "task": {"temperature": 0.1, "logq_correction": True, "remove_accidental_hits": True},
        "train": {"epochs": 10, "batch_size": 1024, "optimizer": "adam", "learning_rate": 0.005, "seed": 42,
                  "eval_every": 5},
    },
    # W2 feature-set experiments (towerrec.experiments): the towers of the TFRS "deep recommenders"
    # tutorial (user_id / movie_title, titles as candidates, embedding 32, layers 64 32) trained the
    # towerrec way ...
    "w2": {
        "name": "w2",
        "data": {"dataset": "movielens-100k", "split": "tfrs-random", "test_fraction": 0.2, "seed": 42,
                 "candidate_key": "title"},
        "model": {"query_features": ["user_id"], "candidate_features": ["movie_title"], "embedding_dim": 32,
                  "layer_sizes": [64, 32], "similarity": "cosine"},
        "task": {"temperature": 0.1, "logq_correction": True, "remove_accidental_hits": True},
        "train": {"epochs": 20, "batch_size": 2048, "optimizer": "adam", "learning_rate": 0.005, "seed": 42,
                  "eval_every": 5},
        "eval": {"exclude_seen": False},
    },
    # ... and exactly as the TFRS peer (../shared/peer/tfrs_deep.py) trains them.
    "w2-tfrs": {
        "name": "w2-tfrs",
        "data": {"dataset": "movielens-100k", "split": "tfrs-random", "test_fraction": 0.2, "seed": 42,
                 "candidate_key": "title"},
        "model": {"query_features": ["user_id"], "candidate_features": ["movie_title"], "embedding_dim": 32,
                  "layer_sizes": [64, 32], "similarity": "dot", "init": "keras-uniform"},
        "task": {"temperature": 1.0, "logq_correction": False, "remove_accidental_hits": False, "reduction": "sum"},
        "train": {"epochs": 20, "batch_size": 2048, "optimizer": "adagrad", "learning_rate": 0.1, "seed": 42,
                  "eval_every": 5},
        "eval": {"exclude_seen": False},
    },
    "popularity": {"name": "popularity", **_BASELINE_UNUSED,
                   "model": {"kind": "popularity", **_BASELINE_UNUSED["model"]}},
    "ease": {"name": "ease", **_BASELINE_UNUSED, "model": {"kind": "ease", "ease_l2": 300.0, **_BASELINE_UNUSED["model"]}},
}


def preset(name: str, **data_overrides) -> RunConfig:
    """The built-in configuration ``name`` (see ``PRESETS``), with ``[data]`` keys replaced by ``data_overrides``.

    Example: ``preset("default", dataset="movielens-1m")``.

    Raises:
        ConfigError: an unknown preset name (the message lists the valid ones), or a bad override.
    """
    if name not in PRESETS:
        from towerrec.errors import ConfigError

        raise ConfigError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    config = config_from_dict(PRESETS[name])
    return config.replace(data=data_overrides) if data_overrides else config
