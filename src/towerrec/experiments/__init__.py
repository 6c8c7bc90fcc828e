"""Experiments: a grid of run configurations trained (or reused) together, plotted and tabulated."""

from towerrec.experiments.runner import (
    ExperimentConfig,
    ExperimentResult,
    experiment_from_dict,
    load_experiment,
    parse_feature_set,
    run_configs,
    run_experiment,
)

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "experiment_from_dict",
    "load_experiment",
    "parse_feature_set",
    "run_configs",
    "run_experiment",
]
