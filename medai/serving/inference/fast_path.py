"""The forward pass of the served model: ONNX Runtime on the CPU, or the torch network.

At load, :func:`choose_backend` exports the torch network (with its sigmoid) to ONNX the
way ``medai models export --format onnx`` does (:func:`medai.training.export.write_onnx`,
into a temporary folder, gone after loading), opens it in ONNX Runtime on the CPU and
**checks** it: images of the model's test split (or random images at the model's size
when its snapshot is not in this catalog, :func:`medai.training.export.check_images`) go
through both, and the largest absolute difference of a probability must be at most
:data:`AGREEMENT`. An export that fails, an ONNX Runtime that is missing or cannot run
it, or a disagreement falls back to the torch network, and the log says why.

A version trained with ``[export] int8 = true`` whose int8 model was accepted at training
(:mod:`medai.training.quantize`) has ``serving/model-int8.onnx`` in its run: it is
downloaded, opened with the same session options and checked the same way (backend
``onnx-int8``); one that disagrees is refused, and the log says why.

A version trained with ``[export] bfloat16 = true`` whose run is tagged
``medai.bfloat16 = accepted`` (:mod:`medai.training.bfloat16`) may run the torch network
under bfloat16 autocast (backend ``torch-bfloat16``), on a CPU with native bfloat16 units
only (emulated, it would be slower than float32), after the same check.

``inference_backend`` (``MEDAI_INFERENCE_BACKEND``) picks: ``torch``; ``onnx`` (ONNX
Runtime when it passes the check); ``int8`` or ``bfloat16`` (that form when the run has
one that passes, else as ``auto`` among the others, with a warning saying why); or ``auto``
(default): on a CPU the fastest of those that passed on a timing at load (one image, and
a batch of 4); on a GPU torch (batched on the device). Grad-CAM always uses the torch
network (:attr:`ServedModel.network`): it needs the layers, and runs only when a heatmap
or report is asked for.

The export at load rather than at registration: a version registered by any medai (or
before this module) is served fast without a migration, and the check runs against the
very network the service holds. It costs seconds per load.
"""

from __future__ import annotations

import importlib.util
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
        ``"torch"``, ``"onnx"``, ``"onnx-int8"`` or ``"torch-bfloat16"``.
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

    from medai.errors import ExportFailed
    from medai.training.export import CheckImages, RegisteredVersion, write_onnx

    _require_onnxruntime()
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
    return Backend("onnx", _onnx_forward(model, "the export"), "ONNX Runtime (CPU)")


def _require_onnxruntime() -> None:
    """ValueError (the fast path is refused, torch serves) when onnxruntime is missing."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ValueError("onnxruntime is not installed (pip install onnxruntime)")


def _onnx_forward(model: bytes, what: str) -> Forward:
    """A CPU session of ``model`` as a forward pass; raises ValueError if it cannot open."""

    from medai.training.onnx_graph import cpu_session

    try:
        session = cpu_session(model)
    except Exception as exc:  # onnxruntime raises its own, unexported, exception types
        raise ValueError(f"onnxruntime cannot open {what}: {type(exc).__name__}") from None
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> npt.NDArray[np.float32]:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        (probabilities,) = session.run(None, {input_name: array})
        return np.asarray(probabilities, dtype=np.float32)

    return forward


class _NotMadeAtTraining(ValueError):
    """The version's run has no such form: not an error, it was not made or not accepted."""


def _bfloat16_backend(network: torch.nn.Module, settings: Settings, run_id: str) -> Backend:
    """The torch network under bfloat16 autocast; raises ValueError saying why it may not."""
    from mlflow.exceptions import MlflowException

    from medai.serving.inference.mlflow_store import mlflow_client
    from medai.training.bfloat16 import BFLOAT16_TAG, bfloat16_forward
    from medai.training.precision import cpu_has_native_bfloat16

    try:
        tag = mlflow_client(settings).get_run(run_id).data.tags.get(BFLOAT16_TAG)
    except MlflowException as exc:
        raise ValueError(f"the run cannot be read: {type(exc).__name__}") from None
    if tag != "accepted":
        why = f"{BFLOAT16_TAG} {tag}" if tag else "trained without [export] bfloat16 = true"
        raise _NotMadeAtTraining(f"its training did not accept it ({why})")
    if not cpu_has_native_bfloat16():
        raise ValueError(
            "this CPU has no native bfloat16 units (AMX or AVX512-BF16): emulated, it would "
            "be slower than float32"
        )
    probabilities = bfloat16_forward(network)

    def forward(batch: torch.Tensor) -> npt.NDArray[np.float32]:
        array: npt.NDArray[np.float32] = probabilities(batch).numpy()
        return array

    return Backend("torch-bfloat16", forward, "torch bfloat16 autocast (CPU)")


