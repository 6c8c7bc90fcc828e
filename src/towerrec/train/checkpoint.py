"""Checkpoints that survive a crash, are checked on load, and never unpickle code.

Weights go to safetensors, optimizer state through ``torch.save`` read back
with ``weights_only=True`` (plain tensors and containers only), progress to
JSON. Every file is written atomically (:mod:`towerrec.fsio`), so a crash
mid-write leaves the previous checkpoint intact, and ``state.json`` records the
SHA-256 of the checkpoint's files, verified before anything is read back: a
damaged checkpoint is one line naming the file and saying how to start over.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from towerrec import fsio
from towerrec.errors import TowerrecError, first_line

RETRAIN_HINT = "train it again with `towerrec train CONFIG --retrain`"
_CHECKPOINT_NAME = re.compile(r"epoch-\d{4,}")


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict to ``path`` (safetensors, atomically)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    fsio.atomic_write_bytes(path, safetensors_bytes(state))


def load_weights(model: nn.Module, path: Path, *, hint: str = RETRAIN_HINT) -> None:
    """Load safetensors weights into ``model``.

    Raises:
        TowerrecError: the file is missing, unreadable (truncated, not safetensors) or
            its tensors do not fit ``model``; the message names ``path``.
    """
    if not path.is_file():
        raise TowerrecError(f"{path}: model weights are missing", hint=hint)
    state = fsio.read_tensors(path, hint=hint)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TowerrecError(
            f"{path}: weights do not fit this configuration ({first_line(exc)})",
            hint="the run directory was written by another configuration or version: " + hint,
        ) from None


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    fsio.atomic_write_text(path, json.dumps(obj, indent=2))


def load_json(path: Path, *, hint: str = RETRAIN_HINT) -> Any:
    """A JSON file's value; missing, unreadable or invalid files raise one error naming the file."""
    if not path.is_file():
        raise TowerrecError(f"{path}: missing", hint=f"the run directory is incomplete: {hint}")
    return fsio.read_json(path, hint=hint)


class Checkpointer:
    """The last epoch's full training state: weights, optimizer, progress.

    Each save writes a fresh ``epoch-NNNN/`` folder, then atomically points
    ``state.json`` at it (with the SHA-256 of its files), then deletes older
    folders: whatever moment a crash hits, ``state.json`` names a complete
    checkpoint.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / "state.json"

    def exists(self) -> bool:
        """Whether a complete checkpoint (``state.json``) exists in the folder."""
        return self.state.is_file()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], *,
             scheduler: Any = None) -> None:
        """Write ``epoch-NNNN/`` (weights, optimizer and scheduler state), then point ``state.json`` at it."""
        name = f"epoch-{state['epoch']:04d}"
        target = self.folder / name
        with fsio.io_errors(target):
            target.mkdir(parents=True, exist_ok=True)
        save_weights(model, target / "model.safetensors")
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        fsio.atomic_write_bytes(target / "optimizer.pt", buffer.getvalue())
        files = [f"{name}/model.safetensors", f"{name}/optimizer.pt"]
        if scheduler is not None:
            buffer = io.BytesIO()
            torch.save(scheduler.state_dict(), buffer)
            fsio.atomic_write_bytes(target / "scheduler.pt", buffer.getvalue())
            files.append(f"{name}/scheduler.pt")
        save_json({**state, "checkpoint": name, "checksums": fsio.checksums(self.folder, files)}, self.state)
        for old in self.folder.glob("epoch-*"):
            if old.name != name and old.is_dir() and _CHECKPOINT_NAME.fullmatch(old.name):
                shutil.rmtree(old, ignore_errors=True)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> dict[str, Any]:
        """Restore ``model``, ``optimizer`` (and ``scheduler``); returns the saved progress (epoch, history, best, ...).

        Every file is checked against the SHA-256 in ``state.json`` before it is read;
        the optimizer state is read with ``weights_only=True``, so a pickle that names
        code is refused, never run.

        Raises:
            TowerrecError: ``<file>: <what is wrong>``, hinting "checkpoint epoch-N is
                unreadable; pass --retrain (or delete …/checkpoints) to start over".
        """
        start_over = f"pass --retrain (or delete {self.folder}) to start over"
        state = load_json(self.state, hint=start_over)
        name = state.get("checkpoint") if isinstance(state, dict) else None
        if not isinstance(name, str) or not _CHECKPOINT_NAME.fullmatch(name):
            raise TowerrecError(f"{self.state}: not a towerrec checkpoint state (no valid 'checkpoint' entry)",
                                hint=f"the checkpoint is unreadable; {start_over}")
        hint = f"checkpoint {name} is unreadable; {start_over}"
        checks = {"epoch": int, "history": list, "best": dict, "checksums": dict}
        for key, kind in checks.items():
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise TowerrecError(f"{self.state}: entry {key!r} is missing or not a {kind.__name__}", hint=hint)
        expected = {f"{name}/model.safetensors", f"{name}/optimizer.pt"}
        if scheduler is not None:
            expected.add(f"{name}/scheduler.pt")
        if set(state["checksums"]) != expected:
            raise TowerrecError(f"{self.state}: checksums do not list the checkpoint's files", hint=hint)
        fsio.verify_checksums(self.folder, state["checksums"], hint=hint)
        target = self.folder / name
        load_weights(model, target / "model.safetensors", hint=hint)
        _restore(optimizer, target / "optimizer.pt", "optimizer", hint)
        if scheduler is not None:
            _restore(scheduler, target / "scheduler.pt", "scheduler", hint)
        return state


def _restore(thing: Any, path: Path, what: str, hint: str) -> None:
    """``thing.load_state_dict`` from a ``torch.save`` file read with ``weights_only=True``."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            saved = torch.load(path, weights_only=True)
    except OSError as exc:
        raise fsio.io_error(exc, path, hint) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, ImportError):  # never show torch's text: it advises weights_only=False
        raise TowerrecError(f"{path}: not a valid {what} state (refused to unpickle it)", hint=hint) from None
    try:
        thing.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError):
        raise TowerrecError(f"{path}: the {what} state does not fit this model", hint=hint) from None
