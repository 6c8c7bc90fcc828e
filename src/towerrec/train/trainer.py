"""The training loop: batches are index slices of pre-encoded tensors.

The model says how to embed; the task (in-batch softmax) owns the loss; the
trainer owns epochs, evaluation every N epochs, history, checkpoints, resume
and early stopping. The same seed gives the same metrics on CPU: each epoch's
shuffle and dropout are seeded by (seed, epoch), so a resumed run continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch import Tensor, nn

from towerrec.config import RunConfig
from towerrec.errors import ConfigError, TowerrecError
from towerrec.tasks.retrieval import Retrieval
from towerrec.tasks.unique_softmax import unique_candidates, unique_in_batch_softmax_loss
from towerrec.train.checkpoint import Checkpointer, save_weights
from towerrec.train.evaluate import evaluate_examples
from towerrec.train.prepared import PreparedData


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "adagrad":
        # Keras's Adagrad defaults (initial accumulator 0.1, eps 1e-7), so TFRS configs behave alike.
        return torch.optim.Adagrad(
            params, lr=t.learning_rate, initial_accumulator_value=0.1, eps=1e-7, weight_decay=t.weight_decay
        )
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples_per_s: float = 0.0
    resumed_from_epoch: int = 0
    stopped_early: bool = False  # True only when training ended before the scheduled epochs
    best_epoch: int | None = None  # with early stopping: the epoch whose weights the model holds at the end


class Trainer:
    """Trains a two-tower model with the configured retrieval loss.

    With ``[train] early_stopping_patience`` the model ends holding the weights of
    its best validation epoch (by ``early_stopping_metric``), not the last one's;
    ``stopped_early`` says whether training ended before ``[train] epochs``.

    Subclasses (the sequential trainer) override :meth:`batch_loss` and
    :meth:`evaluate`; epochs, history, checkpoints, resume and early stopping
    stay here.

    Args:
        config: the run configuration.
        data: prepared tensors (see :func:`towerrec.train.prepared.prepare`).
        model: a :class:`~towerrec.models.two_tower.TwoTowerModel`.
        checkpoint_dir: where to keep the last epoch's state and, with early stopping, the best
            epoch's weights (None: no checkpoints).
        history_path: JSONL file that gets one line per epoch (None: kept in memory only).
        progress: show a progress bar with examples/s.
    """

    def __init__(
        self,
        config: RunConfig,
        data: PreparedData,
        model: nn.Module,
        *,
        checkpoint_dir: Path | None = None,
        history_path: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.data = data
        self.model = model
        self.optimizer = make_optimizer(config, model)
        self.checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None
        self.history_path = history_path
        self.progress = progress
        task = config.task
        self.general_task = (
            Retrieval(
                temperature=task.temperature,
                logq_correction=task.logq_correction,
                remove_accidental_hits=task.remove_accidental_hits,
                num_hard_negatives=task.num_hard_negatives,
                reduction=task.reduction,
            )
            if task.num_hard_negatives
            else None
        )
        counts = data.item_counts
        self.log_q = torch.log(counts.clamp(min=1.0) / counts.sum().clamp(min=1.0))
        t = config.train
        valid_metrics = {"mrr", *(f"{m}{k}" for k in config.eval.ks for m in ("top_", "ndcg@"))}
        valid_metrics = {v if not v.startswith("top_") else f"{v}_accuracy" for v in valid_metrics}
        if t.early_stopping_patience is not None and t.early_stopping_metric not in valid_metrics:
            raise ConfigError(
                f"[train] early_stopping_metric {t.early_stopping_metric!r} is not one of {sorted(valid_metrics)}"
            )
        if t.early_stopping_patience is not None and data.validation is None:
            raise ConfigError("[train] early_stopping_patience needs a validation split", hint=self.validation_hint)

    validation_hint = "set [data] validation_fraction > 0 or use split = 'leave-last-out'"

    # -- one step ---------------------------------------------------------
    def batch_loss(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Loss of the training examples at ``index`` (positions in the train split)."""
        train = self.data.train
        query = self.model.query_embeddings(train.select(index))
        targets = train.targets[index]
        task = self.config.task
        if self.general_task is not None:
            candidates = self.model.candidate_embeddings({k: v[targets] for k, v in self.data.catalogue.items()})
            return self.general_task(
                query,
                candidates,
                candidate_ids=targets,
                candidate_log_q=self.log_q[targets] if task.logq_correction else None,
            )
        unique, labels, counts = unique_candidates(targets)
        candidates = self.model.candidate_embeddings({k: v[unique] for k, v in self.data.catalogue.items()})
        return unique_in_batch_softmax_loss(
            query,
            candidates,
            labels,
            counts,
            log_q=self.log_q[unique] if task.logq_correction else None,
            remove_accidental_hits=task.remove_accidental_hits,
            temperature=task.temperature,
            reduction=task.reduction,
        )

    # -- the loop ---------------------------------------------------------
    def fit(self) -> FitResult:
        t = self.config.train
        result = FitResult()
        start_epoch = 0
        best = {"metric": -math.inf, "epoch": 0, "bad_epochs": 0}
        if self.checkpointer is not None and self.checkpointer.exists():
            state = self.checkpointer.load(self.model, self.optimizer)
            start_epoch = state["epoch"]
            result.history = state["history"]
            best = state["best"]
            result.resumed_from_epoch = start_epoch
            result.train_seconds = state.get("train_seconds", 0.0)
        best_state = self._load_best(best["epoch"])
        self._rewrite_history(result.history)  # drops any line written after the checkpoint
        n = len(self.data.train)
        examples_seen = 0
        epoch = start_epoch
        patience = t.early_stopping_patience
        last_epoch = start_epoch if patience is not None and best["bad_epochs"] >= patience else t.epochs
        with self._progress_bar() as bar:
            task_id = bar.add_task("training", total=(last_epoch - start_epoch) * math.ceil(n / t.batch_size))
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
                if epoch % t.eval_every == 0 or epoch == t.epochs:
                    split_name, examples = self._eval_split()
                    metrics = self.evaluate(examples)
                    record.update({f"{split_name}/{k}": v for k, v in metrics.items()})
                    stop = self._early_stopping(best, epoch, metrics)
                    if best["epoch"] == epoch:
                        best_state = self._keep_best(epoch)
                result.history.append(record)
                self._append_history(record)
                if self.checkpointer is not None:
                    self.checkpointer.save(
                        self.model,
                        self.optimizer,
                        {"epoch": epoch, "history": result.history, "best": best, "train_seconds": result.train_seconds},
                    )
                    self._drop_other_best(best["epoch"])
                if stop:
                    break
        result.stopped_early = epoch < t.epochs
        if patience is not None and best_state is not None:
            self.model.load_state_dict(best_state)
            result.best_epoch = best["epoch"]
        trained_epochs = [r for r in result.history if r["epoch"] > start_epoch]
        if trained_epochs:
            total = sum(r["seconds"] for r in trained_epochs)
            result.examples_per_s = n * len(trained_epochs) / total if total else 0.0
        return result

    # -- the best epoch's weights (early stopping) ------------------------------
    def _best_path(self, epoch: int) -> Path | None:
        if self.checkpointer is None:
            return None
        return self.checkpointer.folder / f"best-epoch-{epoch:04d}.safetensors"

    def _keep_best(self, epoch: int) -> dict[str, Tensor] | None:
        """A copy of the current weights, the best so far (also on disk, so a resumed run restores it)."""
        if self.config.train.early_stopping_patience is None:
            return None
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        path = self._best_path(epoch)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(self.model, path)
        return state

    def _load_best(self, epoch: int) -> dict[str, Tensor] | None:
        path = self._best_path(epoch)
        if self.config.train.early_stopping_patience is None or not epoch or path is None or not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise TowerrecError(f"{path}: the best epoch's weights are damaged ({type(exc).__name__})",
                                hint="train again with --retrain") from exc

    def _drop_other_best(self, epoch: int) -> None:
        """After the checkpoint names the best epoch, older best-epoch files are not needed."""
        keep = self._best_path(epoch)
        if keep is not None:
            for old in keep.parent.glob("best-epoch-*.safetensors"):
                if old != keep:
                    old.unlink(missing_ok=True)

    def _train_epoch(self, epoch: int, bar: Progress, task_id: Any) -> float:
        t = self.config.train
        n = len(self.data.train)
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        torch.manual_seed(t.seed * 7_919 + epoch)  # dropout
        order = torch.randperm(n, generator=generator)
        self.model.train()
        total, batches = 0.0, 0
        started = time.perf_counter()
        for start in range(0, n, t.batch_size):
            index = order[start : start + t.batch_size]
            loss = self.batch_loss(index, generator)
            value = float(loss.detach())  # the progress bar syncs for it anyway
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
            done = min(start + t.batch_size, n)
            bar.update(
                task_id,
                advance=1,
                description=f"epoch {epoch}/{t.epochs} loss {total / batches:.4f} "
                f"{done / max(time.perf_counter() - started, 1e-9):,.0f} ex/s",
            )
        return total / max(batches, 1)

    def evaluate(self, examples) -> dict[str, float]:
        """Metrics of the current model on an evaluation split (eval settings of the config)."""
        return evaluate_examples(
            self.model, self.data, examples, ks=self.config.eval.ks, exclude_seen=self.config.eval.exclude_seen
        )

    def _eval_split(self):
        if self.data.validation is not None:
            return "validation", self.data.validation
        return "test", self.data.test  # the TFRS tutorials' practice; no early stopping on it

    def _early_stopping(self, best: dict[str, Any], epoch: int, metrics: dict[str, float]) -> bool:
        patience = self.config.train.early_stopping_patience
        name = self.config.train.early_stopping_metric
        if patience is None:
            return False
        if name not in metrics:
            raise ConfigError(f"[train] early_stopping_metric {name!r} is not one of {sorted(metrics)}")
        value = metrics[name]
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
