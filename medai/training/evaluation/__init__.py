"""Evaluate a multi-label finding model: AUROC with bootstrap CIs, operating point, calibration.

The operating threshold of each label is chosen on the validation set (Youden's J, or
the highest threshold that reaches a target sensitivity) and then applied unchanged to
the test set, overall and per site: a threshold tuned on test data would overstate
sensitivity and specificity. Calibration is the expected calibration error over
equal-width probability bins, with a reliability diagram per label.

Results are a tidy :class:`pandas.DataFrame` (one row per label and site, ``site="all"``
for the pooled test set), a flat ``{name: float}`` dictionary for
``mlflow.log_metrics``, and PNG files for ``mlflow.log_artifact``.

AUROC intervals come from a patient-level stratified bootstrap (``bootstrap``), sensitivity
and specificity get Wilson intervals (``intervals``), and with the test studies given the
headline is study-level: the maximum over a study's images, as the service scores
(``study``). Zero-width intervals and strata with fewer than 10 positives are warned about.

Modules: ``metrics`` (AUROC, ROC, thresholds), ``bootstrap`` (patient-level AUROC intervals,
paired comparison), ``intervals`` (Wilson, score-type AUROC), ``study`` (study-level
scores), ``calibration`` (reliability curve, ECE), ``plots`` (PNG figures), ``report``
(:func:`evaluate`).
"""

from medai.training.evaluation.bootstrap import (
    AurocDifference,
    AurocInterval,
    bootstrap_auroc,
    paired_auroc_difference,
)
from medai.training.evaluation.calibration import expected_calibration_error, reliability_curve
from medai.training.evaluation.intervals import auroc_score_interval, wilson_interval
from medai.training.evaluation.metrics import (
    auroc,
    choose_threshold,
    roc_curve,
    sensitivity_specificity,
)
from medai.training.evaluation.plots import save_reliability_plot, save_roc_plot
from medai.training.evaluation.report import ALL_SITES, MIN_POSITIVES, EvaluationResult, evaluate
from medai.training.evaluation.study import study_level

__all__ = [
    "ALL_SITES",
    "MIN_POSITIVES",
    "AurocDifference",
    "AurocInterval",
    "EvaluationResult",
    "auroc",
    "auroc_score_interval",
    "bootstrap_auroc",
    "choose_threshold",
    "evaluate",
    "expected_calibration_error",
    "reliability_curve",
    "roc_curve",
    "save_reliability_plot",
    "save_roc_plot",
    "paired_auroc_difference",
    "sensitivity_specificity",
    "study_level",
    "wilson_interval",
]
