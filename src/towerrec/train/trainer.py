"""The training loop, for ANY :class:`towerrec.model.Model`.

The model says how to compute its loss (``compute_loss(batch)``); tasks own the
loss; the trainer owns the loop: epochs of shuffled batches, the optimizer and
an optional learning-rate scheduler, evaluation every N epochs, history,
checkpoints, exact resume, early stopping, callbacks, the device and a progress
bar with examples/s. The same seed gives the same metrics on CPU: each epoch's
shuffle and dropout are seeded by (seed, epoch), so a resumed run continues
exactly as an uninterrupted one would.

Under data parallelism (``torch.distributed`` initialised with several processes, e.g. by
``torchrun``) the same loop runs in every process: each takes its slice of every global batch
(``batch_size`` is the global batch), the model is wrapped in DistributedDataParallel, and rank 0
alone evaluates, writes checkpoints and history and runs the callbacks (see
:mod:`towerrec.train.distributed`).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch import Tensor, nn

from towerrec import parallel
from towerrec.config import LOWER_IS_BETTER, RunConfig
from towerrec.devices import resolve_device
from towerrec.errors import ConfigError, TowerrecError
from towerrec.metrics.topk import DEFAULT_KS
from towerrec.model import Model
from towerrec.train.batches import Evaluate, for_config, training_data
from towerrec.train import distributed
from towerrec.train.checkpoint import Checkpointer, save_weights
from towerrec.train.optimizers import (
    OPTIMIZERS,
    SPARSE_OPTIMIZERS,
    embedding_tables,
    make_optimizer,
    set_sparse_gradients,
)
from towerrec.train.precision import autocast, check_precision

SPLITS = ("validation", "test")


class Callback:
    """Hooks into :meth:`Trainer.fit` (Keras-style); override the ones you need.

    Set ``trainer.stop_training = True`` in a hook to end training after the current epoch.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch (after a resume has restored its state)."""

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """After each optimizer step; ``loss`` is the batch's loss value."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After each epoch; ``record`` is its history line (loss, seconds, examples/s, metrics)."""

    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        """After training (and after the best epoch's weights are restored)."""


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples_per_s: float = 0.0
    resumed_from_epoch: int = 0
    stopped_early: bool = False  # True only when training ended before the scheduled epochs
    best_epoch: int | None = None  # with early stopping: the epoch whose weights the model holds at the end


