"""What a study optimises: a validation metric of each trial's run, on a validation split for every protocol.

* :func:`with_validation`: the config every trial starts from, with a validation split carved from
  train when the base config has none (``[data] validation_fraction`` for ``tfrs-random`` /
  ``temporal``, ``[sequence] validation_fraction`` for the sequential ``tfrs-sequences`` protocol;
  ``leave-last-out`` has one built in). The test split is the same with or without it.
* :func:`metric_names` / :func:`default_metric`: the validation metrics a run of a config reports.
* :func:`split_metrics`: one split's metrics of a finished run (``metrics.json``), under the
  config's own protocol (``[eval] exclude_seen``), the same figures the trainer logs per epoch.
* :class:`PruningCallback`: a trainer callback that reports each evaluated epoch's validation
  metric to the Optuna trial and stops a trial its pruner prunes.
"""

from __future__ import annotations

from typing import Any

from towerrec.config import LOWER_IS_BETTER, MULTI_TASK, RANKING_KINDS, RunConfig, ranking_metric_names
from towerrec.errors import ConfigError, TowerrecError
from towerrec.train.batches import RATING_METRICS
from towerrec.train.trainer import Callback, FitResult, Trainer

DEFAULT_VALIDATION_FRACTION = 0.1


def validation_field(config: RunConfig) -> tuple[str, str] | None:
    """The ``(section, field)`` that carves validation from train for this config's protocol, or None when
    the protocol has a validation split built in (``leave-last-out``, two-tower or sequential)."""
    if config.model.kind == "sequential":
        return ("sequence", "validation_fraction") if config.sequence.protocol == "tfrs-sequences" else None
    return None if config.data.split == "leave-last-out" else ("data", "validation_fraction")


def with_validation(config: RunConfig, fraction: float) -> RunConfig:
    """``config`` with a validation split: its own when it has one, else ``fraction`` carved from train.

    Raises:
        ConfigError: the fraction does not fit the config (e.g. ``test_fraction + validation_fraction >= 1``),
            named by the config layer.
    """
    place = validation_field(config)
    if place is None or getattr(getattr(config, place[0]), place[1]) > 0:
        return config
    try:
        return config.replace(**{place[0]: {place[1]: fraction}})
    except ConfigError as exc:
        raise ConfigError(f"validation_fraction {fraction:g}: {exc.message}", exc.hint) from None


def protocol(config: RunConfig) -> str:
    """``"seen_excluded"`` or ``"tfrs"``: the protocol of ``[eval] exclude_seen`` (the trainer's per-epoch one)."""
    return "seen_excluded" if config.eval.exclude_seen else "tfrs"


def metric_names(config: RunConfig) -> list[str]:
    """The validation metrics a run of ``config`` reports, sorted: top-K accuracy, NDCG@K and MRR at the
    ``[eval] ks`` of retrieval kinds; the ranking metrics of ranking kinds; both (RMSE, MAE, AUC of the
    rating head) for multi-task runs."""
    retrieval = {"mrr", *(f"top_{k}_accuracy" for k in config.eval.ks), *(f"ndcg@{k}" for k in config.eval.ks)}
    if config.model.kind in RANKING_KINDS:
        return sorted(ranking_metric_names(config.ranking))
    if config.model.kind == MULTI_TASK:
        return sorted(retrieval | (ranking_metric_names(config.ranking) & set(RATING_METRICS)))
    return sorted(retrieval)


def default_metric(config: RunConfig) -> str:
    """``top_10_accuracy`` (top-K at the largest ``[eval] ks`` when 10 is not one) for retrieval and
    multi-task runs; ``rmse`` (rating losses) or NDCG at the largest ``[ranking] ks`` for ranking runs."""
    if config.model.kind in RANKING_KINDS:
        names = ranking_metric_names(config.ranking)
        return "rmse" if "rmse" in names else f"ndcg@{max(config.ranking.ks)}"
    ks = config.eval.ks
    return "top_10_accuracy" if 10 in ks else f"top_{max(ks)}_accuracy"


def default_direction(metric: str) -> str:
    """``"minimize"`` for error metrics (RMSE, MAE), ``"maximize"`` for the rest."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def check_metric(config: RunConfig, metric: str) -> str:
    """``metric`` if a run of ``config`` reports it on validation; else :class:`ConfigError` listing the valid ones."""
    valid = metric_names(config)
    if metric not in valid:
        raise ConfigError(f"metric {metric!r} is not a validation metric of this [model] kind = "
                          f"{config.model.kind!r} run; valid: {valid}",
                          hint="the K of top_K_accuracy and ndcg@K come from [eval] ks")
    return metric


def split_metrics(config: RunConfig, metrics: dict[str, Any], split: str) -> dict[str, float]:
    """The metrics of ``split`` (``"validation"`` / ``"test"``) in a run's ``metrics.json`` under the config's
    protocol, plus the ranking metrics of ranking and multi-task runs ({} when the split is absent)."""
    part = metrics.get(split) or {}
    out: dict[str, float] = {}
    if config.model.kind in RANKING_KINDS:
        return dict(part.get("ranking") or {})
    out.update(part.get(protocol(config)) or {})
    if config.model.kind == MULTI_TASK:
        out.update({k: v for k, v in (part.get("ranking") or {}).items() if k in RATING_METRICS})
    return out


def validation_value(config: RunConfig, metrics: dict[str, Any], metric: str) -> float:
    """The validation ``metric`` of a finished run's ``metrics.json``.

    Raises:
        TowerrecError: the run has no validation metrics (it was trained without a validation split).
    """
    values = split_metrics(config, metrics, "validation")
    if metric not in values:
        raise TowerrecError(f"the run reports no validation {metric} (validation metrics: {sorted(values)})",
                            hint="a study compares runs on a validation split")
    return float(values[metric])


class PruningCallback(Callback):
    """Reports ``validation/<metric>`` of every evaluated epoch to an Optuna trial (step = epoch) and stops
    training when the trial's pruner says so.

    The epoch's checkpoint is written before training stops; :meth:`on_train_end` then raises
    ``optuna.TrialPruned``, so the run is never finished with fewer epochs: its folder keeps the
    checkpoint (an identical later trial resumes from it) and holds no finished run to be reused.
    Pruning: Optuna's ``MedianPruner`` / ``SuccessiveHalvingPruner`` (Akiba et al. 2019, "Optuna").
    """

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.key = f"validation/{metric}"
        self.pruned_at: int | None = None
        self.last_epoch = 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self.last_epoch = epoch
        if self.key not in record:
            return
        self.trial.report(float(record[self.key]), step=epoch)
        if epoch < trainer.epochs and self.trial.should_prune():  # the last epoch finishes the run anyway
            self.pruned_at = epoch
            trainer.stop_training = True

    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        if self.pruned_at is not None:
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {self.pruned_at}")
