"""The promotion gate: what a candidate version must show before it becomes champion.

Three checks, each per label, all on the candidate's test set:

1. **Absolute**: the lower confidence bound of the test AUROC (as the run logged it,
   ``test/auroc_low/<label>``) at least the run's configured ``evaluation.min_auroc_ci_low``.
2. **Per site**: at every site whose test cases hold at least
   ``MEDAI_GATE_SITE_MIN_POSITIVES`` positive studies of the label, the site's logged lower
   bound (``test/site/<site>/auroc_low/<label>``) at least the site floor,
   ``MEDAI_GATE_SITE_FLOOR`` but never above the run's own gate.
3. **Against the champion** (when there is one, and it is another version): on the test
   cases both runs predicted (the intersection of their per-case artifacts,
   :mod:`medai.training.case_predictions`, where both carry the same label), scored per study
   as the service scores (the maximum over its images), the lower bound of the candidate's
   AUROC minus the champion's (a paired patient-level bootstrap,
   :func:`medai.training.evaluation.bootstrap.paired_auroc_difference`) above
   ``-MEDAI_GATE_MARGIN``: not significantly worse beyond the margin. With no shared case
   to compare on, the comparison fails: a champion is never replaced unmeasured.

Failing any check refuses the promotion unless it is overridden, with a reason, on the
record (:func:`medai.training.registry.promote`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medai.errors import GateFailure
from medai.training.case_predictions import label_column, probability_column
from medai.training.evaluation.bootstrap import paired_auroc_difference

__all__ = [
    "GateDecision",
    "PairedDifference",
    "GateRules",
    "compare_on_shared_cases",
    "evaluate_gate",
    "site_positives",
    "study_scores",
]


@dataclass(frozen=True)
class GateRules:
    """The thresholds of one gate decision (see the module docstring)."""

    min_auroc_ci_low: float
    margin: float = 0.02
    site_min_positives: int = 10
    site_floor: float = 0.5
    confidence: float = 0.95

    @property
    def effective_site_floor(self) -> float:
        """The site floor, never above the run's own gate."""
        return min(self.site_floor, self.min_auroc_ci_low)


@dataclass(frozen=True)
class PairedDifference:
    """Candidate AUROC minus champion AUROC on shared studies, with its confidence interval.

    The AUROCs and bounds are NaN when the shared studies lack a class.
    """

    auroc_a: float
    auroc_b: float
    difference: float
    low: float
    high: float
    positives: int
    negatives: int


def _paired(
    labels: Any, candidate: Any, champion: Any, patients: Any, confidence: float
) -> PairedDifference:
    y = np.asarray(labels, dtype=np.int64)
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        nan = math.nan
        return PairedDifference(nan, nan, nan, nan, nan, positives, negatives)
    diff = paired_auroc_difference(y, candidate, champion, patients, confidence=confidence, seed=0)
    return PairedDifference(
        diff.auroc_a, diff.auroc_b, diff.difference, diff.low, diff.high, positives, negatives
    )