class Trainer:
    """Trains any :class:`~towerrec.model.Model` on any data the trainer reads.

    Args:
        model: a towerrec Model (``compute_loss(batch) -> scalar``).
        data: a dict of tensors, a Polars/pandas DataFrame of numeric columns, a towerrec
            ``Dataset`` (two-tower models), prepared data (:func:`towerrec.train.prepared.prepare`),
            or any :class:`~towerrec.train.batches.TrainingData` (see :mod:`towerrec.train.batches`).
        epochs: passes over the training data.
        batch_size: examples per step.
        optimizer: ``"adagrad"`` | ``"adam"`` | ``"adamw"`` | ``"rowwise-adagrad"`` | ``"sparse-adam"``
            (:func:`towerrec.train.optimizers.make_optimizer`), a ``torch.optim.Optimizer`` over the model's
            parameters, or a callable ``parameters -> Optimizer``.
        learning_rate: for a named optimizer (default: Adagrad 0.1, Adam/AdamW 0.001).
        weight_decay: for a named optimizer.
        precision: ``"fp32"``, or ``"bf16"``: the loss is computed under bf16 autocast (weights, gradients
            and optimizer state stay fp32; evaluation is fp32; :mod:`towerrec.train.precision`).
        sparse_embeddings: embedding tables return sparse gradients (only the looked-up rows), so
            ``"rowwise-adagrad"`` / ``"sparse-adam"`` (and ``"adagrad"``) update only those rows. Default
            (None): on for ``"rowwise-adagrad"`` and ``"sparse-adam"``, off for the other names; with an
            optimizer object, the tables stay as the model built them.
        scheduler: a learning-rate scheduler, or a callable ``optimizer -> scheduler``; stepped once per epoch.
        callbacks: :class:`Callback` objects.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``... (default: where the model is).
            The model moves there; batches are moved per step.
        seed: seeds each epoch's shuffle and dropout.
        eval_every: evaluate every N epochs (and after the last).
        evaluate: ``evaluate(model) -> metrics`` on your validation data (replaces the built-in
            full-catalogue evaluation of prepared data).
        ks: cut-offs of the built-in evaluation; ``exclude_seen``: its protocol.
        early_stopping_patience: stop after this many evaluations without improvement of
            ``early_stopping_metric`` (higher is better; lower for ``rmse`` and ``mae``); the model
            ends holding its best epoch's weights.
        checkpoint_dir: the last epoch's state (and the best epoch's weights) for exact resume.
        history_path: JSONL file with one line per epoch.
        progress: show a progress bar with examples/s.

    Data parallelism: when ``torch.distributed`` is initialised with world size N > 1, every process
    builds this trainer alike; ``batch_size`` is the global batch, of which each process trains on its
    slice; gradients are averaged by DistributedDataParallel; only rank 0 evaluates, writes
    ``checkpoint_dir`` / ``history_path`` and calls the callbacks (their stop requests reach every
    process). Checkpoints hold no per-process state: resume with any N.

    Raises:
        TypeError: not a Model, a model that is not trainable, data the trainer cannot read,
            an optimizer that holds none of the model's parameters.
        ConfigError: bad numbers, an unknown early-stopping metric, early stopping without validation data,
            bf16 on a device without native bf16, sparse embeddings with an optimizer or weight decay that
            cannot take them, or a model whose loss gives an embedding table a dense gradient (e.g. a
            full-catalogue softmax reading the whole table) while sparse embeddings are on.
        TowerrecError: the device is not available, or the model's loss fails on a first small batch
            (checked here, before any epoch runs).
    """

    validation_hint = "set [data] validation_fraction > 0 or use split = 'leave-last-out'"

    def __init__(
        self,
        model: Model,
        data: Any,
        *,
        epochs: int = 3,
        batch_size: int = 1024,
        optimizer: str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] = "adam",
        learning_rate: float | None = None,
        weight_decay: float = 0.0,
        precision: str = "fp32",
        sparse_embeddings: bool | None = None,
        scheduler: Any = None,
        callbacks: Sequence[Callback] = (),
        device: str | torch.device | None = None,
        seed: int = 42,
        eval_every: int = 1,
        evaluate: Evaluate | None = None,
        ks: Sequence[int] = DEFAULT_KS,
        exclude_seen: bool = True,
        early_stopping_patience: int | None = None,
        early_stopping_metric: str = "top_100_accuracy",
        checkpoint_dir: str | Path | None = None,
        history_path: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"the trainer trains towerrec.Model subclasses, got {type(model).__name__}: subclass "
                            "towerrec.Model and implement compute_loss(batch)")
        if not model.trainable:
            raise TypeError(f"{type(model).__name__} is fitted in closed form, not trained: call its fit()")
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("eval_every", eval_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if early_stopping_patience is not None and (isinstance(early_stopping_patience, bool) or
                                                    not isinstance(early_stopping_patience, int) or
                                                    early_stopping_patience < 1):
            raise ConfigError(f"early_stopping_patience must be an integer >= 1 or None, got {early_stopping_patience!r}")
        self.device = resolve_device(device, model)
        check_precision(precision, self.device)
        self.precision = precision
        if sparse_embeddings is None and isinstance(optimizer, str):
            sparse_embeddings = optimizer in SPARSE_OPTIMIZERS
        if sparse_embeddings is not None:  # (a ready optimizer and None: the tables stay as the model built them)
            set_sparse_gradients(model, bool(sparse_embeddings))
        self.sparse_embeddings = any(table.sparse for table in embedding_tables(model))
        self.model = model.to(self.device)
        self.data = training_data(data, model=model, evaluate=evaluate, ks=ks, exclude_seen=exclude_seen)
        if len(self.data) == 0:
            raise ConfigError("the training data has no examples")
        self.epochs, self.batch_size, self.seed, self.eval_every = epochs, batch_size, seed, eval_every
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_metric = early_stopping_metric
        self.callbacks = list(callbacks)
        self.stop_training = False
        self.checkpointer = Checkpointer(Path(checkpoint_dir)) if checkpoint_dir else None
        self.history_path = Path(history_path) if history_path is not None else None
        self.world_size, self.rank = parallel.world_size(), parallel.rank()
        self.is_main = self.rank == 0
        self._parallel_loss: nn.Module | None = None  # DDP around compute_loss under data parallelism
        self.progress = progress and self.is_main
        attach = getattr(self.data, "attach", None)
        if attach is not None:
            attach(self.model)
        self.optimizer = _optimizer(optimizer, model, learning_rate, weight_decay, self.sparse_embeddings)
        self.scheduler = scheduler(self.optimizer) if callable(scheduler) and not hasattr(scheduler, "step") else scheduler
        names = getattr(self.data, "metric_names", None)
        if early_stopping_patience is not None and names is not None and early_stopping_metric not in names:
            raise ConfigError(f"[train] early_stopping_metric {early_stopping_metric!r} is not one of {sorted(names)}")
        if early_stopping_patience is not None and not getattr(self.data, "has_validation", False):
            raise ConfigError("[train] early_stopping_patience needs a validation split", hint=self.validation_hint)
        warn_default_embedding_init(model)
        self._preflight()
        if self.world_size > 1:
            probe = self._batch(torch.arange(min(len(self.data), 4)))
            self._parallel_loss = distributed.wrap(self.model, self.device, probe)

    @classmethod
    def from_config(cls, config: RunConfig, data: Any, model: Model, **kwargs: Any) -> Trainer:
        """A trainer with the ``[train]`` and ``[eval]`` settings of ``config`` (``kwargs`` add or override)."""
        t = config.train
        settings: dict[str, Any] = dict(
            epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, learning_rate=t.learning_rate,
            weight_decay=t.weight_decay, precision=t.precision, sparse_embeddings=t.sparse_embeddings,
            seed=t.seed, eval_every=t.eval_every, ks=config.eval.ks,
            exclude_seen=config.eval.exclude_seen, early_stopping_patience=t.early_stopping_patience,
            early_stopping_metric=t.early_stopping_metric)
        settings.update(kwargs)
        return cls(model, for_config(config, data), **settings)

    def _preflight(self) -> None:
        """The loss of a first small batch, so that a model/data mismatch fails here, not after an epoch."""
        index = torch.arange(min(len(self.data), 4))
        training = self.model.training
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            try:
                loss = self.batch_loss(index)
            except (KeyError, IndexError, RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
                raise TowerrecError(
                    f"{type(self.model).__name__}.compute_loss fails on the first batch of this data: "
                    f"{type(exc).__name__}: {exc}",
                    hint=f"the batch has keys {sorted(self._batch(index))}",
                ) from exc
            finally:
                self.model.train(training)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise TowerrecError(f"{type(self.model).__name__}.compute_loss must return a scalar tensor, got {shape}")
        if self.sparse_embeddings:
            self._check_sparse_gradients(index)

    def _check_sparse_gradients(self, index: Tensor) -> None:
        """One backward pass on the first small batch: every embedding table must get a sparse gradient."""
        self.model.zero_grad(set_to_none=True)  # a dense gradient left by an earlier fit is not this loss's
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.batch_loss(index).backward()
        dense = [name for name, module in self.model.named_modules()
                 if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.weight.grad is not None
                 and not module.weight.grad.is_sparse]
        self.model.zero_grad(set_to_none=True)
        if dense:
            raise ConfigError(
                f"[train] sparse_embeddings: {type(self.model).__name__}'s loss gives the embedding table(s) "
                f"{', '.join(map(repr, dense))} a dense gradient (it reads whole tables, not only looked-up rows)",
                hint="set [train] sparse_embeddings = false (and a dense optimizer: adagrad, adam)")

    def _batch(self, index: Tensor) -> dict[str, Tensor]:
        batch = self.data.batch(index)
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- one step ---------------------------------------------------------
    def batch_loss(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Loss of the training examples at ``index`` (positions in the training data); under data
        parallelism through DDP, so this process's loss as its model computes it. A float32 scalar,
        computed under bf16 autocast for ``precision="bf16"``."""
        with autocast(self.precision, self.device):
            if self._parallel_loss is not None:
                loss = self._parallel_loss(self._batch(index))
            else:
                loss = self.model.compute_loss(self._batch(index))
        return loss if self.precision == "fp32" else loss.float()

    # -- the loop ---------------------------------------------------------
    def fit(self) -> FitResult:
        """Train for the remaining epochs (resuming from ``checkpoint_dir`` when it holds a checkpoint).

        Returns:
            :class:`FitResult`: history (one record per epoch: loss, seconds, examples/s and the
            metrics of evaluated epochs), training seconds, examples/s, the epoch resumed from,
            whether training stopped early and, with early stopping, the best epoch (whose weights
            the model holds at the end).
        Raises:
            TowerrecError: a non-finite loss (before the optimizer step, so the weights stay finite),
                or a damaged checkpoint.
        """
        result = FitResult()
        start_epoch = 0
        best = {"metric": -math.inf, "epoch": 0, "bad_epochs": 0}
        if self.checkpointer is not None and self.checkpointer.exists():
            state = self.checkpointer.load(self.model, self.optimizer, self.scheduler)
            start_epoch = state["epoch"]
            result.history = state["history"]
            best = state["best"]
            result.resumed_from_epoch = start_epoch
            result.train_seconds = state.get("train_seconds", 0.0)
        best_state = self._load_best(best["epoch"])
        if self.is_main:
            self._rewrite_history(result.history)  # drops any line written after the checkpoint
        n = len(self.data)
        examples_seen = 0
        epoch = start_epoch
        patience = self.early_stopping_patience
        last_epoch = start_epoch if patience is not None and best["bad_epochs"] >= patience else self.epochs
        self.stop_training = False
        for callback in self._callbacks():
            callback.on_train_begin(self)
        with self._progress_bar() as bar:
            task_id = bar.add_task("training", total=(last_epoch - start_epoch) * math.ceil(n / self.batch_size))
            for epoch in range(start_epoch + 1, last_epoch + 1):
                started = time.perf_counter()
                loss = self._train_epoch(epoch, bar, task_id)
                seconds = time.perf_counter() - started
                result.train_seconds += seconds
                examples_seen += n
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "loss": loss,
                    "seconds": round(seconds, 4),
                    "examples_per_s": round(n / seconds, 1),
                }
                stop = False
                if self.scheduler is not None:
                    self.scheduler.step()
                improved = False
                if self.is_main and (epoch % self.eval_every == 0 or epoch == self.epochs):
                    split_name = "validation" if getattr(self.data, "has_validation", False) else "test"
                    metrics = self.evaluate(split_name)
                    if metrics is not None:
                        record.update({f"{split_name}/{k}": v for k, v in metrics.items()})
                        stop = self._early_stopping(best, epoch, metrics)
                        improved = best["epoch"] == epoch
                if self.is_main:
                    self._append_history(record)
                    for callback in self.callbacks:
                        callback.on_epoch_end(self, epoch, record)
                if self.world_size > 1:  # rank 0 evaluated: every process takes its record and decisions
                    record, best, stop, improved, self.stop_training = distributed.broadcast_object(
                        (record, best, stop, improved, self.stop_training))
                if improved:
                    best_state = self._keep_best(epoch)
                result.history.append(record)
                if self.checkpointer is not None and self.is_main:
                    self.checkpointer.save(
                        self.model,
                        self.optimizer,
                        {"epoch": epoch, "history": result.history, "best": best, "train_seconds": result.train_seconds},
                        scheduler=self.scheduler,
                    )
                    self._drop_other_best(best["epoch"])
                if stop or self.stop_training:
                    break
        result.stopped_early = epoch < self.epochs
        if patience is not None and best_state is not None:
            self.model.load_state_dict(best_state)
            result.best_epoch = best["epoch"]
        trained_epochs = [r for r in result.history if r["epoch"] > start_epoch]
        if trained_epochs:
            total = sum(r["seconds"] for r in trained_epochs)
            result.examples_per_s = n * len(trained_epochs) / total if total else 0.0
        for callback in self._callbacks():
            callback.on_train_end(self, result)
        return result

    def _callbacks(self) -> list[Callback]:
        """The callbacks, in rank 0 only under data parallelism (tracking and pruning act once)."""
        return self.callbacks if self.is_main else []

    # -- the best epoch's weights (early stopping) ------------------------------
    def _best_path(self, epoch: int) -> Path | None:
        if self.checkpointer is None:
            return None
        return self.checkpointer.folder / f"best-epoch-{epoch:04d}.safetensors"

    def _keep_best(self, epoch: int) -> dict[str, Tensor] | None:
        """A copy of the current weights, the best so far (also on disk, so a resumed run restores it)."""
        if self.early_stopping_patience is None:
            return None
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        path = self._best_path(epoch)
        if path is not None and self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(self.model, path)
        return state

    def _load_best(self, epoch: int) -> dict[str, Tensor] | None:
        path = self._best_path(epoch)
        if self.early_stopping_patience is None or not epoch or path is None or not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise TowerrecError(f"{path}: the best epoch's weights are damaged ({type(exc).__name__})",
                                hint="train again with --retrain") from exc

    def _drop_other_best(self, epoch: int) -> None:
        """After the checkpoint names the best epoch, older best-epoch files are not needed."""
        keep = self._best_path(epoch)
        if keep is not None and self.is_main:
            for old in keep.parent.glob("best-epoch-*.safetensors"):
                if old != keep:
                    old.unlink(missing_ok=True)

    def _train_epoch(self, epoch: int, bar: Progress, task_id: Any) -> float:
        n = len(self.data)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        torch.manual_seed(self.seed * 7_919 + epoch)  # dropout
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(self.seed * 7_919 + epoch)
        order = torch.randperm(n, generator=generator)
        self.model.train()
        total, batches = 0.0, 0
        started = time.perf_counter()
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if self._parallel_loss is None:
                loss = self.batch_loss(index, generator)
                value = float(loss.detach())  # the progress bar syncs for it anyway
            else:
                loss = self._data_parallel_loss(index)
                value = float(distributed.all_reduce_mean(loss.detach()))  # the global batch's loss, everywhere
            if not math.isfinite(value):  # stop before the step: the weights stay finite
                raise TowerrecError(
                    f"epoch {epoch}, batch {batches + 1}: the training loss is {value}",
                    hint="lower [train] learning_rate (or raise [task] temperature); inputs were checked finite at load",
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += value
            batches += 1
            for callback in self._callbacks():
                callback.on_batch_end(self, batches, value)
            done = min(start + self.batch_size, n)
            bar.update(
                task_id,
                advance=1,
                description=f"epoch {epoch}/{self.epochs} loss {total / batches:.4f} "
                f"{done / max(time.perf_counter() - started, 1e-9):,.0f} ex/s",
            )
        return total / max(batches, 1)

    def _data_parallel_loss(self, index: Tensor) -> Tensor:
        """This process's share of the loss of the global batch at ``index``, through DDP (whose backward averages
        the gradients). A model without loss shares (``Model.data_parallel_loss_share``) returns the mean over
        its rows: weighted here by its rows / the global batch's, exact for mean losses over rows."""
        assert self._parallel_loss is not None
        local = distributed.local_slice(index, self.rank, self.world_size)
        loss = self.batch_loss(local)
        if local.numel() == 0:  # no rows, no contribution; the loss's collectives ran all the same
            return distributed.touch_every_parameter(loss.nan_to_num(0.0) * 0.0, self.model)
        if self.model.data_parallel_loss_share:
            return loss
        return loss * (local.numel() * self.world_size / index.numel())

    def evaluate(self, split: str = "test") -> dict[str, float] | None:
        """Metrics of the current model on ``"validation"`` or ``"test"`` (None when the data has no evaluation).

        An ``evaluate=`` function given to the trainer is the ``"validation"`` split.

        Raises:
            ValueError: ``split`` is neither ``"validation"`` nor ``"test"``.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        evaluate = getattr(self.data, "evaluate", None)
        return None if evaluate is None else evaluate(self.model, split)

    def _early_stopping(self, best: dict[str, Any], epoch: int, metrics: dict[str, float]) -> bool:
        patience = self.early_stopping_patience
        name = self.early_stopping_metric
        if patience is None:
            return False
        if name not in metrics:
            raise ConfigError(f"[train] early_stopping_metric {name!r} is not one of {sorted(metrics)}")
        value = -metrics[name] if name in LOWER_IS_BETTER else metrics[name]  # best["metric"]: higher is better
        if value > best["metric"]:
            best.update(metric=value, epoch=epoch, bad_epochs=0)
            return False
        best["bad_epochs"] += 1
        return patience is not None and best["bad_epochs"] >= patience

    def _rewrite_history(self, history: list[dict[str, Any]]) -> None:
        if self.history_path is not None:
            self.history_path.write_text("".join(json.dumps(r) + "\n" for r in history))

    def _append_history(self, record: dict[str, Any]) -> None:
        if self.history_path is not None:
            with self.history_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _progress_bar(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
            disable=not self.progress,
        )


def _optimizer(optimizer: Any, model: nn.Module, learning_rate: float | None,
               weight_decay: float, sparse: bool) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        return make_optimizer(optimizer, model, learning_rate, weight_decay, sparse=sparse)
    if isinstance(optimizer, torch.optim.Optimizer):
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
            raise TypeError("the optimizer holds none of the model's parameters: build it from model.parameters() "
                            "(after moving the model to its device), or pass its name")
        return optimizer
    if callable(optimizer):
        return optimizer([p for p in model.parameters() if p.requires_grad])
    raise TypeError(f"optimizer must be a name ({', '.join(OPTIMIZERS)}), a torch.optim.Optimizer or a callable, "
                    f"got {type(optimizer).__name__}")


def warn_default_embedding_init(model: nn.Module) -> None:
    """Warn about embedding tables that still hold PyTorch's N(0, 1) initialisation.

    In a dot-product retrieval model, N(0, 1) embeddings start with huge logits and
    train markedly worse (3x lower top-100 on MovieLens-100K than the same tower with
    towerrec's small init). towerrec's own layers start at uniform(-0.05, 0.05) or
    N(0, 0.05^2) (:func:`towerrec.layers.embedding.init_embedding_`).
    """
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.weight.numel() >= 256:
            std = float(module.weight.detach().float().std())
            if 0.8 < std < 1.25:
                warnings.warn(
                    f"embedding {name or type(module).__name__!r} has PyTorch's default N(0, 1) init (std "
                    f"{std:.2f}); retrieval models train better from small values: call "
                    f"towerrec.layers.init_embedding_(module.weight, 'normal') or use towerrec.layers.embedding",
                    stacklevel=3)
