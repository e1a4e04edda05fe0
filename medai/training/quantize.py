"""An int8 ONNX model of a trained 2-D network, accepted only if it agrees on the test split.

``[export] int8 = true`` (:class:`medai.training.config.ExportConfig`) asks
:func:`medai.training.loop.train` for it, after the test predictions:

1. The network followed by its sigmoid is exported to ONNX (``image`` ``(batch, 1, H, W)``
   in, ``probabilities`` ``(batch, labels)`` out, the batch axis dynamic), as
   ``medai models export --format onnx`` does it. (:mod:`medai.training.export` itself
   cannot be imported here: it imports the tracking module, which imports the loop.)
2. ONNX Runtime's ``quant_pre_process`` (shape inference, graph optimisation), then
   ``quantize_static``: QDQ format, weights int8 per output channel, activations uint8,
   MinMax calibration on up to :data:`CALIBRATION_IMAGES` images of the **validation**
   split (evaluation transforms, manifest order). The final sigmoid stays in float: its
   output is the probability, and 8 bits of it alone would cost up to 0.002.
3. The check, on every image of the **test** split: the largest absolute difference of a
   probability from the float network (torch, CPU) must be at most
   :data:`MAX_PROBABILITY_DIFFERENCE`, and each label's test AUROC
   (:func:`medai.training.evaluation.auroc`) may move by at most :data:`MAX_AUROC_DELTA`.
   When it fails, the quantization is tried once more with the first convolution and the
   final Gemm/MatMul kept in float (the layers whose rounding costs most: the raw image,
   and the logits); if that fails too the model is refused, with the reason.

Nothing here raises to the training: :func:`quantize_trained` turns any failure of the
exporter or the quantizer into a refusal. The same network and data give the same bytes
(MinMax calibration is deterministic; ONNX Runtime adds no date or path).

The service (:mod:`medai.serving.inference.fast_path`) checks the model again at load
against the torch network it rebuilt, before it may serve.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

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
from medai.training.onnx_graph import INPUT, OUTPUT, cpu_session, export_probabilities

__all__ = [
    "CALIBRATION_IMAGES",
    "INT8_ARTIFACT",
    "INT8_TAG",
    "MAX_AUROC_DELTA",
    "MAX_PROBABILITY_DIFFERENCE",
    "Int8Result",
    "quantize_network",
    "quantize_trained",
]

logger = logging.getLogger(__name__)

# Where a run keeps the accepted model, and the tag that says what became of it.
INT8_ARTIFACT: Final = "serving/model-int8.onnx"
INT8_TAG: Final = "medai.int8"
CALIBRATION_IMAGES: Final = 64
_BATCH: Final = 8  # images per calibration or check batch: bounds the calibrator's memory

PLAIN: Final = "int8 throughout (the output sigmoid in float)"
GUARDED: Final = "int8 with the first convolution and the final layer in float"


@dataclass(frozen=True)
class Int8Result(CheckedForm):
    """What became of the int8 model of a run (the check's figures: :class:`CheckedForm`).

    Attributes
    ----------
    model
        The int8 ONNX model, when accepted.
    recipe
        Which quantization was checked last (:data:`PLAIN` or :data:`GUARDED`); empty when
        none could be made.
    calibration_images
        How many validation images calibrated it.
    """

    metric_prefix: ClassVar[str] = "int8"

    model: bytes | None = field(default=None, repr=False)
    recipe: str = ""
    calibration_images: int = 0


class _Calibration:
    """ONNX Runtime's calibration reader over the validation images, in batches."""

    def __init__(self, images: torch.Tensor) -> None:
        array = images.detach().cpu().numpy().astype(np.float32, copy=False)
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
            [{INPUT: array[i : i + _BATCH]} for i in range(0, len(array), _BATCH)]
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)


