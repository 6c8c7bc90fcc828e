"""Hyperparameter search over any config field: an Optuna study whose trials are cached towerrec runs.

``towerrec tune CONFIG --space SPACE.toml --trials N`` (see docs/tuning.md), or from Python::

    from towerrec.tune import tune

    result = tune(load_config("configs/w1_default.toml"), "configs/spaces/w1.toml", trials=40)
    result.best_params, result.best_value, result.test_metrics

:func:`tune` (:mod:`towerrec.tune.study`) runs the study, :func:`load_space`
(:mod:`towerrec.tune.space`) reads and checks a space file, :class:`StudyResult` is what a study
gives back; :mod:`towerrec.tune.objective` says what is optimised (a validation metric) and
:mod:`towerrec.tune.report` writes the outputs. Needs Optuna (``pip install 'towerrec[tune]'``).
"""

from towerrec._lazy import lazy_exports

_EXPORTS = {
    "tune": "towerrec.tune.study",
    "StudyResult": "towerrec.tune.report",
    "load_space": "towerrec.tune.space",
    "SearchSpace": "towerrec.tune.space",
    "Param": "towerrec.tune.space",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
