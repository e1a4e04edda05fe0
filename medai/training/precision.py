"""Which arithmetic training runs in: mixed precision where the hardware has it natively.

``[schedule] precision``:

- ``"auto"`` (the default): float16 autocast with a gradient scaler on CUDA; bfloat16
  autocast on a CPU with native bfloat16 units (Intel AMX tiles or AVX512-BF16: on the
  project's 2-core Xeon a ResNet-18 training step at 128 px takes 157 ms instead of 353);
  float32 elsewhere, where emulated bfloat16 would be slower than float32.
- ``"bfloat16"``: bfloat16 autocast wherever asked (no scaler: bfloat16 has float32's range).
- ``"float32"``: no autocast.

Only the training steps use it. Validation, test predictions, the exported and the served
network stay float32, so every reported metric is the one of the network the service runs.
2-D networks train in the channels-last memory format under mixed precision (the layout
oneDNN and cuDNN convolve fastest in); the weights they save are plain tensors.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal

import torch

__all__ = [
    "Precision",
    "cpu_has_native_bfloat16",
    "training_autocast",
    "training_dtype",
    "uses_channels_last",
]

Precision = Literal["auto", "float32", "bfloat16"]


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    # torch's own capability probes (private but stable since 2.1); absent means no.
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and bool(check()):
            return True
    return False


def training_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """The autocast dtype of the training steps on ``device``; None for float32."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return None


def training_autocast(
    device: torch.device, dtype: torch.dtype | None
) -> AbstractContextManager[None]:
    """The autocast context of one training step (a no-op one for float32)."""
    return torch.autocast(
        device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None
    )


def uses_channels_last(dtype: torch.dtype | None, spatial_dims: int) -> bool:
    """Whether to train in channels-last: mixed precision over 2-D images."""
    return dtype is not None and spatial_dims == 2
