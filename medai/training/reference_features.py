"""What the monitoring reference holds, and how an input's statistics are computed.

Shared by the training run that writes the reference (:mod:`medai.training.reference_stats`)
and the service that compares its inputs with it (:mod:`medai.serving.monitoring`), so both
compute the same numbers the same way. numpy only: the service imports it at start.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CATEGORICAL",
    "HISTOGRAM_EDGES",
    "NUMERIC",
    "REFERENCE_ARTIFACT",
    "REFERENCE_FORMAT",
    "category",
    "image_features",
]

REFERENCE_ARTIFACT = "monitoring/reference.json"
REFERENCE_FORMAT = 1
# Manifest column -> feature name; the service reads the DICOM attribute of the same meaning
# (Modality, ViewPosition, Manufacturer).
CATEGORICAL = {"modality": "modality", "view_position": "view", "manufacturer": "manufacturer"}
NUMERIC = ("pixel_spacing", "intensity_mean", "intensity_std")
# The model inputs are scaled to [0, 1] by the evaluation transforms; values outside
# fall in the end bins.
HISTOGRAM_EDGES = tuple(i / 10 for i in range(11))


def image_features(image: npt.ArrayLike) -> tuple[float, float, npt.NDArray[np.int64]]:
    """Mean, standard deviation and histogram counts (:data:`HISTOGRAM_EDGES`) of a model input."""
    values = np.asarray(image, dtype=np.float64).ravel()
    clipped = np.clip(values, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(HISTOGRAM_EDGES))
    return float(values.mean()), float(values.std()), counts.astype(np.int64)


def category(value: Any) -> str:
    """A categorical attribute as compared: stripped text, ``""`` when absent."""
    return "" if value is None else str(value).strip()
