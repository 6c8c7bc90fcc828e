"""What the trainer reads: any training data as ``batch(index) -> dict of tensors``.

:func:`training_data` turns what a user has into a :class:`TrainingData`:

- a dict of equally long tensors (or numpy arrays): batches are row slices;
- a Polars or pandas DataFrame of numeric columns: the same, one tensor per column;
- prepared data (:func:`towerrec.train.prepared.prepare`): query features, the
  ``candidate_index`` of each row's positive, full-catalogue evaluation;
- prepared data for a ranking model (:class:`RankingBatches`, from :func:`for_config` with
  ``[model] kind = "ranking"``): query features, ``candidate_index`` ([batch], or
  [batch, list_size] for pairwise / listwise losses) and their ``label``; ranking metrics (also for a
  ranking model given prepared data directly, with the default ``[ranking]`` settings);
- prepared data for a multi-task model (:class:`MultiTaskBatches`: ``[model] kind = "multi-task"``, or a
  model that is both a retrieval and a ranking model): each rated example with its ``label``; top-K and
  rating metrics;
- sequence data (:func:`towerrec.train.sequence_data.prepare_sequences`): padded
  histories and next-item targets, the same full-catalogue evaluation;
- a towerrec :class:`~towerrec.data.tables.Dataset`, for a two-tower model whose
  towers read built-in feature names: prepared with those features;
- any object with ``__len__``, ``batch(index)`` (and optionally ``attach(model)``,
  ``evaluate(model, split)``, ``has_validation``, ``metric_names``): used as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from towerrec.config import (
    LISTWISE_LOSSES,
    MULTI_TASK,
    POINTWISE_LOSSES,
    RANKING_KINDS,
    RankingConfig,
    RunConfig,
    ranking_metric_names,
)
from towerrec.data.listwise import sample_lists
from towerrec.errors import ConfigError, DataError
from towerrec.metrics.topk import DEFAULT_KS
from towerrec.model import CANDIDATE_INDEX, LABEL, USER_ROW, RankingModel, RetrievalModel
from towerrec.models.sequential import TARGETS
from towerrec.train.evaluate import evaluate_examples, evaluate_ranking
from towerrec.train.prepared import HISTORY, EncodedExamples, PreparedData, ranking_labels
from towerrec.train.sequence_data import SequenceData

Evaluate = Callable[[nn.Module], dict[str, float]]


@runtime_checkable
class TrainingData(Protocol):
    """The trainer's view of data: ``len(data)`` training examples, ``data.batch(index)`` one batch.

    Optional members: ``attach(model)`` (called once before training, e.g. to give the
    model the catalogue), ``evaluate(model, split) -> metrics`` with ``split`` in
    ``"validation"`` / ``"test"``, ``has_validation`` and ``metric_names`` (the names
    ``evaluate`` returns, checked against an early-stopping metric at construction).
    """

    def __len__(self) -> int: ...

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """The batch of training examples at positions ``index`` (``[batch]`` int64): name -> ``[batch, ...]``."""
        ...


class TensorData:
    """Training data held as a dict of ``[n, ...]`` tensors; a batch is the same rows of each.

    Args:
        tensors: name -> tensor (or numpy array / list), all with the same first dimension.
        evaluate: optional ``evaluate(model) -> metrics``, run as the "validation" split.

    Raises:
        ValueError: no tensors, or tensors of different lengths (named).
        TypeError: a value that is not numeric.
    """

    def __init__(self, tensors: dict[str, Any], evaluate: Evaluate | None = None) -> None:
        if not tensors:
            raise ValueError("the training data has no columns")
        self.tensors = {str(k): _as_tensor(k, v) for k, v in tensors.items()}
        lengths = {k: int(v.shape[0]) if v.dim() else 0 for k, v in self.tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every training tensor needs the same number of rows, got {lengths}")
        self.length = next(iter(lengths.values()))
        self._evaluate = evaluate
        self.has_validation = evaluate is not None
        self.metric_names = None

    def __len__(self) -> int:
        return self.length

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """Rows ``index`` (``[batch]`` int64) of every tensor."""
        return {k: v[index] for k, v in self.tensors.items()}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float] | None:
        """``evaluate(model)`` for the "validation" split; None otherwise or without an evaluate function."""
        return None if self._evaluate is None or split != "validation" else self._evaluate(model)


class _PreparedSplits:
    """What every source of prepared data shares: ``attach`` and the validation / test lookup of ``evaluate``.

    Subclasses set ``data`` (:class:`PreparedData`) and ``_evaluate`` (an evaluate function or None) and
    define ``_split_metrics(model, examples)``.
    """

    data: PreparedData
    _evaluate: Evaluate | None

    def attach(self, model: nn.Module) -> None:
        """Give a model with ``set_catalogue`` the encoded catalogue and the items' train counts."""
        if hasattr(model, "set_catalogue"):
            model.set_catalogue(self.data.catalogue, self.data.item_counts)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float] | None:
        """``_split_metrics`` of ``split`` ("validation" / "test"; None when absent); an evaluate function
        given at construction replaces them (validation only)."""
        if self._evaluate is not None:
            return self._evaluate(model) if split == "validation" else None
        examples = self.data.validation if split == "validation" else self.data.test
        if examples is None:
            return None
        return self._split_metrics(model, examples)

    def _split_metrics(self, model: nn.Module, examples: EncodedExamples) -> dict[str, float]:
        """The metrics of ``model`` on held-out ``examples``."""
        raise NotImplementedError


