"""The forward pass of the served model: ONNX Runtime on the CPU, or the torch network.

At load, :func:`choose_backend` exports the torch network (with its sigmoid) to ONNX the
way ``medai models export --format onnx`` does (:func:`medai.training.export.write_onnx`,
into a temporary folder, gone after loading), opens it in ONNX Runtime on the CPU and
**checks** it: images of the model's test split (or random images at the model's size
when its snapshot is not in this catalog, :func:`medai.training.export.check_images`) go
through both, and the largest absolute difference of a probability must be at most
:data:`AGREEMENT`. An export that fails, an ONNX Runtime that is missing or cannot run
it, or a disagreement falls back to the torch network, and the log says why.

``inference_backend`` (``MEDAI_INFERENCE_BACKEND``) picks: ``torch``; ``onnx`` (ONNX
Runtime when it passes the check); or ``auto`` (default): on a CPU the faster of the two
on a timing at load, ONNX Runtime only if it passed; on a GPU torch (batched on the
device). Grad-CAM always uses the torch network (:attr:`ServedModel.network`): it needs
the layers, and runs only when a heatmap or report is asked for.

The export at load rather than at registration: a version registered by any medai (or
before this module) is served fast without a migration, and the check runs against the
very network the service holds. It costs seconds per load.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from medai.config import Settings
    from medai.training.config import ModelConfig

__all__ = ["AGREEMENT", "Backend", "choose_backend", "torch_backend"]

logger = logging.getLogger(__name__)

# The largest |probability difference| the optimised path may have from the torch network.
AGREEMENT: Final = 0.01
_TIMING_ROUNDS: Final = 3

Forward = Callable[["torch.Tensor"], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Backend:
    """What runs the forward pass of a served model.

    Attributes
    ----------
    name
        ``"torch"`` or ``"onnx"``.
    forward
        A batch ``(N, 1, *image_size)`` (on the CPU) to probabilities ``(N, labels)``.
    reason
        Why this backend serves (chosen, or the reason the other one was refused).
    max_abs_difference
        The check's largest probability difference from the torch network (None for torch).
    """

    name: str
    forward: Forward
    reason: str
    max_abs_difference: float | None = None


def torch_backend(network: torch.nn.Module, device: torch.device, reason: str) -> Backend:
    """The reference: the torch network's sigmoid, on ``device``."""
    import torch

    def forward(batch: torch.Tensor) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            logits = network(batch.to(device, non_blocking=True))
            probabilities: npt.NDArray[np.float32] = torch.sigmoid(logits.float()).cpu().numpy()
        return probabilities

    return Backend("torch", forward, reason)


def _onnx_backend(
    network: torch.nn.Module,
    config: ModelConfig,
    images: torch.Tensor,
    *,
    name: str,
    version: str,
    run_id: str,
    thresholds: tuple[float, ...],
) -> Backend:
    """ONNX Runtime (CPU) of ``network``; raises ValueError saying why it cannot serve."""
    import torch

    from medai.errors import ExportFailed
    from medai.training.export import CheckImages, RegisteredVersion, write_onnx

    try:
        import onnxruntime
    except ImportError:
        raise ValueError("onnxruntime is not installed (pip install onnxruntime)") from None
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    registered = RegisteredVersion(name, version, run_id, config, thresholds, state)
    with tempfile.TemporaryDirectory(prefix="medai-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            write_onnx(registered, path, CheckImages([], images, "the load check"))
        except ExportFailed as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:  # the exporter's many kinds, onnx's checker included
            raise ValueError(f"the ONNX export failed: {type(exc).__name__}") from None
        model = path.read_bytes()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As many threads as torch was given (the cores shared by the worker processes), and
    # no spinning between operators: the decode pool needs those cores between batches.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported, exception types
        raise ValueError(f"onnxruntime cannot open the export: {type(exc).__name__}") from None
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> npt.NDArray[np.float32]:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        (probabilities,) = session.run(None, {input_name: array})
        return np.asarray(probabilities, dtype=np.float32)

    return Backend("onnx", forward, "ONNX Runtime (CPU)")


def _seconds(forward: Forward, batches: list[torch.Tensor]) -> float:
    """Median time of ``forward`` over the batches (after one warm-up each)."""
    for batch in batches:
        forward(batch)
    times = []
    for _ in range(_TIMING_ROUNDS):
        start = time.perf_counter()
        for batch in batches:
            forward(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _check_images(config: ModelConfig, settings: Settings) -> torch.Tensor:
    """Test-split images of the model preprocessed as served (random ones without them)."""
    from medai.training.export import check_images

    try:
        return check_images(config, settings).batch
    except Exception as exc:  # a catalog or store that cannot be read: random images
        logger.warning("the load check uses random images (%s)", type(exc).__name__)
        import torch

        generator = torch.Generator().manual_seed(0)
        return torch.rand((8, 1, *config.transforms.image_size), generator=generator)


def choose_backend(
    network: torch.nn.Module,
    config: ModelConfig,
    device: torch.device,
    settings: Settings,
    *,
    name: str,
    version: str,
    run_id: str,
    thresholds: tuple[float, ...],
) -> Backend:
    """The backend ``settings.inference_backend`` asks for, if it passes its check.

    Never raises for the optimised path: the torch network is the fallback, with the
    reason logged as a warning.
    """
    setting = settings.inference_backend
    what = f"{name} version {version}"
    if setting == "torch":
        return torch_backend(network, device, "asked for (inference_backend = torch)")
    if device.type != "cpu":
        reason = f"on {device} torch runs the batches (ONNX Runtime serves CPUs here)"
        if setting == "onnx":
            logger.warning("%s: inference_backend = onnx not used: %s", what, reason)
        return torch_backend(network, device, reason)
    reference = torch_backend(network, device, "the reference network")
    images = _check_images(config, settings)
    try:
        fast = _onnx_backend(
            network, config, images, name=name, version=version, run_id=run_id,
            thresholds=thresholds,
        )  # fmt: skip
        try:
            difference = float(np.max(np.abs(fast.forward(images) - reference.forward(images))))
        except Exception as exc:  # onnxruntime's own exception types
            raise ValueError(f"onnxruntime cannot run the export: {type(exc).__name__}") from None
        if not np.isfinite(difference) or difference > AGREEMENT:
            raise ValueError(
                f"its probabilities differ from the torch network's by up to {difference:.4g} "
                f"on {len(images)} check images (at most {AGREEMENT} is accepted)"
            )
    except ValueError as exc:
        reason = f"ONNX Runtime refused at load: {exc}; serving the torch network"
        logger.warning("%s: %s", what, reason)
        return torch_backend(network, device, reason)
    checked = f"max |Δp| {difference:.2g} on {len(images)} check images"
    if setting == "onnx":
        backend = Backend("onnx", fast.forward, f"asked for; {checked}", difference)
    else:
        # One image alone (an idle service) and a small batch (under load); few, so that
        # a 3-D model's load stays short.
        batches = [images[:1], images[:4]]
        onnx_s, torch_s = _seconds(fast.forward, batches), _seconds(reference.forward, batches)
        faster = onnx_s <= torch_s
        timing = f"ONNX Runtime {1000 * onnx_s:.1f} ms vs torch {1000 * torch_s:.1f} ms"
        backend = (
            Backend("onnx", fast.forward, f"faster ({timing}); {checked}", difference)
            if faster
            else torch_backend(network, device, f"faster ({timing})")
        )
    logger.info("%s: forward pass by %s: %s", what, backend.name, backend.reason)
    return backend
