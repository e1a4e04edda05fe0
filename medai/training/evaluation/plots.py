"""PNG figures of one label's results: the reliability diagram and the ROC curve.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so they need no
display and touch no global plotting state (safe in threads).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medai.training.evaluation.calibration import expected_calibration_error, reliability_curve
from medai.training.evaluation.metrics import auroc, roc_curve, sensitivity_specificity

__all__ = ["save_reliability_plot", "save_roc_plot"]


def save_reliability_plot(
    y_true: npt.ArrayLike,
    y_prob: npt.ArrayLike,
    path: str | Path,
    *,
    n_bins: int = 10,
    title: str = "",
) -> Path:
    """Write a reliability diagram (observed rate against predicted probability) as PNG.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    ece = expected_calibration_error(y_true, y_prob, n_bins=n_bins)
    figure, axes = _unit_square("perfect calibration")
    used = curve[curve["count"] > 0]
    axes.plot(used["mean_predicted"], used["observed"], marker="o", label=f"model (ECE {ece:.3f})")
    width = 1.0 / n_bins
    axes.bar(
        curve["bin_low"] + width / 2,
        curve["count"] / max(int(curve["count"].sum()), 1),
        width=width * 0.9,
        alpha=0.25,
        color="tab:blue",
        label="share of cases",
    )
    labels = ("predicted probability", "observed frequency")
    return _save(figure, axes, path, labels, title, "upper left")


def save_roc_plot(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """Write the ROC curve as PNG, marking the operating point at ``threshold`` if given.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    fpr, tpr, _ = roc_curve(y_true, y_score)
    figure, axes = _unit_square("chance")
    axes.plot(fpr, tpr, label=f"model (AUROC {auroc(y_true, y_score):.3f})")
    if threshold is not None and not math.isnan(threshold):
        sens, spec = sensitivity_specificity(y_true, y_score, threshold)
        axes.plot([1.0 - spec], [sens], marker="o", color="tab:red", label="operating point")
    return _save(figure, axes, path, ("1 - specificity", "sensitivity"), title, "lower right")


def _unit_square(diagonal: str) -> tuple[Figure, Axes]:
    """A square figure on the Agg canvas with the dashed diagonal (labelled ``diagonal``)."""
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label=diagonal)
    return figure, axes


def _save(
    figure: Figure,
    axes: Axes,
    path: str | Path,
    labels: tuple[str, str],
    title: str,
    legend: Literal["upper left", "lower right"],
) -> Path:
    """Label the unit axes and write the figure to ``path`` as PNG."""
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel(labels[0])
    axes.set_ylabel(labels[1])
    if title:
        axes.set_title(title)
    axes.legend(loc=legend, fontsize="small")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
