"""Every numeric config value is checked for type, finiteness and range when the config loads (rel-14)."""

from __future__ import annotations

import math
import typing
from dataclasses import fields

import pytest

from towerrec.config import BOUNDS, SECTIONS, SEED_MAX, config_from_dict, load_config
from towerrec.errors import ConfigError

BASE = """name = "base"
[data]
dataset = "ds"
[model]
query_features = ["user_id", "user_history"]
embedding_dim = 16
layer_sizes = [32, 16]
history_length = 20
[task]
temperature = 0.1
[train]
epochs = 2
batch_size = 512
optimizer = "adam"
learning_rate = 0.01
"""


def _numeric(annotation) -> bool:
    args = typing.get_args(annotation)
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in args if a is not type(None) and a is not Ellipsis)


def test_every_numeric_field_of_every_section_has_a_bound():
    numeric = {
        (section, f.name)
        for section, cls in SECTIONS.items()
        for f in fields(cls)
        if _numeric(typing.get_type_hints(cls)[f.name])
    }
    assert numeric == set(BOUNDS)


# The rel-14 case's bad values, with the exact message each gets (file and [section] key named).
CASES = [
    ("learning_rate = 0.01", "learning_rate = nan", "[train] learning_rate must be a finite number > 0, got nan"),
    ("learning_rate = 0.01", "learning_rate = inf", "[train] learning_rate must be a finite number > 0, got inf"),
    ("temperature = 0.1", "temperature = nan", "[task] temperature must be a finite number > 0, got nan"),
    ("learning_rate = 0.01", "learning_rate = 0.01\nweight_decay = -1.0",
     "[train] weight_decay must be a finite number >= 0, got -1.0"),
    ("temperature = 0.1", "temperature = 0.1\nnum_hard_negatives = -3",
     "[task] num_hard_negatives must be an integer in 1..1000000, got -3"),
    ('dataset = "ds"', 'dataset = "ds"\nseed = -1', f"[data] seed must be an integer in 0..{SEED_MAX}, got -1"),
    ("learning_rate = 0.01", "learning_rate = 0.01\nseed = 9223372036854775807",
     f"[train] seed must be an integer in 0..{SEED_MAX}, got 9223372036854775807"),
    ("history_length = 20", "history_length = 20\ndropout = 1.5",
     "[model] dropout must be a finite number in [0, 1), got 1.5"),
    ("history_length = 20", "history_length = 20\ndropout = -0.5",
     "[model] dropout must be a finite number in [0, 1), got -0.5"),
    ("history_length = 20", "history_length = 0", "[model] history_length must be an integer in 1..100000, got 0"),
    ("history_length = 20", "history_length = -3", "[model] history_length must be an integer in 1..100000, got -3"),
    ("embedding_dim = 16", "embedding_dim = 1000000000",
     "[model] embedding_dim must be an integer in 1..16384, got 1000000000"),
    ("history_length = 20", "history_length = 20\nease_l2 = -1682", "[model] ease_l2 must be a finite number > 0, got -1682.0"),
    ("layer_sizes = [32, 16]", "layer_sizes = [32, 0]",
     "[model] layer_sizes entries must be integers in 1..16384, got [32, 0]"),
]


@pytest.mark.parametrize("old, new, message", CASES, ids=[c[2].split(" must")[0] + "=" + c[1].split("= ")[-1] for c in CASES])
def test_bad_value_names_file_section_and_key(tmp_path, old, new, message):
    assert old in BASE
    path = tmp_path / "base.toml"
    path.write_text(BASE.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"{path}: {message}"


def test_base_config_is_valid(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(BASE)
    assert load_config(path).train.learning_rate == 0.01


def _bad_values(section: str, key: str):
    bound = BOUNDS[(section, key)]
    out = [math.nan, math.inf, -math.inf] if not bound.integer else []
    if bound.low is not None:
        out.append(bound.low if bound.low_open else (bound.low - 1 if bound.integer else bound.low - 0.5))
    if bound.high is not None:
        out.append(bound.high if bound.high_open else (bound.high + 1 if bound.integer else bound.high + 0.5))
    return out


TABLE = [(s, k, v) for (s, k) in BOUNDS for v in _bad_values(s, k)]


@pytest.mark.parametrize("section, key, value", TABLE, ids=[f"{s}.{k}={v}" for s, k, v in TABLE])
def test_every_bound_rejects_values_outside_it(section, key, value):
    listed = key in ("layer_sizes", "ks", "rating_layers")
    values = {section: {key: [value] if listed else value}}
    if (section, key) == ("data", "validation_fraction"):
        values["data"]["test_fraction"] = 0.0001 if value >= 0 and math.isfinite(value) else 0.2
    with pytest.raises(ConfigError, match=rf"^\[{section}\] {key} (entries )?must be .*, got "):
        config_from_dict(values)


@pytest.mark.parametrize("section, key", list(BOUNDS))
def test_every_bound_accepts_its_ends(section, key):
    bound = BOUNDS[(section, key)]
    for end, is_open in ((bound.low, bound.low_open), (bound.high, bound.high_open)):
        if end is None or is_open:
            continue
        value = int(end) if bound.integer else float(end)
        values = {section: {key: [value] if key in ("layer_sizes", "ks", "rating_layers") else value}}
        if (section, key) == ("data", "validation_fraction") and value > 0:
            continue  # needs test_fraction > 0 beside it: covered by the sum check below
        config_from_dict(values)


def test_booleans_and_strings_are_not_numbers():
    with pytest.raises(ConfigError, match=r"\[train\] epochs must be an integer, got True"):
        config_from_dict({"train": {"epochs": True}})
    with pytest.raises(ConfigError, match=r"\[train\] learning_rate must be a number, got 'x'"):
        config_from_dict({"train": {"learning_rate": "x"}})


def test_a_huge_value_is_shortened_in_the_message():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"seed": 10**200}})
    assert "(201 digits)" in info.value.message and len(info.value.message) < 120
    with pytest.raises(ConfigError) as info:
        config_from_dict({"name": "x", "train": {"optimizer": "a" * 10_000}})
    assert "(10,000 characters)" in info.value.message and len(info.value.message) < 200


def test_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match=r"\[data\] test_fraction \+ validation_fraction must be below 1"):
        config_from_dict({"data": {"test_fraction": 0.6, "validation_fraction": 0.4}})


def test_k_above_the_catalogue_is_accepted_for_the_metrics_to_count_as_found():
    assert config_from_dict({"eval": {"ks": [1, 1000000]}}).eval.ks == (1, 1000000)
    with pytest.raises(ConfigError, match=r"\[eval\] ks must list at least one K"):
        config_from_dict({"eval": {"ks": []}})


@pytest.mark.parametrize("key, value, message", [
    ("num_epochs", 0, r"\[experiment\] num_epochs must be an integer in 1\.\.1000000, got 0"),
    ("embedding_size", 10**9, r"\[experiment\] embedding_size must be an integer in 1\.\.16384, got 1000000000"),
    ("top_k", -1, r"\[experiment\] top_k must be an integer in 1\.\.100000, got -1"),
    ("layer_sizes", [64, 0], r"\[experiment\] layer_sizes must be integers in 1\.\.16384, got \[64, 0\]"),
])
def test_experiment_knobs_are_bounded(key, value, message):
    from towerrec.experiments import experiment_from_dict

    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({"experiment": {"name": "x", "feature_sets": ["none"], key: value}})


def test_an_integer_too_long_for_python_is_a_config_error(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("[train]\nseed = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"big.toml: invalid TOML: Exceeds the limit \(4300 digits\)") as info:
        load_config(path)
    assert len(info.value.message) < 300
