"""The model contract every towerrec model follows: TFRS's ``tfrs.Model``, in PyTorch.

A :class:`Model` is an ``nn.Module`` that says how to compute its training loss
from a batch (a dict of tensors): ``compute_loss(batch) -> scalar``. Tasks
(:mod:`towerrec.tasks`) own the loss and its tricks; the trainer
(:class:`towerrec.train.Trainer`) owns the loop. A :class:`RetrievalModel` also
maps batches to query and candidate embeddings, which is all that full-catalogue
evaluation, indexes, recommendation and serving need.

Every subclass is registered by its importable name (``module:QualName``) and
remembers the JSON-able arguments it was constructed with, so
:func:`towerrec.save` / :func:`towerrec.load` can rebuild it from JSON and
safetensors, never from a pickle.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

#: Every :class:`Model` subclass, by ``"module:QualName"`` (filled as classes are defined).
MODEL_REGISTRY: dict[str, type[Model]] = {}


def class_name(cls: type) -> str:
    """``"module:QualName"``: how a model class is recorded in JSON and found again."""
    return f"{cls.__module__}:{cls.__qualname__}"


class Model(nn.Module):
    """Base class of every towerrec model.

    Subclasses implement :meth:`compute_loss`. Their ``__init__`` arguments are
    recorded automatically (:meth:`get_config`); when they are not JSON values
    (e.g. a tower module), override :meth:`get_config` and :meth:`from_config`
    so that :func:`towerrec.save` can store the model.

    Example::

        class MovieModel(tr.Model):
            def __init__(self, num_users, num_items, dim=32):
                super().__init__()
                self.user = tr.layers.embedding(num_users, dim)
                self.item = tr.layers.embedding(num_items, dim)
                self.task = tr.tasks.Retrieval()

            def compute_loss(self, batch):
                return self.task(self.user(batch["user"]), self.item(batch["item"]), candidate_ids=batch["item"])
    """

    #: Whether the trainer updates this model by gradient steps (baselines are fitted in closed form).
    trainable: ClassVar[bool] = True
    #: Under data parallelism (``torch.distributed``, world size > 1): True when :meth:`compute_loss` returns
    #: this process's SHARE of the global batch's loss (the mean over processes is that loss; see
    #: :mod:`towerrec.parallel`), also for an empty slice, as the retrieval task's losses do. False: it returns
    #: the mean over its own rows, and the trainer weighs it by its rows / the global batch's rows.
    data_parallel_loss_share: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_REGISTRY[class_name(cls)] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__init__)  # type: ignore[method-assign]

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The scalar training loss of one batch (a dict of ``[batch, ...]`` tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch)")

    @property
    def device(self) -> torch.device:
        """Where the model's parameters (or, without parameters, buffers) live; CPU for an empty model."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def get_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``type(self).from_config(model.get_config())`` builds an equal,
        untrained model.

        Raises:
            TypeError: an argument is not a JSON value (a module, a tensor...): override
                ``get_config`` / ``from_config`` for this class.
        """
        arguments = getattr(self, "_init_arguments", {})
        try:
            json.dumps(arguments)
        except (TypeError, ValueError):
            bad = sorted(k for k, v in arguments.items() if not _is_json(v))
            raise TypeError(
                f"{type(self).__name__}: constructor argument(s) {bad} are not JSON values; implement "
                "get_config() and from_config() to save this model"
            ) from None
        return dict(arguments)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Model:
        """The untrained model :meth:`get_config` describes."""
        return cls(**config)


class RetrievalModel(Model):
    """A model that embeds queries and candidates into one space; the score is their dot product.

    Subclasses implement :meth:`query_embeddings` and :meth:`candidate_embeddings`
    (and :meth:`compute_loss`, usually with :class:`towerrec.tasks.Retrieval`).
    Full-catalogue evaluation, indexes, ``recommend`` and serving use nothing else.
    """

    def query_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """``[batch, dim]`` query embeddings of a batch of query features."""
        raise NotImplementedError(f"{type(self).__name__} must implement query_embeddings(batch)")

    def candidate_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """``[n, dim]`` candidate embeddings of a batch of candidate features."""
        raise NotImplementedError(f"{type(self).__name__} must implement candidate_embeddings(batch)")


class RankingModel(Model):
    """A model that scores (query, candidate) pairs: the ranking stage of retrieve-then-rank.

    Subclasses implement :meth:`score` (and :meth:`compute_loss`, usually with
    :class:`towerrec.tasks.Ranking`). A batch holds the query features of each row
    and ``candidate_index``: ``[batch]`` (one candidate per row) or ``[batch, list_size]``
    (a list of candidates per row, for listwise losses and re-ranking); the model
    finds each candidate's features itself (e.g. from a catalogue it was given).
    Re-ranking, ranking metrics and serving use nothing else.
    """

    def score(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores shaped like ``batch["candidate_index"]`` (``[batch]`` or ``[batch, list_size]``): the
        predicted label (a rating, a click logit...) of each (query, candidate) pair; higher ranks first."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(batch)")


def _recording(init):
    """Wraps a subclass ``__init__`` so the outermost call records its arguments by name."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        outermost = not getattr(self, "_recording_init", False)
        if outermost:
            object.__setattr__(self, "_recording_init", True)
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                object.__setattr__(self, "_recording_init", False)
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            values = dict(bound.arguments)
            values.pop(next(iter(signature.parameters)))  # self
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in values:
                    values.update(values.pop(name))
            object.__setattr__(self, "_init_arguments", {k: _jsonable(v) for k, v in values.items()})

    return __init__


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


#: Batch keys towerrec's own models and data agree on.
CANDIDATE_INDEX = "candidate_index"  # [batch] int64 catalogue position of each row's positive candidate
USER_ROW = "user_row"  # [batch] int64 training-user row (-1: a user not seen in training)
SAMPLE_WEIGHT = "sample_weight"  # [batch] float per-example loss weight
SAMPLING_PROBABILITY = "candidate_sampling_probability"  # [batch] probability q of each row's candidate (logQ)
LABEL = "label"  # [batch] (or [batch, list_size]) float ranking label: a rating, a 0/1 click...
