"""``RunConfig()`` is the ``default`` preset, and no shipped preset or config changed meaning when it became so.

Every preset and ``configs/*.toml`` run config states the keys whose default changed wherever it relied on
the previous value: parsed with the previous defaults (:data:`config_helpers.OLD_DEFAULTS` laid under it)
it gives the same values, hence the same hash and run folder, as parsed with today's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config_helpers import OLD_DEFAULTS, small, small_config
from towerrec.config import RANKING_KINDS, RunConfig, config_from_dict, load_config, read_toml
from towerrec.presets import PRESETS, preset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the [experiment] files (w2_*) build their runs from the w2 / w2-tfrs presets, checked below
RUN_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.toml") if "experiment" not in read_toml(p))

#: The hash of every preset and shipped run config before RunConfig() became `default` (it names the run
#: folder, and benchmarks/results cite run folders): unchanged.
HASHES = {
    "w1-tutorial": "cc1c0d9da78b", "default": "7f7ff7e4335f", "w2": "5a5a4efed1c0", "w2-tfrs": "dd68fafbef86",
    "popularity": "9fa73074a4a8", "ease": "1e331f286a03",
    "w1_basic.toml": "cc1c0d9da78b", "w1_default.toml": "7f7ff7e4335f",
    "w3_gru_leave_last_out.toml": "908d5560841f", "w3_sasrec.toml": "43198e726723",
    "w3_sasrec_leave_last_out.toml": "bc7dac30dbe8", "w3_sasrec_ml1m.toml": "73c96b819adc",
    "w3_tutorial_gru.toml": "14ba960f8fe0", "w3_tutorial_gru_ml1m.toml": "aa5db9a875af",
    "ranking_basic.toml": "f051c7a6da4f", "ranking_best.toml": "4cf126665f48", "ranking_dcn.toml": "f2d8f0e3c723", "ranking_dcn_low_rank.toml": "87aa24f369e6",
    "ranking_dnn.toml": "c3f095016821", "ranking_listwise_mse.toml": "e7e57d97a2fe",
    "ranking_listwise_hinge.toml": "8c8a77bba915", "ranking_listwise_listmle.toml": "037e8806ce85",
    "ranking_multitask_rating.toml": "c91fe28b5005", "ranking_multitask_retrieval.toml": "8772b4477a71",
    "ranking_multitask_joint.toml": "42767b0757b9", "ranking_multitask_best.toml": "bf3c0ec47a75",
    "rerank_ranker_ml100k.toml": "631a0cfe9400",
}
OLD_RUN_CONFIG_HASH = "6f63cd1ec2e3"  # RunConfig().hash() before


def _without_name(config: RunConfig) -> dict:
    values = config.to_dict()
    values.pop("name")
    return values


def test_run_config_is_the_default_preset():
    assert RunConfig().hash() == preset("default").hash() == HASHES["default"]
    assert _without_name(RunConfig()) == _without_name(preset("default"))
    assert RunConfig().name == "run" and preset("default").name == "default"
    assert config_from_dict({}) == RunConfig()  # an empty TOML file is the default preset too


def test_old_defaults_hold_exactly_the_changed_keys():
    """Laid over today's defaults, OLD_DEFAULTS gives the old RunConfig() (same hash), and every key differs."""
    assert config_from_dict(OLD_DEFAULTS).hash() == OLD_RUN_CONFIG_HASH != RunConfig().hash()
    for section, values in OLD_DEFAULTS.items():
        for key, old in values.items():
            now = getattr(getattr(RunConfig(), section), key)
            assert (list(now) if isinstance(now, tuple) else now) != old, f"[{section}] {key} did not change"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_state_what_they_relied_on(name):
    config = preset(name)
    assert config_from_dict(small(PRESETS[name])).to_dict() == config.to_dict()
    assert config.hash() == HASHES[name], f"preset {name}'s hash (its run folder name) moved"


@pytest.mark.parametrize("file", RUN_CONFIGS)
def test_config_files_state_what_they_relied_on(file):
    config = load_config(CONFIGS / file)
    old = small_config(read_toml(CONFIGS / file))
    assert old.hash() == config.hash()
    if config.model.kind not in RANKING_KINDS:  # a ranking config need not state retrieval keys it never reads
        assert old.to_dict() == config.to_dict()
    assert config.hash() == HASHES[file], f"{file}'s hash (its run folder name) moved"


def test_every_shipped_config_and_preset_is_pinned():
    assert set(HASHES) == set(PRESETS) | set(RUN_CONFIGS)

