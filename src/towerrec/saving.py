"""Save and load ANY towerrec model: JSON for what it is, safetensors for its weights, never a pickle.

A saved model is a folder::

    model.json         {"kind": "towerrec-model", "format_version", "class": "module:QualName",
                        "config": the model's get_config(), "metadata": {...}, "checksums": {...}}
    model.safetensors  the state dict (parameters and persistent buffers)

:func:`load` finds the class through :data:`towerrec.model.MODEL_REGISTRY` (every
:class:`~towerrec.model.Model` subclass registers itself when defined), importing
the recorded module first when the class is not registered yet; it rebuilds the
model with ``cls.from_config(config)`` and loads the weights. Nothing is
unpickled, and every file is checked against its SHA-256 before it is read.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from towerrec import __version__, fsio
from towerrec.errors import TowerrecError, first_line
from towerrec.model import MODEL_REGISTRY, Model, class_name

MODEL_FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "model.safetensors"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
AGAIN = "save the model again with towerrec.save(model, path)"


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: CPU, contiguous, no two entries sharing memory."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        state[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return state


def save(model: Model, path: str | Path, *, metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (any :class:`~towerrec.model.Model`) to the folder ``path``.

    Args:
        model: the model; its class must be importable (or defined) where it is loaded again.
        path: a new folder, an empty one, or (with ``overwrite``) a saved model to replace.
        metadata: JSON values kept beside the model (e.g. the catalogue's item ids).
        overwrite: replace a model saved there before (never any other folder).
    Returns:
        ``path``.
    Raises:
        TypeError: not a Model, or its configuration or metadata is not JSON.
        TowerrecError: ``path`` exists and is not a towerrec model folder, or cannot be written.
    """
    if not isinstance(model, Model):
        raise TypeError(f"towerrec.save stores towerrec.Model subclasses, got {type(model).__name__}")
    manifest = _manifest(model, metadata)
    path = Path(path)
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise TowerrecError(f"{path}: already exists", hint="pass overwrite=True or choose another path")
    fsio.check_replaceable(path, MANIFEST, what="saved model")
    with fsio.replacing(path, MANIFEST, what="saved model") as staging:
        _write(model, staging, manifest)
    return path


def write_model_files(model: Model, folder: Path, *, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model.json`` and ``model.safetensors`` into ``folder`` (created), a fresh folder inside
    something being staged already (e.g. a serving bundle's ``model/``); :func:`save` adds the atomic swap.

    Raises:
        TypeError: not a Model, or its configuration or metadata is not JSON.
    """
    if not isinstance(model, Model):
        raise TypeError(f"towerrec.save stores towerrec.Model subclasses, got {type(model).__name__}")
    manifest = _manifest(model, metadata)
    folder.mkdir(parents=True, exist_ok=True)
    _write(model, folder, manifest)


def _manifest(model: Model, metadata: dict[str, Any] | None) -> dict[str, Any]:
    manifest = {"kind": "towerrec-model", "format_version": MODEL_FORMAT_VERSION, "towerrec_version": __version__,
                "class": class_name(type(model)), "config": model.get_config(), "metadata": metadata or {}}
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the model's config or metadata is not JSON ({exc})") from None
    return manifest


def _write(model: Model, folder: Path, manifest: dict[str, Any]) -> None:
    fsio.atomic_write_bytes(folder / WEIGHTS, safetensors_bytes(model_state(model)))
    manifest["checksums"] = fsio.checksums(folder, [WEIGHTS])
    fsio.atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> Model:
    """The model saved at ``path`` by :func:`save`, in eval mode on ``map_location``.

    Raises:
        TowerrecError: not a saved model, a damaged or edited file, a class that cannot be
            found (named, with how to make it importable), or weights that do not fit.
    """
    path = Path(path)
    manifest = read_manifest(path)
    cls = model_class(manifest["class"], path / MANIFEST)
    try:
        model = cls.from_config(manifest["config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise TowerrecError(f"{path / MANIFEST}: {manifest['class']} cannot be rebuilt from the saved config "
                            f"({type(exc).__name__}: {first_line(exc)})", hint=AGAIN) from None
    load_weights_into(model, path / WEIGHTS)
    return model.to(map_location).eval()


def read_manifest(path: Path) -> dict[str, Any]:
    """``model.json`` of a saved model, checked (format, fields, file checksums)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise TowerrecError(f"{path}: not a saved towerrec model (no {MANIFEST})",
                            hint="save one with towerrec.save(model, path)")
    manifest = fsio.read_json(manifest_path, hint=AGAIN)
    if not isinstance(manifest, dict) or manifest.get("kind") != "towerrec-model":
        raise TowerrecError(f"{manifest_path}: not a towerrec model manifest", hint=AGAIN)
    if manifest.get("format_version") != MODEL_FORMAT_VERSION:
        raise TowerrecError(f"{manifest_path}: model format {manifest.get('format_version')!r}, this towerrec reads "
                            f"{MODEL_FORMAT_VERSION}", hint=AGAIN)
    for key, kind in (("class", str), ("config", dict), ("checksums", dict)):
        if not isinstance(manifest.get(key), kind):
            raise TowerrecError(f"{manifest_path}: field {key!r} is missing or not a {kind.__name__}", hint=AGAIN)
    if set(manifest["checksums"]) != {WEIGHTS}:
        raise TowerrecError(f"{manifest_path}: checksums do not list {WEIGHTS}", hint=AGAIN)
    fsio.verify_checksums(path, manifest["checksums"], hint=AGAIN)
    return manifest


def model_class(name: str, where: Path) -> type[Model]:
    """The Model subclass recorded as ``"module:QualName"``: registered, or importable by that name.

    Raises:
        TowerrecError: a malformed name, a module that cannot be imported, or a name that is
            not a towerrec Model subclass.
    """
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    module, _, qualname = name.partition(":")
    if not qualname or not _MODULE_NAME.fullmatch(module):
        raise TowerrecError(f"{where}: class {name!r} is not a 'module:QualName' name", hint=AGAIN)
    if module != "__main__":
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise TowerrecError(f"{where}: the model class {name} cannot be imported ({first_line(exc)})",
                                hint=f"make module {module!r} importable (e.g. on PYTHONPATH) before loading") from None
    if name not in MODEL_REGISTRY:
        raise TowerrecError(f"{where}: {name} is not a towerrec.Model subclass defined in module {module!r}",
                            hint="define or import the model class before loading (a class defined in a script "
                                 "is found only when that script has defined it)")
    return MODEL_REGISTRY[name]


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``model`` (strict); errors name the file."""
    state = fsio.read_tensors(path, hint=AGAIN)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TowerrecError(f"{path}: weights do not fit the saved model ({first_line(exc)})", hint=AGAIN) from None