def _kept_in_float(path: Path, guarded: bool) -> list[str]:
    """The nodes left unquantized: the output sigmoid, and for ``guarded`` the first
    convolution and the last Gemm/MatMul (in the graph's topological order)."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    kept = [node.name for node in nodes if OUTPUT in node.output]
    if guarded:
        convolutions = [node.name for node in nodes if node.op_type == "Conv"]
        products = [node.name for node in nodes if node.op_type in ("Gemm", "MatMul")]
        kept += convolutions[:1] + products[-1:]
    return kept


def _quantize(prepared: Path, out: Path, calibration: torch.Tensor, guarded: bool) -> bytes:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        str(prepared),
        str(out),
        _Calibration(calibration),  # duck-typed: ONNX Runtime calls get_next()
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=_kept_in_float(prepared, guarded),
    )
    return out.read_bytes()


def _int8_probabilities(model: bytes, test: Batches) -> npt.NDArray[np.float64]:
    session = cpu_session(model)
    out = []
    for images, _ in test():
        array = images.detach().cpu().numpy().astype(np.float32, copy=False)
        (probabilities,) = session.run([OUTPUT], {INPUT: array})
        out.append(np.asarray(probabilities, dtype=np.float64))
    return np.concatenate(out)


def quantize_network(
    network: nn.Module,
    calibration: torch.Tensor,
    test: Batches,
    label_names: Sequence[str],
    *,
    max_abs_prob_diff: float = MAX_PROBABILITY_DIFFERENCE,
    max_auroc_delta: float = MAX_AUROC_DELTA,
) -> Int8Result:
    """Quantize ``network`` to int8 and check it against itself on ``test``.

    Parameters
    ----------
    network
        The trained 2-D network (logits out); copied to the CPU, left untouched.
    calibration
        Validation images ``(N, 1, H, W)``, preprocessed as evaluated.
    test
        Gives the test split's batches (images and labels) anew each time it is called.
    label_names
        The network's outputs, in order.
    max_abs_prob_diff, max_auroc_delta
        The check's bounds (issue 16's by default).

    Returns
    -------
    Int8Result
        Accepted with the model, or refused with the reason. Raises what the exporter,
        ONNX Runtime or the data raise (:func:`quantize_trained` turns those into
        refusals).
    """
    started = time.perf_counter()
    if len(calibration) == 0:
        return Int8Result(False, "no validation images to calibrate it on")
    float_network = copy.deepcopy(network).cpu().float().eval()
    reference = reference_answers(float_network, test)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reasons = []
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medai-int8-") as tmp:
        exported, prepared = Path(tmp) / "model.onnx", Path(tmp) / "prepared.onnx"
        export_probabilities(float_network, calibration, exported)
        quant_pre_process(str(exported), str(prepared))
        for recipe in (PLAIN, GUARDED):
            model = _quantize(prepared, Path(tmp) / "int8.onnx", calibration, recipe == GUARDED)
            probabilities = _int8_probabilities(model, test)
            difference, deltas, why = judge(
                recipe, probabilities, reference, label_names, max_abs_prob_diff, max_auroc_delta
            )
            figures = {
                "recipe": recipe,
                "max_abs_prob_diff": difference,
                "auroc_delta": deltas,
                "calibration_images": len(calibration),
                "test_images": len(reference.labels),
            }
            if not why:
                seconds = time.perf_counter() - started
                return Int8Result(True, "", model=model, seconds=seconds, **figures)
            reasons.append(why)
    seconds = time.perf_counter() - started
    return Int8Result(False, "; ".join(reasons), seconds=seconds, **figures)


def _first_images(batches: Batches, limit: int) -> torch.Tensor:
    images: list[torch.Tensor] = []
    count = 0
    for batch, _ in batches():
        images.append(batch[: limit - count])
        count += len(images[-1])
        if count >= limit:
            break
    return torch.cat(images) if images else torch.empty(0)


def quantize_trained(
    network: nn.Module,
    config: ModelConfig,
    data: TrainingData,
    settings: Settings | None = None,
    *,
    max_abs_prob_diff: float = MAX_PROBABILITY_DIFFERENCE,
    max_auroc_delta: float = MAX_AUROC_DELTA,
) -> Int8Result:
    """The int8 model of a run's best network (see the module docstring); never raises.

    Parameters
    ----------
    network
        The best network (logits out).
    config
        The run's configuration (a 2-D instance-level model).
    data
        The run's datasets: calibration on ``val``, the check on ``test``.
    settings
        Where the store is (read again only under ``torchrun``).
    max_abs_prob_diff, max_auroc_delta
        The check's bounds.
    """
    if config.data.level != "instance" or len(config.transforms.image_size) != 2:
        return Int8Result(False, "int8 quantization is for 2-D instance-level models only")
    settings = settings or get_settings()
    try:
        calibration = _first_images(
            split_batches(config, data, settings, "val"), CALIBRATION_IMAGES
        )
        result = quantize_network(
            network,
            calibration,
            split_batches(config, data, settings, "test"),
            config.data.labels,
            max_abs_prob_diff=max_abs_prob_diff,
            max_auroc_delta=max_auroc_delta,
        )
    except ImportError as exc:
        result = Int8Result(False, f"{exc.name or 'onnxruntime'} is not installed")
    except Exception as exc:  # the exporter and ONNX Runtime raise many kinds of their own
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        result = Int8Result(False, f"the quantizer failed: {type(exc).__name__}: {first}")
    if result.accepted:
        logger.info(
            "int8 model accepted (%s): max |Δp| %.3g on %d test images, in %.1f s",
            result.recipe,
            result.max_abs_prob_diff,
            result.test_images,
            result.seconds,
        )
    else:
        logger.warning("int8 model refused: %s", result.reason)
    return result