class PreparedBatches(_PreparedSplits):
    """Prepared two-tower / baseline data: query features + ``candidate_index``; full-catalogue evaluation.

    ``attach(model)`` gives a model with ``set_catalogue`` the encoded catalogue and the
    train counts of each item (for logQ).
    """

    def __init__(self, data: PreparedData, *, ks: Sequence[int], exclude_seen: bool,
                 evaluate: Evaluate | None = None) -> None:
        self.data = data
        self.ks = tuple(ks)
        self.exclude_seen = exclude_seen
        self._evaluate = evaluate
        self.has_validation = data.validation is not None or evaluate is not None
        self.metric_names = None if evaluate is not None else {
            "mrr", *(f"top_{k}_accuracy" for k in self.ks), *(f"ndcg@{k}" for k in self.ks)}

    def __len__(self) -> int:
        return len(self.data.train)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """Query features of train rows ``index`` plus ``candidate_index`` ([batch]) of their positives."""
        train = self.data.train
        batch = train.select(index)
        batch[CANDIDATE_INDEX] = train.targets[index]
        return batch

    def _split_metrics(self, model: nn.Module, examples: EncodedExamples) -> dict[str, float]:
        """Full-catalogue metrics of ``examples`` (:func:`~towerrec.train.evaluate.evaluate_examples`)."""
        return evaluate_examples(model, self.data, examples, ks=self.ks, exclude_seen=self.exclude_seen)


