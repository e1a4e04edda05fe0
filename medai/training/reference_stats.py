"""The champion's reference population, logged with its run, for watching it once it serves.

The inference service compares what it is sent with what the model was trained on
(:mod:`medai.serving.monitoring`). The reference is computed here, at the end of a
training run, while the snapshot and the model are at hand, and logged as the run's
artifact :data:`REFERENCE_ARTIFACT` (JSON):

``inputs``
    Over every split of the snapshot (the inputs do not depend on the model): the count
    of each modality, view position and manufacturer (from the manifest), and per image
    the pixel spacing (mm, from the stored header; a series' in-plane spacing) and the
    mean and standard deviation of the model input (the evaluation transforms' output,
    as the service computes it) and a pooled histogram of the model inputs.
``scores``
    Each finding's probability on the validation and test images only: the model has
    never been fitted to them, so their scores are what it gives new data of the same
    population (training images would look more certain than anything it will be sent).

At most :data:`MAX_VALUES` images a split are read (a seeded sample; the category counts
are over every row), so the reference costs one bounded pass and the artifact stays small
whatever the snapshot. Nothing in it identifies an image: counts and numbers only.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pydicom
import torch
from monai.data.dataloader import DataLoader
from monai.data.dataset import Dataset

from medai.snapshots import SPLITS, load_snapshot
from medai.store import ObjectStore
from medai.training.data import IMAGE_KEY, evaluation_chain
from medai.training.reference_features import (
    CATEGORICAL,
    HISTOGRAM_EDGES,
    REFERENCE_ARTIFACT,
    REFERENCE_FORMAT,
    category,
    image_features,
)

if TYPE_CHECKING:
    from torch import nn

    from medai.config import Settings
    from medai.training.config import ModelConfig
    from medai.training.data import TrainingData

__all__ = ["MAX_VALUES", "build_reference", "log_reference"]

MAX_VALUES = 2000
_SCORE_SPLITS = ("val", "test")


def _pixel_spacing(row: Any, store: ObjectStore) -> float | None:
    spacing = row.get("spacing_mm") if hasattr(row, "get") else None
    if isinstance(spacing, str) and spacing:  # a series: "z,y,x" in mm
        return float(spacing.split(",")[1])
    try:
        ds = pydicom.dcmread(io.BytesIO(store.read(str(row["store_key"]))), stop_before_pixels=True)
    except Exception:  # an unreadable header: the feature is missing for this image
        return None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value:
            return float(value[0])
    return None


def _sample(count: int, rng: np.random.Generator) -> list[int]:
    if count <= MAX_VALUES:
        return list(range(count))
    return sorted(int(i) for i in rng.choice(count, MAX_VALUES, replace=False))


def _subsample(values: Sequence[float], seed: int) -> list[float]:
    kept = [float(v) for v in values if not math.isnan(float(v))]
    if len(kept) > MAX_VALUES:
        rng = np.random.default_rng(seed)
        kept = [kept[i] for i in sorted(rng.choice(len(kept), MAX_VALUES, replace=False))]
    return [round(v, 6) for v in kept]


def build_reference(
    config: ModelConfig,
    settings: Settings,
    data: TrainingData,
    model: nn.Module,
    device: str = "cpu",
) -> dict[str, Any]:
    """The reference of ``model`` trained on ``data`` (see the module docstring).

    The scores are computed on ``device`` (the training's); ``model`` is left on the CPU.
    """
    manifest = load_snapshot(config.data.snapshot, settings=settings)
    store = ObjectStore(settings.resolved_store_dir)
    chain = evaluation_chain(config, settings)
    target = torch.device(device)
    model = model.to(target).eval()
    try:
        return _collect(config, data, model, target, chain, manifest, store)
    finally:
        model.cpu()


def _collect(
    config: ModelConfig,
    data: TrainingData,
    model: nn.Module,
    target: torch.device,
    chain: Any,
    manifest: Any,
    store: ObjectStore,
) -> dict[str, Any]:
    categorical: dict[str, Counter[str]] = {name: Counter() for name in CATEGORICAL.values()}
    spacing: list[float] = []
    means: list[float] = []
    stds: list[float] = []
    histogram = np.zeros(len(HISTOGRAM_EDGES) - 1, dtype=np.int64)
    labels = config.data.labels
    scores: list[list[float]] = [[] for _ in labels]
    rng = np.random.default_rng(config.seed)
    for split in SPLITS:
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        for column, name in CATEGORICAL.items():
            categorical[name].update(category(v) for v in rows[column].fillna(""))
        # The images themselves (decoded, headers read) for at most MAX_VALUES rows a split:
        # the reference costs one bounded pass, whatever the snapshot's size.
        chosen = _sample(len(rows), rng)
        spacing.extend(s for i in chosen if (s := _pixel_spacing(rows.iloc[i], store)) is not None)
        split_records = data.records[split]
        records = [{IMAGE_KEY: split_records[i][IMAGE_KEY]} for i in chosen]
        loader = DataLoader(Dataset(data=records, transform=chain), batch_size=16, shuffle=False)
        for batch in loader:
            images = batch[IMAGE_KEY]
            for image in images.numpy():
                mean, std, counts = image_features(image)
                means.append(mean)
                stds.append(std)
                histogram += counts
            if split in _SCORE_SPLITS:
                with torch.no_grad():
                    logits = model(images.float().to(target))
                    probabilities = torch.sigmoid(logits).cpu().numpy()
                for index, values in enumerate(probabilities.T):
                    scores[index].extend(float(v) for v in values)
    seed = config.seed
    return {
        "format": REFERENCE_FORMAT,
        "model": config.name,
        "snapshot": config.data.snapshot,
        "inputs": {
            "images": len(means),
            "categorical": {name: dict(counts) for name, counts in categorical.items()},
            "numeric": {
                "pixel_spacing": _subsample(spacing, seed),
                "intensity_mean": _subsample(means, seed),
                "intensity_std": _subsample(stds, seed),
            },
            "histogram": {"edges": list(HISTOGRAM_EDGES), "counts": histogram.tolist()},
        },
        "scores": {
            label: _subsample(values, seed) for label, values in zip(labels, scores, strict=True)
        },
        "score_splits": list(_SCORE_SPLITS),
    }


def log_reference(
    config: ModelConfig,
    settings: Settings,
    data: TrainingData,
    model: nn.Module,
    device: str = "cpu",
) -> None:
    """Compute the reference and log it to the active MLflow run as ``REFERENCE_ARTIFACT``."""
    reference = build_reference(config, settings, data, model, device)
    mlflow.log_dict(reference, REFERENCE_ARTIFACT)
