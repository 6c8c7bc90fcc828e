"""Where models train, evaluate and serve: one way to name a device and one error for an absent one."""

from __future__ import annotations

import torch
from torch import nn

from towerrec.errors import TowerrecError, first_line

CPU_HINT = "use device 'cpu' (the default; --device cpu)"


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None, *,
                   hint: str = CPU_HINT) -> torch.device:
    """The device to train / evaluate / serve on: ``device``, else where ``model`` is (else the CPU).

    Raises:
        TowerrecError: a name PyTorch does not know, or a GPU this machine does not have (one line).
    """
    if device is None:
        if model is None:
            return torch.device("cpu")
        return next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TowerrecError(f"device {device!r} is not a device PyTorch knows ({first_line(exc)})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TowerrecError(f"device {str(device)!r} is not available: PyTorch sees no CUDA GPU here", hint=hint)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise TowerrecError(f"device {str(device)!r} is not available here", hint=hint)
    return resolved
