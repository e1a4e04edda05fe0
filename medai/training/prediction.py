"""A network over a split: the masked loss, predictions gathered across ranks, their evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import nn

from medai.training import distributed
from medai.training.config import ModelConfig
from medai.training.data import IMAGE_KEY, LABEL_KEY, SITE_KEY
from medai.training.evaluation import EvaluationResult, auroc, evaluate

__all__ = [
    "autocast",
    "evaluate_predictions",
    "label_aurocs",
    "macro_auroc",
    "masked_bce_with_logits",
    "predict",
]


def masked_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, averaged over the known (non-NaN) targets.

    A batch with no known target gives 0 (with a gradient), not NaN.
    """
    known = ~torch.isnan(targets)
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), torch.nan_to_num(targets, nan=0.0), reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def label_aurocs(y_true: npt.NDArray[np.float64], y_prob: npt.NDArray[np.float64]) -> list[float]:
    """Each label's AUROC over its known values; NaN where it lacks one of the classes."""
    values = []
    for column in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, column])
        y = y_true[known, column]
        both = bool(y.size) and 0 < y.sum() < y.size
        values.append(auroc(y, y_prob[known, column]) if both else math.nan)
    return values


def macro_auroc(y_true: npt.NDArray[np.float64], y_prob: npt.NDArray[np.float64]) -> float:
    """Mean AUROC over the labels with both classes among the known values; NaN if none."""
    values = [v for v in label_aurocs(y_true, y_prob) if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


@torch.no_grad()
def _infer(
    model: nn.Module, loader: Any, device: torch.device, n_labels: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[str], tuple[float, int]]:
    model.eval()
    labels: list[npt.NDArray[np.float64]] = []
    probs: list[npt.NDArray[np.float64]] = []
    sites: list[str] = []
    total, known = 0.0, 0
    for batch in loader:
        images = batch[IMAGE_KEY].to(device)
        targets = batch[LABEL_KEY].to(device)
        with autocast(device):
            logits = model(images)
        mask = ~torch.isnan(targets)
        total += float(masked_bce_with_logits(logits, targets)) * int(mask.sum())
        known += int(mask.sum())
        labels.append(targets.double().cpu().numpy())
        probs.append(torch.sigmoid(logits.float()).double().cpu().numpy())
        sites.extend(str(site) for site in batch.get(SITE_KEY, [""] * len(images)))
    if not labels:
        empty = np.empty((0, n_labels), dtype=np.float64)
        return empty, empty.copy(), sites, (total, known)
    return np.concatenate(labels), np.concatenate(probs), sites, (total, known)


def predict(
    model: nn.Module, loader: Any, device: torch.device, *, n_labels: int | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[str], float]:
    """Run ``model`` over ``loader``: labels, sigmoid probabilities, sites, mean masked loss.

    In a process group ``loader`` is this rank's shard of a split
    (:func:`medai.training.data.build_training_data`) and the result the whole split,
    gathered in manifest order, on every rank; every rank must call it.

    Parameters
    ----------
    model
        The network (not its DistributedDataParallel wrapper, whose forward pass would
        wait for the other ranks).
    loader
        Batches of images and label vectors (and sites).
    device
        Where ``model`` is.
    n_labels
        Columns of the label arrays when ``loader`` yields no batch (a rank's empty
        shard); 0 if None.

    Returns
    -------
    tuple
        Labels ``(N, L)`` (NaN where unknown), probabilities ``(N, L)``, sites, and the
        masked loss averaged over the known labels (NaN if none).
    """
    labels, probs, sites, totals = distributed.gather_split(
        *_infer(model, loader, device, n_labels or 0)
    )
    total, known = totals
    return labels, probs, sites, (total / known if known else math.nan)


def autocast(device: torch.device) -> Any:
    """Mixed precision for ``device``: float16 autocast on CUDA, a no-op context elsewhere."""
    # On the CPU float16 would be slower and change the numbers.
    return torch.autocast(
        device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"
    )


def evaluate_predictions(
    config: ModelConfig,
    val_true: npt.NDArray[np.float64],
    val_prob: npt.NDArray[np.float64],
    test_true: npt.NDArray[np.float64],
    test_prob: npt.NDArray[np.float64],
    test_sites: list[str],
    plot_dir: Path | None = None,
    *,
    test_patients: Sequence[str] | None = None,
    test_studies: Sequence[str] | None = None,
    val_studies: Sequence[str] | None = None,
) -> EvaluationResult:
    """:func:`~medai.training.evaluation.evaluate` with the settings of ``config.evaluation``.

    Parameters
    ----------
    config
        Its labels, seed and ``[evaluation]`` section (threshold rule, bootstrap, level).
    val_true, val_prob, test_true, test_prob, test_sites
        As :func:`predict` gives them for the validation and test splits.
    plot_dir
        Where the ROC and reliability plots go; none are drawn if None.
    test_patients, test_studies, val_studies
        Each row's patient (the bootstrap resamples patients) and study (the headline is
        then study-level, as the service scores); see
        :func:`~medai.training.evaluation.evaluate`.

    In a process group every rank must call it with the same (gathered) arrays: rank 0
    evaluates, since the bootstrap and the plots are the costly part, and the others
    receive its table (and no plots).
    """
    if not distributed.is_main_process():
        return EvaluationResult(table=distributed.broadcast_object(pd.DataFrame()))
    ev = config.evaluation
    evaluation = evaluate(
        config.data.labels,
        val_true,
        val_prob,
        test_true,
        test_prob,
        test_sites=test_sites,
        test_patients=test_patients,
        test_studies=test_studies,
        val_studies=val_studies,
        threshold_method=ev.threshold,
        target_sensitivity=ev.target_sensitivity,
        n_bootstrap=ev.n_bootstrap,
        confidence=ev.confidence,
        seed=config.seed,
        plot_dir=plot_dir,
    )
    distributed.broadcast_object(evaluation.table)
    return evaluation
