"""Test configurations on the small, fast settings most tests were written against.

``RunConfig()`` is the ``default`` preset (a ``user_history`` query feature, MLPs ``[128, 64]``,
10 epochs of Adam at batch 1024, ...). A test that trains on tiny synthetic data and leaves some of
those keys out states the small values instead: :data:`OLD_DEFAULTS` holds them (``RunConfig()``'s
values before it became the ``default`` preset, for exactly the keys that changed), and
:func:`small` / :func:`small_config` / :func:`small_toml` lay a test's own values over them.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import tomli_w

from towerrec.config import RunConfig, config_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: ``[section] key`` -> value, for the keys whose default changed when ``RunConfig()`` became ``default``.
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"query_features": ["user_id"], "embedding_dim": 32, "layer_sizes": [], "similarity": "dot"},
    "task": {"temperature": 1.0},
    "train": {"epochs": 3, "batch_size": 8192, "optimizer": "adagrad", "learning_rate": 0.1, "eval_every": 1},
}


def small(values: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """``values`` (a config dict) and ``sections`` (tables, or ``name=``) laid section by section over :data:`OLD_DEFAULTS`."""
    merged = copy.deepcopy(OLD_DEFAULTS)
    for source in (values or {}, sections):
        for key, value in source.items():
            if isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def small_config(values: dict[str, Any] | None = None, **sections: Any) -> RunConfig:
    """:func:`config_from_dict` of :func:`small`: ``small_config(model={"kind": "sequential"})``."""
    return config_from_dict(small(values, **sections))


def small_toml(text: str) -> str:
    """A config TOML text with the :data:`OLD_DEFAULTS` it leaves out written in."""
    return tomli_w.dumps(small(tomllib.loads(text)))