class RankingBatches(_PreparedSplits):
    """Prepared data for a ranking model (:class:`towerrec.model.RankingModel`): labelled (query, candidate) pairs.

    Pointwise losses (``mse``, ``bce``): one row per train example, ``candidate_index`` ``[batch]`` and
    ``label`` ``[batch]`` (:func:`~towerrec.train.prepared.ranking_labels`), plus ``negatives`` rows per
    example with a uniformly drawn item the user has not rated in train and label 0. Pairwise and listwise
    losses (or ``train_on_lists``): ``lists_per_user`` lists per user of ``list_size`` of the user's rated train items
    (:func:`towerrec.data.listwise.sample_lists`, TFRS's listwise tutorial), ``candidate_index`` and
    ``label`` ``[batch, list_size]``; a list's query features are those of the user's first train example
    (its ``user_history`` without the list's items). Samples are drawn once, seeded by ``seed``.
    ``evaluate(model, split)`` gives :func:`~towerrec.train.evaluate.evaluate_ranking`'s metrics.

    Raises:
        DataError: no train example has a rating for a rating label, or no user has ``list_size`` rated items.
    """

    def __init__(self, data: PreparedData, settings: RankingConfig = RankingConfig(), *, seed: int = 42,
                 evaluate: Evaluate | None = None) -> None:
        self.data, self.settings = data, settings
        self._evaluate = evaluate
        self.has_validation = data.validation is not None or evaluate is not None
        self.metric_names = None if evaluate is not None else ranking_metric_names(settings)
        train = data.train
        labels = ranking_labels(settings, train.ratings)
        self.listwise = settings.loss in LISTWISE_LOSSES or settings.train_on_lists
        if self.listwise:
            self.rows, self.candidates, self.labels = _lists(data, labels, settings, seed)
        else:
            self.rows, self.candidates, self.labels = _pointwise(data, labels, settings.negatives, seed)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """Query features of rows ``index``, their ``candidate_index`` and ``label`` (shapes in the class docstring)."""
        train = self.data.train
        rows = self.rows[index]
        if not self.listwise:
            batch = train.select(rows)
        else:
            batch = {name: value[rows] for name, value in train.queries.items()}
            batch[USER_ROW] = train.user_rows[rows]
            if train.history is not None:
                history = train.history[batch[USER_ROW]]
                in_list = (history.unsqueeze(-1) == (self.candidates[index] + 1).unsqueeze(1)).any(-1)
                batch[HISTORY] = history * ~in_list
        batch[CANDIDATE_INDEX] = self.candidates[index]
        batch[LABEL] = self.labels[index]
        return batch

    def _split_metrics(self, model: nn.Module, examples: EncodedExamples) -> dict[str, float]:
        """Ranking metrics of ``examples`` (:func:`~towerrec.train.evaluate.evaluate_ranking`)."""
        return evaluate_ranking(model, self.data, examples, self.settings)


def _pointwise(data: PreparedData, labels: Tensor, negatives: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(train row, candidate, label) of every train example, then ``negatives`` sampled ones per example."""
    train = data.train
    n = len(train)
    rows, candidates = torch.arange(n), train.targets
    if not negatives:
        return rows, candidates, labels
    rng = np.random.default_rng(seed)
    neg_rows = np.repeat(np.arange(n), negatives)
    users = train.user_rows.numpy()[neg_rows]
    seen = np.unique(train.user_rows.numpy().astype(np.int64) * data.num_items + train.targets.numpy())
    items = rng.integers(0, data.num_items, size=neg_rows.shape[0])
    for _ in range(10):  # redraw items the user rated in train (a user who rated everything keeps some)
        clash = np.isin(users * data.num_items + items, seen)
        if not clash.any():
            break
        items[clash] = rng.integers(0, data.num_items, size=int(clash.sum()))
    return (torch.cat([rows, torch.from_numpy(neg_rows)]), torch.cat([candidates, torch.from_numpy(items)]),
            torch.cat([labels, torch.zeros(neg_rows.shape[0])]))


def _lists(data: PreparedData, labels: Tensor, settings: RankingConfig, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(representative train row of the list's user, [lists, list_size] candidates, their labels)."""
    train = data.train
    users = train.user_rows.numpy()
    try:
        sample = sample_lists(users, train.targets.numpy(), labels.numpy(), lists_per_user=settings.lists_per_user,
                              list_size=settings.list_size, seed=seed)
    except ValueError as exc:
        raise DataError(f"[ranking] list_size = {settings.list_size}: {exc}", field="list_size",
                        hint="lower [ranking] list_size") from None
    if sample.num_skipped_users:
        warnings.warn(f"{sample.num_skipped_users} user(s) rated fewer than [ranking] list_size = "
                      f"{settings.list_size} train items: they get no training lists", stacklevel=3)
    first_row = np.zeros(int(users.max()) + 1 if len(users) else 0, dtype=np.int64)
    unique, first = np.unique(users, return_index=True)
    first_row[unique] = first
    return (torch.from_numpy(first_row[np.asarray(sample.users)]),
            torch.as_tensor(np.asarray(sample.items), dtype=torch.int64),
            torch.as_tensor(np.asarray(sample.labels), dtype=torch.float32))


#: The ranking metrics a multi-task evaluation adds to the retrieval ones (NDCG / MRR would clash by name).
RATING_METRICS = ("rmse", "mae", "auc")


class MultiTaskBatches(RankingBatches):
    """Prepared data for a multi-task model (a retrieval AND a ranking model, e.g.
    :class:`~towerrec.models.multitask.MultiTaskModel`): each train example once, its query features,
    ``candidate_index`` (``[batch]``: the retrieval task's positive and the rated candidate) and ``label``
    (``[batch]``, :func:`~towerrec.train.prepared.ranking_labels`).

    ``evaluate(model, split)`` gives the full-catalogue metrics of :class:`PreparedBatches` (top-K accuracy,
    NDCG@K, MRR of the held-out item; ``ks``, ``exclude_seen``) plus ``rmse``, ``mae``, ``auc`` of the
    predicted labels (:func:`~towerrec.train.evaluate.evaluate_ranking`).

    Raises:
        ConfigError: ``settings`` that do not rate single examples (a list or pairwise loss,
            ``train_on_lists``, sampled ``negatives``): the retrieval task reads one positive per row.
    """

    def __init__(self, data: PreparedData, settings: RankingConfig = RankingConfig(), *,
                 ks: Sequence[int] = DEFAULT_KS, exclude_seen: bool = True, seed: int = 42,
                 evaluate: Evaluate | None = None) -> None:
        if settings.loss not in POINTWISE_LOSSES or settings.train_on_lists or settings.negatives:
            raise ConfigError(f"a multi-task model trains on single rated examples (loss mse or bce, no lists, no "
                              f"negatives), got loss {settings.loss!r}, train_on_lists {settings.train_on_lists}, "
                              f"negatives {settings.negatives}")
        super().__init__(data, settings, seed=seed, evaluate=evaluate)
        self.retrieval = PreparedBatches(data, ks=ks, exclude_seen=exclude_seen)
        if evaluate is None:
            self.metric_names = self.retrieval.metric_names | (ranking_metric_names(settings) & set(RATING_METRICS))

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float] | None:
        """Top-K and rating metrics of ``split`` ("validation" / "test"; None when absent)."""
        if self._evaluate is not None:
            return super().evaluate(model, split)
        retrieval = self.retrieval.evaluate(model, split)
        ranking = super().evaluate(model, split)
        if retrieval is None or ranking is None:
            return None
        return {**retrieval, **{name: value for name, value in ranking.items() if name in RATING_METRICS}}


