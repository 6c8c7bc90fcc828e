"""Shipped configs equal the built-in presets; the history feature never leaks the target."""

from pathlib import Path

import numpy as np
import pytest
import torch

from towerrec.config import ConfigError, config_from_dict, load_config
from towerrec.presets import preset
from towerrec.train.prepared import EncodedExamples, recent_history

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("file, name", [("w1_basic.toml", "w1-tutorial"), ("w1_default.toml", "default")])
def test_config_files_match_presets(file, name):
    assert load_config(CONFIGS / file) == preset(name)


def test_unknown_config_key_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nembeding_dim = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key\(s\) \['embeding_dim'\] in \[model\]; valid keys: .*embedding_dim"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\[train\] epochs must be an integer, got .3."):
        config_from_dict({"train": {"epochs": "3"}})


def test_recent_history_keeps_the_latest_items_in_time_order():
    users = np.array([1, 0, 1, 1, 0, 1])
    items = np.array([10, 20, 11, 12, 21, 13])
    stamps = np.array([5, 1, 1, 9, 2, 7])
    history = recent_history(users, items, stamps, num_users=3, length=3)
    # user 1 by time: 11 (t1), 10 (t5), 13 (t7), 12 (t9) -> last three, +1 offset
    assert history[1].tolist() == [11, 14, 13]
    assert history[0].tolist() == [21, 22, 0]
    assert history[2].tolist() == [0, 0, 0]


def test_training_history_masks_each_examples_target_and_unknown_users_get_none():
    history = torch.tensor([[1, 2, 3], [4, 5, 0]])
    examples = EncodedExamples(
        queries={}, targets=torch.tensor([1, 3, 2]), user_rows=torch.tensor([0, 1, -1]), history=history,
        mask_targets=True,
    )
    batch = examples.select(torch.arange(3))["user_history"]
    assert batch.tolist() == [[1, 0, 3], [0, 5, 0], [0, 0, 0]]
    examples.mask_targets = False
    assert examples.select(torch.arange(2))["user_history"].tolist() == [[1, 2, 3], [4, 5, 0]]
