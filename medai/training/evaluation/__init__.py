"""Evaluate a multi-label finding model: AUROC with bootstrap CIs, operating point, calibration.

The operating threshold of each label is chosen on the validation set (Youden's J, or
the highest threshold that reaches a target sensitivity) and then applied unchanged to
the test set, overall and per site: a threshold tuned on test data would overstate
sensitivity and specificity. Calibration is the expected calibration error over
equal-width probability bins, with a reliability diagram per label.

Results are a tidy :class:`pandas.DataFrame` (one row per label and site, ``site="all"``
for the pooled test set), a flat ``{name: float}`` dictionary for
``mlflow.log_metrics``, and PNG files for ``mlflow.log_artifact``.

Modules: ``metrics`` (AUROC, bootstrap CIs, ROC, thresholds), ``calibration``
(reliability curve, ECE), ``plots`` (PNG figures), ``report`` (:func:`evaluate`).
"""

from medai.training.evaluation.calibration import expected_calibration_error, reliability_curve
from medai.training.evaluation.metrics import (
    auroc,
    bootstrap_auroc_ci,
    choose_threshold,
    roc_curve,
    sensitivity_specificity,
)
from medai.training.evaluation.plots import save_reliability_plot, save_roc_plot
from medai.training.evaluation.report import ALL_SITES, EvaluationResult, evaluate

__all__ = [
    "ALL_SITES",
    "EvaluationResult",
    "auroc",
    "bootstrap_auroc_ci",
    "choose_threshold",
    "evaluate",
    "expected_calibration_error",
    "reliability_curve",
    "roc_curve",
    "save_reliability_plot",
    "save_roc_plot",
    "sensitivity_specificity",
]
