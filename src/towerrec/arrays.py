"""Numbers given to public APIs: a tensor, a numpy array or (nested) Python lists, checked and made a tensor.

Metrics and indexes take embeddings and targets in any of these forms; this
module converts them once, at the public boundary, and raises one clear
``TypeError`` (not numbers) or ``ValueError`` (ragged or wrong shape) naming
the argument, instead of a deep PyTorch error later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[Any]
"""A tensor, a numpy array, or (nested) lists/tuples of numbers."""


def as_float_matrix(value: ArrayLike, name: str) -> Tensor:
    """``value`` as a [rows, cols] floating tensor.

    A floating tensor is returned as it is (same device and dtype, detached); an
    integer tensor becomes float32; a numpy array keeps float64/float32 (other
    numeric dtypes become float32); lists of lists become float32.

    Raises:
        TypeError: ``value`` is not a tensor, array or list, or holds non-numbers.
        ValueError: ragged rows, or not 2-D.
    """
    tensor = _as_tensor(value, name)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [rows, dim] matrix, got shape {list(tensor.shape)}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.detach()


def as_index_vector(value: ArrayLike, name: str) -> Tensor:
    """``value`` as a [Q] int64 tensor (e.g. targets, user ids).

    Raises:
        TypeError: not a tensor, array or list; or floats that are not whole numbers.
        ValueError: not 1-D (ragged or nested lists included).
    """
    tensor = _as_tensor(value, name)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D [Q], got shape {list(tensor.shape)}")
    if tensor.is_floating_point():
        if not bool((tensor == tensor.round()).all()):
            raise TypeError(f"{name} must hold integers, got non-integral floats")
        tensor = tensor.to(torch.int64)
    elif tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got booleans")
    return tensor.to(torch.int64)


def _as_tensor(value: ArrayLike, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {value.dtype}")
        if value.dtype.kind == "f" and value.dtype not in (np.float32, np.float64):
            value = value.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a tensor, a numpy array or a list, got {type(value).__name__}")
    _check_rectangular(value, name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise TypeError(f"{name} must hold numbers ({error})") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got {array.dtype.name} values")
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def _check_rectangular(value: Sequence[Any], name: str) -> None:
    """Raises ``ValueError`` naming the first row whose length differs from row 0's (nested lists only)."""
    rows = [isinstance(row, (Sequence, np.ndarray, Tensor)) and not isinstance(row, (str, bytes)) for row in value]
    if not any(rows):
        return
    if not all(rows):
        bad = rows.index(False)
        raise ValueError(f"{name} is ragged: row {bad} is a single value, other rows are lists")
    width = len(value[0])
    for position, row in enumerate(value):
        if len(row) != width:
            raise ValueError(f"{name} is ragged: row {position} has {len(row)} values, row 0 has {width}")