def for_config(config: RunConfig, data: Any) -> Any:
    """``data`` as a run of ``config`` trains on it: prepared data of a ranking kind becomes
    :class:`RankingBatches`, of a multi-task kind :class:`MultiTaskBatches` (``[ranking]`` settings, ``[eval]``
    ks and protocol, ``[train] seed``); anything else is returned as is."""
    if config.model.kind in RANKING_KINDS and isinstance(data, PreparedData):
        return RankingBatches(data, config.ranking, seed=config.train.seed)
    if config.model.kind == MULTI_TASK and isinstance(data, PreparedData):
        return MultiTaskBatches(data, config.ranking, ks=config.eval.ks, exclude_seen=config.eval.exclude_seen,
                                seed=config.train.seed)
    return data


class SequenceBatches(PreparedBatches):
    """Sequence data: ``history`` (+ ``history_ratings``, ``user``) and ``targets`` ``[batch, L]`` rows;
    the same full-catalogue evaluation as prepared data.

    ``attach(model)`` gives a sequential model the training targets per item (logQ and the
    sampled negatives' distribution, :meth:`~towerrec.models.sequential.SequentialModel.set_candidate_counts`).
    """

    def __init__(self, data: SequenceData, *, ks: Sequence[int] = DEFAULT_KS, exclude_seen: bool = True,
                 evaluate: Evaluate | None = None) -> None:
        super().__init__(data, ks=ks, exclude_seen=exclude_seen, evaluate=evaluate)  # type: ignore[arg-type]

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        train = self.data.train
        return {**train.select(index), TARGETS: train.targets[index]}

    def attach(self, model: nn.Module) -> None:
        if hasattr(model, "set_candidate_counts"):
            data = self.data
            model.set_candidate_counts(data.target_counts if data.target_counts is not None else data.item_counts)