@dataclass
class GateDecision:
    """What the gate found: each label's lower bound, the failures, the comparison."""

    ci_low: dict[str, float]
    failures: list[GateFailure] = field(default_factory=list)
    sites_checked: dict[str, list[str]] = field(default_factory=dict)
    champion: str | None = None
    comparison: dict[str, PairedDifference] = field(default_factory=dict)
    shared_cases: int = 0

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return not self.failures

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready summary for the audit record."""
        return {
            "passed": self.passed,
            "failures": [str(failure) for failure in self.failures],
            "sites_checked": self.sites_checked,
            "champion": self.champion,
            "shared_cases": self.shared_cases,
            "comparison": {
                label: {
                    key: (None if isinstance(v, float) and math.isnan(v) else v)
                    for key, v in vars(diff).items()
                }
                for label, diff in self.comparison.items()
            },
        }


def study_scores(cases: pd.DataFrame, finding: str) -> pd.DataFrame:
    """Per study: the maximum probability over its images, its label and patient.

    Rows without a label of ``finding`` are left out; a study takes its highest label
    (its images share one label in a manifest).
    """
    prob, label = probability_column(finding), label_column(finding)
    known = cases[cases[label].notna()]
    grouped = known.groupby("study_uid", sort=True)
    return pd.DataFrame(
        {
            "probability": grouped[prob].max(),
            "label": grouped[label].max().astype(int),
            "patient": grouped["patient"].first(),
            "site": grouped["site"].first(),
        }
    )


def site_positives(cases: pd.DataFrame, finding: str) -> dict[str, int]:
    """Positive studies of ``finding`` per site in the per-case predictions."""
    studies = study_scores(cases, finding)
    counts = studies[studies["label"] == 1].groupby("site").size()
    return {str(site): int(n) for site, n in counts.items()}


def compare_on_shared_cases(
    candidate: pd.DataFrame,
    champion: pd.DataFrame,
    findings: Sequence[str],
    confidence: float = 0.95,
) -> tuple[int, dict[str, PairedDifference]]:
    """Candidate minus champion AUROC per finding, on the cases both runs predicted.

    Cases are matched on ``case`` (the SOPInstanceUID); a case whose label differs between
    the two runs (relabelled since) is left out, so both are scored against one truth.
    Scores are per study (the maximum over the shared images of the study).

    Returns
    -------
    tuple
        The number of shared cases, and ``{finding: PairedDifference}``.
    """
    joined = candidate.merge(champion, on="case", suffixes=("", "_champion"))
    results: dict[str, PairedDifference] = {}
    for finding in findings:
        prob, label = probability_column(finding), label_column(finding)
        if f"{prob}_champion" not in joined.columns:
            results[finding] = _paired([], [], [], [], confidence)
            continue
        agree = joined[
            joined[label].notna()
            & joined[f"{label}_champion"].notna()
            & (joined[label] == joined[f"{label}_champion"])
        ]
        grouped = agree.groupby("study_uid", sort=True)
        results[finding] = _paired(
            grouped[label].max().astype(int).to_numpy(),
            grouped[prob].max().to_numpy(),
            grouped[f"{prob}_champion"].max().to_numpy(),
            grouped["patient"].first().to_numpy(),
            confidence,
        )
    return len(joined), results


def evaluate_gate(
    metrics: Mapping[str, float],
    labels: Sequence[str],
    rules: GateRules,
    *,
    candidate_cases: pd.DataFrame | None = None,
    champion_cases: pd.DataFrame | None = None,
    champion: str | None = None,
    prefix: str = "test",
) -> GateDecision:
    """Run the gate's checks on a candidate run's logged ``metrics`` and per-case predictions.

    Parameters
    ----------
    metrics
        The candidate run's metrics (``test/auroc_low/<label>``...).
    labels
        Its labels.
    rules
        The thresholds.
    candidate_cases, champion_cases
        The two runs' per-case test predictions (None: the run logged none).
    champion
        The champion's version, or None when there is no other champion to compare with.
    prefix
        The metrics' prefix.

    Returns
    -------
    GateDecision
    """
    decision = GateDecision(ci_low={}, champion=champion)
    for label in labels:
        low = float(metrics.get(f"{prefix}/auroc_low/{label}", math.nan))
        decision.ci_low[label] = low
        if math.isnan(low) or low < rules.min_auroc_ci_low:
            decision.failures.append(GateFailure(label, low, rules.min_auroc_ci_low))
    if candidate_cases is not None:
        floor = rules.effective_site_floor
        for label in labels:
            enough = [
                site
                for site, n in sorted(site_positives(candidate_cases, label).items())
                if n >= rules.site_min_positives
            ]
            decision.sites_checked[label] = enough
            for site in enough:
                low = float(metrics.get(f"{prefix}/site/{site}/auroc_low/{label}", math.nan))
                if math.isnan(low) or low < floor:
                    decision.failures.append(GateFailure(label, low, floor, "site", site))
    if champion is None:
        return decision
    if candidate_cases is None or champion_cases is None:
        for label in labels:
            decision.failures.append(
                GateFailure(label, math.nan, -rules.margin, "champion", champion=champion)
            )
        return decision
    shared, comparison = compare_on_shared_cases(
        candidate_cases, champion_cases, labels, rules.confidence
    )
    decision.shared_cases, decision.comparison = shared, comparison
    for label in labels:
        low = comparison[label].low
        if math.isnan(low) or low <= -rules.margin:
            decision.failures.append(
                GateFailure(label, low, -rules.margin, "champion", None, champion, shared)
            )
    return decision
