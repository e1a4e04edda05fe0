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

from medai.collection.campaign.status_rule import STATUS_RULE

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "STATUS_CODES",
    "STATUS_ORDER",
    "STATUS_RULE",
    "BurnupPoint",
    "CampaignProgress",
    "EdgeState",
    "SiteProgress",
    "Status",
    "StatusArg",
    "StatusCode",
    "TargetProgress",
    "csv_safe",
    "progress_csv_rows",
]

SCHEMA_VERSION = "1.1"
"""Version of the export's fields: the minor part grows when fields are added (1.1: the
statuses' ``status_code``, ``status_reason`` and ``status_args``, ``last_seen``, ``edge``
and ``silent_sites``), the major part when one is renamed or removed."""

Status = Literal["silent", "late", "at risk", "on track", "complete", "no targets"]
STATUS_ORDER: dict[str, int] = {
    "silent": 0,
    "late": 1,
    "at risk": 2,
    "on track": 3,
    "complete": 4,
    "no targets": 5,
}
"""How sites are ordered in the report: silent first, then late, at risk, ... (and worst-first
is how the campaign's status compares with its sites')."""

StatusCode = Literal[
    "complete",
    "silent",
    "late-projected",
    "late-stalled",
    "late-ended",
    "at-risk-behind",
    "at-risk-sites",
    "on-track",
    "not-started",
    "no-targets",
]
STATUS_CODES: dict[str, Status] = {
    "complete": "complete",
    "silent": "silent",
    "late-projected": "late",
    "late-stalled": "late",
    "late-ended": "late",
    "at-risk-behind": "at risk",
    "at-risk-sites": "at risk",
    "on-track": "on track",
    "not-started": "on track",
    "no-targets": "no targets",
}
"""Every status code (stable, for machines and translations) and the status it explains.
``at-risk-sites`` is the campaign's only: on its own figures on track, but a site is not."""

StatusArg = str | int | float | None
"""A figure of ``status_args``: dates and times as ISO 8601 text, fractions 0-1, hours."""


class TargetProgress(BaseModel):
    """One target of a site: what it asks for and how much of it has arrived."""

    unit: Literal["studies", "instances"] = Field(description="What the target counts.")
    modality: str | None = Field(description="DICOM modality the target asks for; null = any.")
    body_part: str | None = Field(description="Body part examined; null = any.")
    finding: str | None = Field(description="Finding labelled positive; null = any.")
    target: int = Field(description="How many the site should send in the campaign.")
    collected: int = Field(description="How many have been catalogued so far.")
    fraction: float = Field(description="min(1, collected / target); 1 for a zero target.")


class EdgeState(BaseModel):
    """What a site's edge gateway said in its latest heartbeat (see ``medai edge``)."""

    last_heartbeat: dt.datetime = Field(description="When the centre received it (UTC).")
    version: str = Field(description="The edge's medai version.")
    outbox_depth: int = Field(description="Instances waiting at the edge to be forwarded.")
    oldest_unsent_seconds: float | None = Field(
        description="Age of the oldest instance still waiting; null when none waits."
    )
    clock_skew_seconds: float = Field(
        description="The edge's clock minus the centre's when the heartbeat arrived."
    )
    received_today: int = Field(description="Instances the edge received today (its day).")
    forwarded_today: int = Field(description="Instances it forwarded to the centre today.")
    quarantined_today: int = Field(description="Inputs it quarantined on site today.")


class SiteProgress(BaseModel):
    """Progress and KPIs of one site."""

    site: str = Field(description="Campaign site id.")
    name: str
    status: Status
    status_code: StatusCode = Field(
        description="Why the status, as a stable machine code (see status_rule)."
    )
    status_reason: str = Field(description="Why the status, in one English line with figures.")
    status_args: dict[str, StatusArg] = Field(
        description="The figures status_reason names, by name (for translations): progress "
        "and expected (fractions 0-1), projected and end (dates), hours and quiet_hours, "
        "last_seen (UTC time), days (the rate window)."
    )
    last_seen: dt.datetime | None = Field(
        description="Latest time anything was heard from the site (UTC): its last instance "
        "received at the centre or its edge's last heartbeat; null when never."
    )
    edge: EdgeState | None = Field(
        description="The site's edge gateway's latest heartbeat; null when it has none."
    )
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
    status_code: StatusCode = Field(description="Why the status (see status_rule).")
    status_reason: str = Field(description="Why the status, in one English line with figures.")
    status_args: dict[str, StatusArg] = Field(
        description="The figures status_reason names (see the sites' status_args; "
        "at-risk-sites adds sites, the ids named, and count)."
    )
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
    silent_sites: list[str] = Field(
        description="Sites whose status is silent, the longest silent first."
    )
    late_sites: list[str] = Field(description="Sites whose status is late, latest first.")
    sites: list[SiteProgress] = Field(
        description="Silent sites first, then late, at risk, on track, complete, no targets."
    )
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
    "status_code",
    "status_reason",
    "last_seen",
    "outbox_depth",
    "oldest_unsent_seconds",
    "last_heartbeat",
)
"""Columns of the CSV export: one row per site, then the campaign's row (site ``*``).

Columns added in later schema versions come last, so readers by position keep working.
The edge columns are empty for a site without an edge and on the campaign's row."""

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
        seen = part.last_seen if isinstance(part, SiteProgress) else None
        edge = part.edge if isinstance(part, SiteProgress) else None
        oldest = None if edge is None else edge.oldest_unsent_seconds
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
            "status_code": part.status_code,
            "status_reason": part.status_reason,
            "last_seen": seen.isoformat() if seen else "",
            "outbox_depth": "" if edge is None else edge.outbox_depth,
            "oldest_unsent_seconds": "" if oldest is None else oldest,
            "last_heartbeat": "" if edge is None else edge.last_heartbeat.isoformat(),
        }

    rows = [row(site.site, site.name, site) for site in report.sites]
    rows.append(row("*", report.campaign, report))
    # Site ids, names and the campaign's name are typed by people: never a formula.
    return [{key: csv_safe(value) for key, value in r.items()} for r in rows]
