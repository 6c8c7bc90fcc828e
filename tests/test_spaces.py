"""The shipped search spaces (configs/spaces/*.toml): each names its base config in its `towerrec tune`
command line, and parses and checks against that config (every range end and choice applied) with the
validation split a study adds, before any trial would run."""

import re
from pathlib import Path

import pytest

from towerrec.config import load_config
from towerrec.presets import PRESETS, preset
from towerrec.tune.objective import check_metric, validation_field, with_validation
from towerrec.tune.space import load_space

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "configs" / "spaces").glob("*.toml"))
COMMAND = re.compile(r"towerrec tune (\S+) --space (\S+)")


def _base(name: str):
    return preset(name) if name in PRESETS else load_config(REPO / name)


def test_every_workload_ships_a_space():
    assert {p.stem for p in SPACES} >= {"w1", "w2", "w3"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_checks_against_the_base_config_its_command_names(path):
    commands = COMMAND.findall(path.read_text())
    assert commands, f"{path.name}: no '# towerrec tune BASE --space {path.relative_to(REPO)}' line"
    for base_name, space_name in commands:
        assert space_name == str(path.relative_to(REPO))
        space = load_space(path)
        trial_base = with_validation(_base(base_name), space.study.validation_fraction or 0.1)
        space.check(trial_base)  # raises ConfigError naming the file and key of a value the config refuses
        check_metric(trial_base, space.study.metric)
        # selection reads validation: the trial config has a validation split (carved or built in)
        place = validation_field(trial_base)
        assert place is None or getattr(getattr(trial_base, place[0]), place[1]) > 0


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_evaluates_every_epoch_so_the_pruner_can_act(path):
    space = load_space(path)
    params = {p.key: p for p in space.params}
    assert space.study.pruner in (None, "median", "successive-halving")
    assert params["train.eval_every"].choices == (1,)
    for representative in params["train.epochs"].representatives():
        assert representative >= 2  # a pruner needs at least one evaluated epoch before the last
