"""The model card served with a version: the card's text, its metrics section generated.

A card (``<models_dir>/<model>/MODEL_CARD.md``) is written by people, except its metrics
section, which only the registered run can tell: when the service loads a version it
renders that section from the version's MLflow run (the pooled and per-site rows of
``evaluation/test.csv``, the snapshot's name and content hash, the promotion gate of its
configuration, a gate override the version was promoted with) and puts it between the
card's markers::

    <!-- medai:metrics -->
    (replaced by the generated section)
    <!-- /medai:metrics -->

A card without the markers gets the section, under its own heading, at its end. The file
itself is not changed: ``GET /v1/models`` serves the card of the version loaded.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medai.config import Settings

__all__ = [
    "EVALUATION_ARTIFACT",
    "METRICS_BEGIN",
    "METRICS_END",
    "MODEL_CARD",
    "CardFacts",
    "EvaluationRow",
    "fill_card",
    "read_evaluation",
    "read_model_card",
    "render_metrics",
]

logger = logging.getLogger(__name__)

MODEL_CARD = "MODEL_CARD.md"
EVALUATION_ARTIFACT = "evaluation/test.csv"
METRICS_BEGIN = "<!-- medai:metrics -->"
METRICS_END = "<!-- /medai:metrics -->"
_POOLED = "all"  # the site of the pooled rows (medai.training.evaluation.ALL_SITES)


@dataclass(frozen=True)
class EvaluationRow:
    """One row of a run's ``evaluation/test.csv``: a label on one site, or pooled."""

    label: str
    site: str
    n: int
    positives: int
    auroc: float
    auroc_low: float
    auroc_high: float
    threshold: float
    sensitivity: float
    specificity: float
    ece: float


@dataclass(frozen=True)
class CardFacts:
    """What the metrics section says, all read from the version's registered run."""

    name: str
    version: str
    alias: str
    run_id: str
    trained_at: dt.datetime | None
    snapshot: str
    snapshot_hash: str
    test_instances: str
    confidence: float
    gate: float
    labels: tuple[str, ...]
    rows: tuple[EvaluationRow, ...]
    gate_override: str | None = None  # the version's medai.gate_override tag (JSON)


def read_model_card(settings: Settings, name: str) -> str | None:
    """The model card ``<models_dir>/<name>/MODEL_CARD.md``, or None when there is none."""
    path = settings.resolved_models_dir / name / MODEL_CARD
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read the model card %s: %s", path, type(exc).__name__)
        return None


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _count(text: str | None) -> int:
    value = _number(text)
    return int(value) if math.isfinite(value) else 0


def read_evaluation(path: Path) -> tuple[EvaluationRow, ...]:
    """The rows of a run's ``evaluation/test.csv`` (``EvaluationResult.table`` of training)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return tuple(
            EvaluationRow(
                label=row["label"],
                site=row["site"],
                n=_count(row.get("n")),
                positives=_count(row.get("n_positive")),
                auroc=_number(row.get("auroc")),
                auroc_low=_number(row.get("auroc_low")),
                auroc_high=_number(row.get("auroc_high")),
                threshold=_number(row.get("threshold")),
                sensitivity=_number(row.get("sensitivity")),
                specificity=_number(row.get("specificity")),
                ece=_number(row.get("ece")),
            )
            for row in csv.DictReader(handle)
        )


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _ci(row: EvaluationRow) -> str:
    if not (math.isfinite(row.auroc_low) and math.isfinite(row.auroc_high)):
        return "n/a"
    return f"{row.auroc_low:.3f} – {row.auroc_high:.3f}"


def _table(rows: Sequence[EvaluationRow], confidence: float, *, per_site: bool) -> list[str]:
    head = ["site"] if per_site else []
    head += ["finding", "n", "positives", "AUROC", f"{confidence:.0%} CI"]
    head += ["threshold", "sensitivity", "specificity", "ECE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.site] if per_site else []
        cells += [row.label, str(row.n), str(row.positives), _f(row.auroc), _ci(row)]
        cells += [_f(row.threshold), _f(row.sensitivity), _f(row.specificity), _f(row.ece)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _gate(facts: CardFacts, pooled: Sequence[EvaluationRow]) -> str:
    rule = (
        f"**Promotion gate** of this version's configuration: the lower bound of the "
        f"{facts.confidence:.0%} CI of the test AUROC at least {facts.gate:.2f} for every finding"
    )
    low = {row.label: row.auroc_low for row in pooled}
    short = [
        label
        for label in facts.labels
        if not (math.isfinite(low.get(label, math.nan)) and low[label] >= facts.gate)
    ]
    verdict = f"{rule}: passed." if not short else f"{rule}: **not passed** for {', '.join(short)}."
    if facts.gate_override is None:
        return verdict
    try:
        override = json.loads(facts.gate_override)
        if "reason" in override:  # medai since issue 13: an override always has a reason
            return (
                f"{verdict} It was promoted with a gate override by {override['by']} "
                f"({override.get('at', '?')}), reason: {override['reason']}."
            )
        used, by = float(override["used"]), str(override["by"])
    except (ValueError, TypeError, KeyError):
        return f"{verdict} It was promoted with a gate override ({facts.gate_override})."
    return f"{verdict} It was promoted with a gate override: threshold {used:.2f}, by {by}."


def render_metrics(facts: CardFacts) -> str:
    """The card's metrics section (Markdown, no heading) for the version ``facts`` describes."""
    trained = "" if facts.trained_at is None else f", trained {facts.trained_at:%Y-%m-%d} UTC"
    lines = [
        f"*Generated by the inference service from the MLflow run `{facts.run_id}` of "
        f"`{facts.name}` version {facts.version} (served as `@{facts.alias}`{trained}). "
        f"Test split of snapshot `{facts.snapshot}` (content hash `{facts.snapshot_hash}`, "
        f"{facts.test_instances or '?'} test instances); thresholds chosen on its "
        "validation split.*",
        "",
    ]
    pooled = [row for row in facts.rows if row.site == _POOLED]
    pooled.sort(key=lambda row: facts.labels.index(row.label) if row.label in facts.labels else 0)
    if not pooled:
        lines.append(
            f"This version's run logged no evaluation table ({EVALUATION_ARTIFACT}): "
            "retrain it with this medai to see its metrics here."
        )
        return "\n".join(lines) + "\n"
    lines += _table(pooled, facts.confidence, per_site=False)
    lines += ["", _gate(facts, pooled)]
    sites = [row for row in facts.rows if row.site != _POOLED]
    if sites:
        lines += ["", "Per site (check these before trusting a pooled number):", ""]
        lines += _table(sites, facts.confidence, per_site=True)
    return "\n".join(lines) + "\n"


def fill_card(card: str, section: str) -> str:
    """``card`` with ``section`` between its metrics markers (or appended, without them)."""
    begin, end = card.find(METRICS_BEGIN), card.find(METRICS_END)
    if begin == -1 or end < begin:
        return card.rstrip("\n") + "\n\n## Metrics of the served version\n\n" + section
    start = begin + len(METRICS_BEGIN)
    return f"{card[:start]}\n{section}{card[end:]}"