def _int8_backend(settings: Settings, run_id: str) -> Backend:
    """The run's accepted int8 model in ONNX Runtime (CPU); raises ValueError saying why not."""
    from mlflow.exceptions import MlflowException

    from medai.serving.inference.mlflow_store import mlflow_client
    from medai.training.quantize import INT8_ARTIFACT, INT8_TAG

    _require_onnxruntime()
    client = mlflow_client(settings)
    folder, _, file = INT8_ARTIFACT.rpartition("/")
    try:
        listed = {item.path for item in client.list_artifacts(run_id, folder)}
        if INT8_ARTIFACT not in listed:
            tag = client.get_run(run_id).data.tags.get(INT8_TAG)
            why = f"int8 {tag}" if tag else "trained without [export] int8 = true"
            raise _NotMadeAtTraining(f"the run has no {INT8_ARTIFACT} ({why})")
        with tempfile.TemporaryDirectory(prefix="medai-int8-") as tmp:
            local = client.download_artifacts(run_id, INT8_ARTIFACT, tmp)
            model = (Path(local) if Path(local).is_file() else Path(local) / file).read_bytes()
    except (MlflowException, OSError) as exc:
        raise ValueError(f"{INT8_ARTIFACT} cannot be read: {type(exc).__name__}") from None
    forward = _onnx_forward(model, INT8_ARTIFACT)
    return Backend("onnx-int8", forward, "ONNX Runtime int8 (CPU)")


def _check(fast: Backend, reference: Backend, images: torch.Tensor) -> float:
    """The largest |probability difference| of ``fast`` from ``reference`` on ``images``;
    raises ValueError above :data:`AGREEMENT`."""
    try:
        difference = float(np.max(np.abs(fast.forward(images) - reference.forward(images))))
    except Exception as exc:  # onnxruntime's own exception types
        raise ValueError(f"onnxruntime cannot run it: {type(exc).__name__}") from None
    if not np.isfinite(difference) or difference > AGREEMENT:
        raise ValueError(
            f"its probabilities differ from the torch network's by up to {difference:.4g} "
            f"on {len(images)} check images (at most {AGREEMENT} is accepted)"
        )
    return difference


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

    Never raises for the optimised paths: the torch network is the fallback, with the
    reason logged as a warning.
    """
    setting = settings.inference_backend
    what = f"{name} version {version}"
    if setting == "torch":
        return torch_backend(network, device, "asked for (inference_backend = torch)")
    if device.type != "cpu":
        reason = f"on {device} torch runs the batches (ONNX Runtime serves CPUs here)"
        if setting in ("onnx", "int8", "bfloat16"):
            logger.warning("%s: inference_backend = %s not used: %s", what, setting, reason)
        return torch_backend(network, device, reason)
    reference = torch_backend(network, device, "the reference network")
    images = _check_images(config, settings)
    passed: list[Backend] = []
    refusals: list[str] = []

    def checked(kind: str, make: Callable[[], Backend]) -> Backend | None:
        try:
            fast = make()
            difference = _check(fast, reference, images)
        except _NotMadeAtTraining as exc:  # nothing to check: not a refusal worth a warning
            logger.info("%s: no %s: %s", what, kind, exc)
            refusals.append(f"{kind}: {exc}")
            return None
        except ValueError as exc:
            reason = f"{kind} refused at load: {exc}"
            logger.warning("%s: %s", what, reason)
            refusals.append(reason)
            return None
        detail = f"{fast.reason}; max |Δp| {difference:.2g} on {len(images)} check images"
        backend = Backend(fast.name, fast.forward, detail, difference)
        passed.append(backend)
        return backend

    # The forms training proved (an int8 model, the bfloat16 forward pass): asked for by
    # name, served if it passes; else chosen among the rest as auto chooses.
    trained_forms: dict[str, tuple[str, Callable[[], Backend]]] = {
        "int8": ("ONNX Runtime int8", lambda: _int8_backend(settings, run_id)),
        "bfloat16": ("bfloat16", lambda: _bfloat16_backend(network, settings, run_id)),
    }
    for form, (kind, make) in trained_forms.items():
        if setting not in (form, "auto"):
            continue
        backend = checked(kind, make)
        if setting == form:
            if backend is not None:
                return _chosen(what, backend, "asked for")
            logger.warning(
                "%s: inference_backend = %s not used: %s; choosing as auto does",
                what,
                form,
                refusals[-1],
            )

    def fp32() -> Backend:
        return _onnx_backend(
            network, config, images, name=name, version=version, run_id=run_id,
            thresholds=thresholds,
        )  # fmt: skip

    # The fp32 export at load is paid once, here, and only where it may serve.
    onnx = checked("ONNX Runtime", fp32)
    if setting == "onnx":
        if onnx is not None:
            return _chosen(what, onnx, "asked for")
        return _chosen(what, torch_backend(network, device, _fallback(refusals)), "")
    if not passed:
        return _chosen(what, torch_backend(network, device, _fallback(refusals)), "")
    # One image alone (an idle service) and a small batch (under load); few, so that a
    # 3-D model's load stays short.
    batches = [images[:1], images[:4]]
    timed = sorted(
        [(_seconds(b.forward, batches), b) for b in [*passed, reference]],
        key=lambda pair: pair[0],
    )
    timing = ", ".join(f"{b.name} {1000 * seconds:.1f} ms" for seconds, b in timed)
    fastest = timed[0][1]
    if fastest is reference:
        return _chosen(what, torch_backend(network, device, f"fastest ({timing})"), "")
    return _chosen(what, fastest, f"fastest ({timing})")


def _fallback(refusals: list[str]) -> str:
    """Why the torch network serves when no optimised backend passed."""
    return "; ".join(refusals) + "; serving the torch network"


def _chosen(what: str, backend: Backend, why: str) -> Backend:
    """``backend`` with ``why`` before its reason, logged."""
    if why:
        backend = Backend(
            backend.name, backend.forward, f"{why}; {backend.reason}", backend.max_abs_difference
        )
    logger.info("%s: forward pass by %s: %s", what, backend.name, backend.reason)
    return backend
