"""Study-level scores: what the service answers for a study, computed from its images."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from medai.training.evaluation.metrics import Array

__all__ = ["study_level"]


def study_level(
    true: Array, prob: Array, studies: npt.ArrayLike
) -> tuple[Array, Array, npt.NDArray[Any]]:
    """Per study and label: the maximum probability over its images, and its label.

    The service scores a study as the maximum over its instances, per finding
    (:mod:`medai.serving.inference`), so that is the score evaluated. A study's label
    is the maximum of its images' known labels (labels come per study, so its images
    agree), NaN when none is known.

    Parameters
    ----------
    true, prob
        Per image, shape ``(N, L)``; ``true`` NaN where unknown.
    studies
        The study of each image.

    Returns
    -------
    tuple
        Labels ``(S, L)``, probabilities ``(S, L)`` and the study ids ``(S,)``, in the
        order of each study's first image.
    """
    ids = np.asarray(studies).ravel()
    if ids.size != true.shape[0] or true.shape != prob.shape:
        raise ValueError(f"{ids.size} studies for {true.shape[0]} images")
    keys, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse]
    n_studies, n_labels = keys.size, true.shape[1]
    study_prob = np.full((n_studies, n_labels), -np.inf)
    np.maximum.at(study_prob, group, prob)
    study_true = np.full((n_studies, n_labels), -np.inf)
    np.maximum.at(study_true, group, np.where(np.isnan(true), -np.inf, true))
    study_true[np.isinf(study_true)] = np.nan
    return study_true, study_prob, keys[order]
