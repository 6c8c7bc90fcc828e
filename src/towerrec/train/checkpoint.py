"""Checkpoints that survive a crash and never unpickle code.

Weights go to safetensors, optimizer state through ``torch.save`` read back
with ``weights_only=True``, progress to JSON. Each file is written to a temp
name and renamed, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from towerrec.errors import TowerrecError


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _atomic(path, lambda p: save_file(state, str(p)))


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise TowerrecError(f"{path}: model weights are missing", hint="train the run again")
    state = load_file(str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TowerrecError(
            f"{path}: weights do not fit this configuration ({str(exc).splitlines()[0]})",
            hint="the run directory was written by another configuration or version: retrain it",
        ) from exc


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2)))


def load_json(path: Path) -> Any:
    if not path.is_file():
        raise TowerrecError(f"{path}: missing", hint="the run directory is incomplete: retrain it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TowerrecError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


class Checkpointer:
    """The last epoch's full training state: weights, optimizer, progress.

    Each save writes a fresh ``epoch-NNNN/`` folder, then atomically points
    ``state.json`` at it, then deletes older folders: whatever moment a crash
    hits, ``state.json`` names a complete checkpoint.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / "state.json"

    def exists(self) -> bool:
        return self.state.is_file()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        name = f"epoch-{state['epoch']:04d}"
        target = self.folder / name
        target.mkdir(parents=True, exist_ok=True)
        save_weights(model, target / "model.safetensors")
        _atomic(target / "optimizer.pt", lambda p: torch.save(optimizer.state_dict(), p))
        save_json({**state, "checkpoint": name}, self.state)
        for old in self.folder.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        state = load_json(self.state)
        target = self.folder / state["checkpoint"]
        load_weights(model, target / "model.safetensors")
        optimizer.load_state_dict(torch.load(target / "optimizer.pt", weights_only=True))
        return state
