"""The progress report: the document exported to the city's monitoring system (JSON and CSV).

The JSON form (:class:`CampaignProgress`) has stable field names; ``schema_version``
changes when they do, and ``collection/progress.schema.json`` is its JSON Schema. The CSV
form has one row per site and one for the campaign (:func:`progress_csv_rows`), its text
cells neutralised against spreadsheet formulas. Both carry the audit chain's head.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "STATUS_RULE",
    "BurnupPoint",
    "CampaignProgress",
    "SiteProgress",
    "Status",
    "TargetProgress",
    "csv_safe",
    "progress_csv_rows",
]

SCHEMA_VERSION = "1"
Status = Literal["complete", "on track", "at risk", "late", "no targets"]
STATUS_RULE = (
    "complete: every target met. late: progress below 70% of the plan for today, or the "
    "campaign ended with targets unmet. at risk: progress 70-90% of the plan, or at least 90% "
    "but the 7-day rate projects completion after the last day (or no progress in 7 days). "
    "on track: progress at least 90% of the plan and the 7-day rate finishes in time. "
    "Progress is the mean over targets of min(1, collected/target); the plan is linear "
    "over the campaign's days."
)


class TargetProgress(BaseModel):
    """One target of a site: what it asks for and how much of it has arrived."""

    unit: Literal["studies", "instances"] = Field(description="What the target counts.")
    modality: str | None = Field(description="DICOM modality the target asks for; null = any.")
    body_part: str | None = Field(description="Body part examined; null = any.")
    finding: str | None = Field(description="Finding labelled positive; null = any.")
    target: int = Field(description="How many the site should send in the campaign.")
    collected: int = Field(description="How many have been catalogued so far.")
    fraction: float = Field(description="min(1, collected / target); 1 for a zero target.")


class SiteProgress(BaseModel):
    """Progress and KPIs of one site."""

    site: str = Field(description="Campaign site id.")
    name: str
    status: Status
    progress: float | None = Field(description="Mean target fraction (0-1); null: no targets.")
    expected_progress: float = Field(description="The plan's fraction for today (0-1).")
    rate_7d: float | None = Field(
        description="Progress gained per day over the last 7 days (fraction of the targets)."
    )
    projected_completion: dt.date | None = Field(
        description="When the targets are met at the 7-day rate; null if never at that rate "
        "or already met (see completed)."
    )
    completed: bool = Field(description="Every target met.")
    studies: int = Field(description="Studies catalogued (each counted once).")
    instances: int = Field(description="Instances catalogued (duplicates excluded).")
    bytes: int = Field(description="Size of the de-identified instances stored.")
    studies_7d: int = Field(description="Studies catalogued in the last 7 days.")
    last_received: dt.date | None = Field(description="UTC day the latest study arrived.")
    quarantined: int = Field(description="Inputs quarantined (never stored).")
    rejection_rate: float = Field(description="quarantined / (instances + quarantined).")
    quarantine_reasons: dict[str, int] = Field(description="Quarantined inputs by reason code.")
    labelled_studies: int = Field(description="Catalogued studies with at least one label.")
    label_coverage: float = Field(description="labelled_studies / studies (0 when none).")
    targets: list[TargetProgress]


class BurnupPoint(BaseModel):
    """One day of the campaign: planned and actual progress (fractions 0-1)."""

    day: dt.date
    planned: float
    actual: float | None = Field(description="null for days still ahead.")


class CampaignProgress(BaseModel):
    """The campaign's progress: the document exported to the city's monitoring system."""

    schema_version: str = Field(default=SCHEMA_VERSION)
    generated_at: dt.datetime = Field(description="When this was computed (UTC).")
    campaign: str
    start_date: dt.date
    end_date: dt.date = Field(description="The campaign's last day.")
    length_days: int
    day: int = Field(description="Today's day number in the campaign, 0 before it starts.")
    days_left: int = Field(description="Days after today until the end (0 when over).")
    status: Status
    progress: float | None
    expected_progress: float
    rate_7d: float | None
    projected_completion: dt.date | None
    completed: bool
    studies: int
    instances: int
    bytes: int
    studies_7d: int
    quarantined: int
    rejection_rate: float
    quarantine_reasons: dict[str, int]
    labelled_studies: int
    label_coverage: float
    late_sites: list[str] = Field(description="Sites whose status is late, latest first.")
    sites: list[SiteProgress] = Field(description="Late sites first, then at risk, ...")
    burnup: list[BurnupPoint] = Field(description="Every campaign day: plan vs actual.")
    status_rule: str = Field(default=STATUS_RULE)
    audit_head: str | None = Field(
        default=None,
        description="The audit chain's head as SEQ:HASH when exported (`medai campaign "
        "export`); keep it: `medai audit verify --anchor SEQ:HASH` detects records deleted "
        "after it or a chain rewritten up to it. null elsewhere.",
    )


CSV_COLUMNS = (
    "generated_at",
    "site",
    "name",
    "status",
    "progress",
    "expected_progress",
    "rate_7d",
    "projected_completion",
    "studies",
    "instances",
    "studies_7d",
    "quarantined",
    "rejection_rate",
    "labelled_studies",
    "label_coverage",
    "days_left",
    "audit_head",
)
"""Columns of the CSV export: one row per site, then the campaign's row (site ``*``)."""

# Cells a spreadsheet would read as a formula (OWASP "CSV injection"): = + - @, tab, CR.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def csv_safe(value: object) -> object:
    """``value`` as a CSV cell no spreadsheet runs as a formula.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'`` (what
    OWASP recommends); numbers, and text that is just a number such as ``-1.5``, are kept.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    return value if _NUMBER.match(value) else "'" + value


def progress_csv_rows(report: CampaignProgress) -> list[dict[str, object]]:
    """The CSV export's rows (see :data:`CSV_COLUMNS`), for :class:`csv.DictWriter`."""

    def row(site: str, name: str, part: SiteProgress | CampaignProgress) -> dict[str, object]:
        projected = part.projected_completion
        return {
            "generated_at": report.generated_at.isoformat(),
            "site": site,
            "name": name,
            "status": part.status,
            "progress": "" if part.progress is None else part.progress,
            "expected_progress": part.expected_progress,
            "rate_7d": "" if part.rate_7d is None else part.rate_7d,
            "projected_completion": projected.isoformat() if projected else "",
            "studies": part.studies,
            "instances": part.instances,
            "studies_7d": part.studies_7d,
            "quarantined": part.quarantined,
            "rejection_rate": part.rejection_rate,
            "labelled_studies": part.labelled_studies,
            "label_coverage": part.label_coverage,
            "days_left": report.days_left,
            "audit_head": report.audit_head or "",
        }

    rows = [row(site.site, site.name, site) for site in report.sites]
    rows.append(row("*", report.campaign, report))
    # Site ids, names and the campaign's name are typed by people: never a formula.
    return [{key: csv_safe(value) for key, value in r.items()} for r in rows]