def training_data(data: Any, *, model: nn.Module | None = None, evaluate: Evaluate | None = None,
                  ks: Sequence[int], exclude_seen: bool) -> TrainingData:
    """Wrap ``data`` (see the module docstring) for the trainer.

    Raises:
        TypeError: a kind of data the trainer cannot read, or a Dataset for a model whose
            towers do not name built-in features.
    """
    from towerrec.data.tables import Dataset

    if isinstance(data, PreparedData) and isinstance(model, RankingModel):  # labelled pairs, default [ranking]
        if isinstance(model, RetrievalModel):
            return MultiTaskBatches(data, ks=ks, exclude_seen=exclude_seen, evaluate=evaluate)
        return RankingBatches(data, evaluate=evaluate)
    if isinstance(data, PreparedData):
        return PreparedBatches(data, ks=ks, exclude_seen=exclude_seen, evaluate=evaluate)
    if isinstance(data, SequenceData):
        return SequenceBatches(data, ks=ks, exclude_seen=exclude_seen, evaluate=evaluate)
    if isinstance(data, Dataset):
        return PreparedBatches(_prepare_for(model, data), ks=ks, exclude_seen=exclude_seen, evaluate=evaluate)
    if isinstance(data, dict):
        return TensorData(data, evaluate)
    if _is_frame(data):
        return TensorData(_frame_columns(data), evaluate)
    if isinstance(data, TrainingData):
        return data
    raise TypeError(
        f"the trainer cannot read {type(data).__name__}: give a dict of tensors, a Polars or pandas DataFrame, "
        "a towerrec Dataset, prepared or sequence data (towerrec.train.prepared.prepare / "
        "towerrec.train.sequence_data.prepare_sequences) or an object with __len__ and batch(index)"
    )


def _prepare_for(model: nn.Module | None, dataset):
    """Prepared data for a two-tower model whose towers read built-in feature names."""
    from towerrec.config import ModelConfig, RunConfig
    from towerrec.train.prepared import HISTORY, prepare

    towers = [getattr(model, "query_tower", None), getattr(model, "candidate_tower", None)]
    if any(not hasattr(t, "names") for t in towers):
        raise TypeError("a towerrec Dataset trains a TwoTowerModel built from towerrec Towers; for another model "
                        "give a dict of tensors or a DataFrame of numeric columns")
    query, candidate = (tuple(t.names) for t in towers)  # type: ignore[union-attr]
    history = [s for s in model.query_tower.inputs if s.name == HISTORY]  # type: ignore[union-attr]
    config = RunConfig(model=ModelConfig(query_features=query, candidate_features=candidate,
                                         history_length=history[0].width if history else 100))
    data = prepare(config, dataset, progress=False)
    for side, tower in (("query", model.query_tower), ("candidate", model.candidate_tower)):  # type: ignore[union-attr]
        fitted = {i.name: i.cardinality for i in data.features.inputs(side)}
        built = {i.name: i.cardinality for i in tower.inputs if i.name != HISTORY}
        if fitted != built:
            raise TypeError(f"the {side} tower was built for other data (feature sizes {built}, this dataset "
                            f"gives {fitted}): build the model from this dataset's prepared features")
    return data


def _is_frame(data: Any) -> bool:
    module = type(data).__module__
    return type(data).__name__ == "DataFrame" and module.split(".")[0] in ("polars", "pandas")


def _frame_columns(frame: Any) -> dict[str, Any]:
    if type(frame).__module__.split(".")[0] == "polars":
        return {name: frame[name].to_numpy() for name in frame.columns}
    return {str(name): frame[name].to_numpy() for name in frame.columns}


def _as_tensor(name: Any, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"training column {name!r} holds {array.dtype} values; the trainer reads numbers only: "
                        "encode strings first (towerrec.data.Dataset.from_frame + prepare, or your own vocabulary)")
    if array.dtype.kind == "f":
        return torch.as_tensor(array, dtype=torch.float32)
    return torch.as_tensor(array.astype(np.int64) if array.dtype.kind in "biu" else array)
