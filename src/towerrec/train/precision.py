"""Mixed precision for training: bf16 autocast around the loss computation.

``"bf16"`` runs the forward pass (and so the matching backward) under
``torch.autocast(dtype=torch.bfloat16)``: matmuls and linear layers compute in bfloat16,
while the parameters, their gradients and the optimizer state stay float32 and the loss
is returned as float32. Evaluation is not autocast (float32). bf16 keeps float32's
exponent range, so unlike float16 it needs no loss scaling (Kalamkar et al. 2019,
"A Study of BFLOAT16 for Deep Learning Training").
"""

from __future__ import annotations

import contextlib
import torch

from towerrec.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """Check that ``device`` can train at ``precision``.

    bf16 on CPU needs native bf16 matmuls (AVX512-BF16 or AMX, through oneDNN); on CUDA a GPU
    with bf16 support (Ampere or newer). Without it PyTorch would emulate bf16, slower than fp32.

    Raises:
        ConfigError: an unknown precision, or bf16 on a device without native bf16 (or with a
            device type autocast does not cover).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"[train] precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(f"[train] precision = 'bf16': the GPU {torch.cuda.get_device_name(device)} has no bf16",
                              hint="use precision = 'fp32'")
        return
    if device.type != "cpu":
        raise ConfigError(f"[train] precision = 'bf16' is supported on cpu and cuda, not {device.type}",
                          hint="use precision = 'fp32'")
    if not cpu_has_native_bf16():
        raise ConfigError("[train] precision = 'bf16': this CPU has no native bf16 matmuls (AVX512-BF16 or AMX); "
                          "emulated bf16 is slower than fp32", hint="use precision = 'fp32'")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN reports native bf16 on this CPU and a small bf16 matmul under autocast gives bf16 results."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    a = torch.ones(8, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        product = a @ a
    return product.dtype == torch.bfloat16 and bool((product == 8).all())


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the loss is computed in: bf16 autocast on ``device``, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

