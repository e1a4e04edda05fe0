"""The bfloat16 forward pass of a trained network, accepted only if it agrees on the test split.

On a CPU with native bfloat16 units (Intel AMX, AVX512-BF16:
:func:`medai.training.precision.cpu_has_native_bfloat16`) the same weights run 2-3 times
faster under bfloat16 autocast in the channels-last layout than in float32 (a ResNet-18
at 128 px, batch 8: 1.7 against 4.7 ms per image on the project's 2-core Xeon). The
arithmetic is coarser (8 bits of mantissa, float32 accumulation), so like the int8 model
(:mod:`medai.training.quantize`) it must earn its place: ``[export] bfloat16 = true`` makes
training run the test split through :func:`bfloat16_forward` after the test predictions
and judge it against the float network (:mod:`medai.training.agreement`: every probability
within 0.01, every label's test AUROC within 0.005). The run's tag ``medai.bfloat16`` says
``accepted`` or ``refused: <reason>``; the metrics ``bfloat16/max_abs_prob_diff`` and
``bfloat16/test_auroc_delta/<label>`` keep the figures. Nothing is stored besides: the
service runs the registered weights themselves, only where the tag says accepted and its
own check at load passes (:mod:`medai.serving.inference.fast_path`).

Nothing here raises to the training: a failure is a refusal with its reason.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from medai.config import Settings, get_settings
from medai.training.agreement import (
    MAX_AUROC_DELTA,
    MAX_PROBABILITY_DIFFERENCE,
    Batches,
    CheckedForm,
    judge,
    reference_answers,
    split_batches,
)
from medai.training.config import ModelConfig
from medai.training.data import TrainingData

__all__ = ["BFLOAT16_TAG", "Bfloat16Result", "bfloat16_forward", "check_bfloat16"]

logger = logging.getLogger(__name__)

BFLOAT16_TAG: Final = "medai.bfloat16"
_FORM: Final = "bfloat16 autocast"


@dataclass(frozen=True)
class Bfloat16Result(CheckedForm):
    """What the check of the bfloat16 forward pass found (:class:`CheckedForm`)."""

    metric_prefix: ClassVar[str] = "bfloat16"


def bfloat16_forward(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``network``'s probabilities under bfloat16 autocast on the CPU.

    A copy of the network in channels-last (for 2-D images), without hooks, is run, so
    ``network`` itself stays as it was (Grad-CAM hooks it in float32). The input stays
    float32: autocast rounds each convolution's operands to bfloat16 and accumulates in
    float32.
    """
    fast = copy.deepcopy(network).cpu().float().eval()
    fast = fast.to(memory_format=torch.channels_last)
    # A copy keeps the original's hooks (Grad-CAM's, a test's): this one is a plain forward.
    for module in fast.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        images = batch.float().cpu()
        if images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = fast(images)
        return torch.sigmoid(logits.float())

    return forward


def _probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor], batches: Batches
) -> npt.NDArray[np.float64]:
    return np.concatenate([forward(images).double().numpy() for images, _ in batches()])


def check_bfloat16(
    network: nn.Module,
    config: ModelConfig,
    data: TrainingData,
    settings: Settings | None = None,
    *,
    max_abs_prob_diff: float = MAX_PROBABILITY_DIFFERENCE,
    max_auroc_delta: float = MAX_AUROC_DELTA,
) -> Bfloat16Result:
    """Judge the bfloat16 forward pass of the run's best ``network`` on its test split,
    with the bounds given (issue 16's by default)."""
    started = time.perf_counter()
    settings = settings or get_settings()
    try:
        test = split_batches(config, data, settings, "test")
        reference = reference_answers(copy.deepcopy(network).cpu().float().eval(), test)
        probabilities = _probabilities(bfloat16_forward(network), test)
        difference, deltas, why = judge(
            _FORM,
            probabilities,
            reference,
            config.data.labels,
            max_abs_prob_diff,
            max_auroc_delta,
        )
    except Exception as exc:  # a network or split the check cannot run: a refusal
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        result = Bfloat16Result(False, f"the check failed: {type(exc).__name__}: {first}")
        logger.warning("bfloat16 forward pass refused: %s", result.reason)
        return result
    result = Bfloat16Result(
        not why,
        why,
        difference,
        deltas,
        len(reference.labels),
        time.perf_counter() - started,
    )
    if result.accepted:
        logger.info(
            "bfloat16 forward pass accepted: max |Δp| %.3g on %d test images",
            difference,
            result.test_images,
        )
    else:
        logger.warning("bfloat16 forward pass refused: %s", why)
    return result
