"""The served model: ``models:/<name>@<alias>`` from MLflow, rebuilt as a torch module.

:func:`load_served_model` resolves the alias to a version and its training run, and
downloads what the run logged for this: ``config/resolved.json`` (the
:class:`~medai.training.config.ModelConfig`) and ``weights/best.pt`` (a state dict,
loaded with ``weights_only=True``: no pickled code runs). The network is rebuilt with
:func:`medai.training.networks.network_from_config`, the function training built it with
(a named network or a MONAI ``_target_`` entry, so any network that trained is served
without code changes), not loaded from the exported program, because Grad-CAM needs its
layers. Each label's operating threshold is the run's
``val/threshold/<label>`` metric (chosen on the validation split during training; runs of
an older medai named it ``test/threshold/<label>``).

The model card served with it is the card's text with its metrics section rendered from
that run (:mod:`medai.serving.inference.card`).

Preprocessing is training's deterministic path: :func:`medai.training.reader.dataset_to_image`
then :func:`medai.training.transforms.build_transforms` with ``train=False``, on a data
set parsed in memory.

:class:`~medai.serving.inference.holder.ModelHolder` keeps the current
:class:`ServedModel` and replaces it when the alias moves.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.config import Settings
from medai.errors import ModelUnavailable
from medai.serving.inference.card import (
    EVALUATION_ARTIFACT,
    CardFacts,
    fill_card,
    read_evaluation,
    read_model_card,
    render_metrics,
)
from medai.serving.inference.fast_path import Backend, choose_backend, torch_backend
from medai.serving.inference.findings import Finding
from medai.serving.inference.mlflow_store import mlflow_client

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from pydicom.dataset import Dataset

    from medai.training.config import ModelConfig

__all__ = [
    "ServedModel",
    "choose_device",
    "load_served_model",
    "resolve_version",
]

logger = logging.getLogger(__name__)

THRESHOLD_METRIC = "val/threshold/{label}"
# What medai before issue 13 logged the same validation-chosen threshold as.
_LEGACY_THRESHOLD_METRIC = "test/threshold/{label}"


def choose_device(setting: str | None) -> torch.device:
    """The torch device to serve on: ``setting`` if given, else CUDA when present, else CPU."""
    import torch

    if setting:
        return torch.device(setting)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One version of a registered model, ready for inference.

    Attributes
    ----------
    name, version, alias
        The registered model, its version and the alias it was loaded by.
    run_id
        The MLflow training run of the version.
    config
        The model configuration the run was trained with.
    thresholds
        The operating threshold of each label, in the order of ``config.data.labels``.
    network
        The network in eval mode, on ``device``.
    card
        The model card (``<models_dir>/<name>/MODEL_CARD.md``) with its metrics section
        generated from ``run_id``, if there is a card.
    tags
        The version's ``medai.*`` registry tags (snapshot hash, labels, and a gate
        override with its reason, who and when), as ``GET /v1/models`` shows them.
    backend
        What runs :meth:`predict` (:mod:`~medai.serving.inference.fast_path`): ONNX
        Runtime checked against ``network`` at load, or ``network`` itself. None: the
        torch network.
    """

    name: str
    version: str
    alias: str
    run_id: str
    config: ModelConfig
    thresholds: tuple[float, ...]
    network: torch.nn.Module
    device: torch.device
    card: str | None
    loaded_at: dt.datetime
    _chain: Any = field(repr=False)
    tags: dict[str, str] = field(default_factory=dict)
    backend: Backend | None = field(default=None, repr=False)

    @property
    def labels(self) -> tuple[str, ...]:
        """The findings, in the order of the network's outputs."""
        return self.config.data.labels

    def preprocess(self, ds: Dataset) -> torch.Tensor:
        """The network input for one instance: training's evaluation path, on the CPU.

        Parameters
        ----------
        ds
            A parsed instance with pixel data (in memory).

        Returns
        -------
        torch.Tensor
            float32 ``(1, *image_size)``.
        """
        return self.transform(self.decode(ds))

    def decode(self, ds: Dataset) -> npt.NDArray[np.float32]:
        """The displayed image of ``ds`` (pixel decoding, modality and VOI steps), ``(C, H, W)``."""
        from medai.training.reader import dataset_to_image

        return dataset_to_image(ds)

    def transform(self, image: npt.NDArray[np.float32]) -> torch.Tensor:
        """Training's evaluation transforms (resize, intensity) of a decoded image."""
        tensor: torch.Tensor = self._chain({"image": image})["image"]
        return tensor

    @property
    def series_level(self) -> bool:
        """Whether the model reads a whole series as one volume (``[data] level = "series"``)."""
        return self.config.data.level == "series"

    def preprocess_series(self, datasets: Sequence[Dataset]) -> tuple[torch.Tensor, list[int]]:
        """The network input for one series: training's evaluation path for volumes.

        The instances are assembled (slice order along the normal, localizers and
        identical duplicates left out), stacked, oriented and resampled to
        ``[transforms] spacing_mm`` by :func:`medai.training.volume_reader.series_to_volume`
        (as :class:`~medai.training.volume_reader.LoadSeriesFromStore` does in training),
        then put through the evaluation transforms.

        Returns
        -------
        tuple
            float32 ``(1, D, H, W)``, and the indices into ``datasets`` of the instances
            the volume was made of, in slice order.

        Raises
        ------
        medai.errors.SeriesRefused
            The instances are not one volume.
        """
        from medai.training.volume_reader import series_to_volume

        volume = series_to_volume(list(datasets), self.config.transforms.spacing_mm)
        geometry = volume.geometry
        image: torch.Tensor = self._chain({"image": volume.array})["image"]
        if geometry.multiframe:  # ``order`` lists frames of the one multi-frame instance
            return image, [i for i in range(len(datasets)) if i not in geometry.excluded]
        return image, list(geometry.order)

    def predict(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        """Per-label probabilities (sigmoid of the logits) of a batch ``(N, 1, *image_size)``.

        Call it from one thread at a time (the batcher's inference thread).
        """
        backend = self.backend or torch_backend(self.network, self.device, "")
        return backend.forward(batch)

    @property
    def backend_name(self) -> str:
        """What runs :meth:`predict`: ``"torch"``, ``"onnx"``, ``"onnx-int8"`` or
        ``"torch-bfloat16"``."""
        return "torch" if self.backend is None else self.backend.name

    def findings(self, probabilities: Sequence[float]) -> list[Finding]:
        """One :class:`Finding` per label: positive when ``probability >= threshold``."""
        return [
            Finding(label, float(p), threshold, bool(p >= threshold))
            for label, p, threshold in zip(self.labels, probabilities, self.thresholds, strict=True)
        ]


def resolve_version(settings: Settings, name: str, alias: str) -> tuple[str, str]:
    """The version number and training run id that ``models:/<name>@<alias>`` points to.

    Raises
    ------
    ModelUnavailable
        No tracking database, no such model, or no version has the alias.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise ModelUnavailable(
            f"no version of the registered model {name!r} has the alias {alias!r}: "
            f"promote one with `medai models promote {name} VERSION`"
        ) from None
    if not version.run_id:
        raise ModelUnavailable(f"{name} version {version.version} has no training run")
    return str(version.version), str(version.run_id)


def _thresholds(metrics: dict[str, float], labels: Sequence[str], what: str) -> tuple[float, ...]:
    values = []
    for label in labels:
        value = float(
            metrics.get(
                THRESHOLD_METRIC.format(label=label),
                metrics.get(_LEGACY_THRESHOLD_METRIC.format(label=label), math.nan),
            )
        )
        if not math.isfinite(value):
            # Without it there is no positive/negative to report, only a bare score.
            raise ModelUnavailable(
                f"{what} has no operating threshold for {label!r} (metric "
                f"{THRESHOLD_METRIC.format(label=label)}): retrain it on a validation "
                "split with both classes of every label"
            )
        values.append(value)
    return tuple(values)


def _card(
    settings: Settings,
    run: Any,
    config: ModelConfig,
    evaluation: Path | None,
    gate_override: str | None,
    *,
    name: str,
    version: str,
    alias: str,
) -> str | None:
    """The model card of ``name`` with the metrics of ``run``; None without a card."""
    card = read_model_card(settings, name)
    if card is None:
        return None
    params = run.data.params
    started = run.info.start_time
    facts = CardFacts(
        name=name,
        version=version,
        alias=alias,
        run_id=run.info.run_id,
        trained_at=None if not started else dt.datetime.fromtimestamp(started / 1000, dt.UTC),
        snapshot=params.get("snapshot.name", config.data.snapshot),
        snapshot_hash=params.get("snapshot.content_hash", "?"),
        test_instances=params.get("snapshot.test_instances", ""),
        confidence=config.evaluation.confidence,
        gate=config.evaluation.min_auroc_ci_low,
        labels=tuple(config.data.labels),
        rows=() if evaluation is None else read_evaluation(evaluation),
        gate_override=gate_override,
    )
    return fill_card(card, render_metrics(facts))


def load_served_model(
    settings: Settings,
    *,
    name: str,
    alias: str,
    device: torch.device,
    version: tuple[str, str] | None = None,
) -> ServedModel:
    """Load ``models:/<name>@<alias>`` for inference.

    Parameters
    ----------
    settings
        Where MLflow and the model cards are.
    name, alias
        The registered model and the alias to follow.
    device
        Where the network runs.
    version
        ``(version, run_id)`` when already resolved (:func:`resolve_version`).

    Returns
    -------
    ServedModel

    Raises
    ------
    ModelUnavailable
        When the alias, the run's artifacts or its thresholds are missing, or the
        weights do not fit the configured network.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from medai.training.networks import network_from_config
    from medai.training.registry import GATE_OVERRIDE_TAG
    from medai.training.tracking import CONFIG_ARTIFACT, WEIGHTS_ARTIFACT, load_run_model
    from medai.training.transforms import build_transforms

    client = mlflow_client(settings)
    number, run_id = version or resolve_version(settings, name, alias)
    what = f"{name} version {number}"
    uri = settings.resolved_mlflow_tracking_uri
    config, state = load_run_model(run_id, what, settings)
    # The evaluation table (no patient data) goes through a temporary folder, gone after loading.
    with tempfile.TemporaryDirectory(prefix="medai-model-") as tmp:
        try:
            network = network_from_config(config, len(config.data.labels), initial_weights=False)
        except ValueError as exc:
            raise ModelUnavailable(
                f"{what}: the network of {CONFIG_ARTIFACT} cannot be built: {exc}"
            ) from None
        try:
            network.load_state_dict(state)
        except (RuntimeError, OSError, KeyError) as exc:
            raise ModelUnavailable(
                f"{what}: {WEIGHTS_ARTIFACT} does not fit a {config.network.title} with "
                f"{len(config.data.labels)} outputs ({type(exc).__name__})"
            ) from None
        run = client.get_run(run_id)
        thresholds = _thresholds(run.data.metrics, config.data.labels, what)
        try:
            evaluation: Path | None = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=EVALUATION_ARTIFACT, dst_path=tmp, tracking_uri=uri
                )
            )
        except (MlflowException, OSError):  # the card says the run has no table
            evaluation = None
        tags = client.get_model_version(name, number).tags or {}
        card = _card(
            settings,
            run,
            config,
            evaluation,
            tags.get(GATE_OVERRIDE_TAG),
            name=name,
            version=number,
            alias=alias,
        )
    network.eval().to(device)
    backend = choose_backend(
        network, config, device, settings, name=name, version=number, run_id=run_id,
        thresholds=thresholds,
    )  # fmt: skip
    return ServedModel(
        name=name,
        version=number,
        alias=alias,
        run_id=run_id,
        config=config,
        thresholds=thresholds,
        network=network,
        device=device,
        card=card,
        loaded_at=dt.datetime.now(dt.UTC),
        _chain=build_transforms(config.transforms, train=False),
        tags={k: str(v) for k, v in sorted(tags.items()) if k.startswith("medai.")},
        backend=backend,
    )
