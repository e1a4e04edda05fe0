"""Which arithmetic training runs in: mixed precision where the hardware has it natively.

``[schedule] precision``:

- ``"auto"`` (the default): float16 autocast with a gradient scaler on CUDA; bfloat16
  autocast on a CPU with native bfloat16 units (Intel AMX tiles or AVX512-BF16) for 2-D
  images of at least :data:`CPU_BFLOAT16_MIN_PIXELS` (on the project's 2-core Xeon a
  ResNet-18 training step of batch 16 at 128 px takes 157 ms instead of 353, at 192 px 248
  ms); float32 elsewhere: emulated bfloat16 is slower than float32, and so is native
  bfloat16 on small images, whose steps are bound by overheads rather than convolutions
  (32 px: 99-124 ms against 85; 64 px: 121-141 against 139), and 3-D volumes are unmeasured.
- ``"bfloat16"``: bfloat16 autocast wherever asked (no scaler: bfloat16 has float32's range).
- ``"float32"``: no autocast.

Only the training steps use it. Validation, test predictions, the exported and the served
network stay float32, so every reported metric is the one of the network the service runs.
2-D networks train in the channels-last memory format under mixed precision (the layout
oneDNN and cuDNN convolve fastest in); the weights they save are plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Final, Literal

import torch

__all__ = [
    "CPU_BFLOAT16_MIN_PIXELS",
    "Precision",
    "cpu_has_native_bfloat16",
    "training_autocast",
    "training_dtype",
    "uses_channels_last",
]

Precision = Literal["auto", "float32", "bfloat16"]

# The smallest 2-D image (rows x columns) whose CPU training "auto" runs in bfloat16.
CPU_BFLOAT16_MIN_PIXELS: Final = 128 * 128


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    # torch's own capability probes (private but stable since 2.1); absent means no.
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and bool(check()):
            return True
    return False


def training_dtype(
    device: torch.device, precision: Precision, image_size: Sequence[int]
) -> torch.dtype | None:
    """The autocast dtype of the training steps on ``device`` for inputs of ``image_size``
    (the spatial dimensions); None for float32."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    large_2d = len(image_size) == 2 and math.prod(image_size) >= CPU_BFLOAT16_MIN_PIXELS
    if device.type == "cpu" and large_2d and cpu_has_native_bfloat16():
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
