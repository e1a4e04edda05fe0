"""Campaign progress and KPIs, computed from the catalog for every site and the campaign.

The figures come from small tables only: :class:`~medai.catalog.models.ProgressCount`
(kept by the ingest pipeline in the same transaction as the rows it counts),
:class:`~medai.catalog.models.LabelCount` (kept likewise by label import) and the
quarantine rows,
so the computation stays fast on a catalog of millions of instances and exact while
ingest goes on.

**Progress** of a site is the mean, over its targets, of ``min(1, collected / target)``
(a target counts studies, or instances where it says ``instances``), so a target met
twice over cannot hide another that is behind. The campaign's progress is the mean
over all sites' targets. **The plan** is linear: by day *d* of an *N*-day campaign,
*d / N* of every target. The **7-day rate** is the progress gained over the last seven
days, per day; the **projected completion** extrapolates it.

**Status** (:data:`STATUS_RULE`):

- ``complete``: every target is met.
- ``late``: progress is below 70 % of the plan for today, or the campaign has ended
  with targets unmet.
- ``at risk``: progress is 70-90 % of the plan, or at least 90 % but the 7-day rate
  projects completion after the last day (or no progress at all in 7 days).
- ``on track``: progress is at least 90 % of the plan and the 7-day rate finishes in
  time (or the targets are already met).
- ``no targets``: the site has none.

The JSON form (:class:`CampaignProgress`) is the export for the city's monitoring
system: its field names are stable, ``schema_version`` changes when they do, and
``collection/progress.schema.json`` is its JSON Schema.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.catalog.models import LabelCount, ProgressCount, QuarantineEntry, Site, utcnow
from medai.collection.campaign.definition import (
    CampaignDefinition,
    Target,
    site_targets,
    stored_campaign,
)

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "STATUS_RULE",
    "BurnupPoint",
    "CampaignProgress",
    "SiteProgress",
    "Status",
    "TargetProgress",
    "compute_progress",
    "progress_csv_rows",
]

SCHEMA_VERSION = "1"
Status = Literal["complete", "on track", "at risk", "late", "no targets"]
ON_TRACK_SHARE = 0.9
LATE_SHARE = 0.7
RATE_WINDOW_DAYS = 7
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


# -- queries -------------------------------------------------------------------------


def _as_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


# (site, modality, body_part) -> {day: (studies, instances, bytes)}
_Daily = dict[tuple[str, str, str], dict[dt.date, tuple[int, int, int]]]


def _daily_counts(session: Session) -> _Daily:
    rows = session.execute(
        select(
            ProgressCount.site_id,
            ProgressCount.modality,
            ProgressCount.body_part,
            ProgressCount.day,
            ProgressCount.studies,
            ProgressCount.instances,
            ProgressCount.bytes,
        )
    )
    daily: _Daily = defaultdict(dict)
    for site, modality, body_part, day, studies, instances, size in rows:
        daily[(site, modality, body_part)][_as_date(day)] = (studies, instances, size)
    return daily


# (site, finding, modality, body_part) -> {day: positive studies}
_Findings = dict[tuple[str, str, str, str], dict[dt.date, int]]


def _positive_findings(session: Session) -> _Findings:
    rows = session.execute(
        select(
            LabelCount.site_id,
            LabelCount.finding,
            LabelCount.modality,
            LabelCount.body_part,
            LabelCount.day,
            LabelCount.positives,
        ).where(LabelCount.finding != "", LabelCount.positives > 0)
    )
    findings: _Findings = defaultdict(dict)
    for site, finding, modality, body_part, day, positives in rows:
        findings[(site, finding, modality, body_part)][_as_date(day)] = int(positives)
    return findings


def _labelled_studies(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(LabelCount.site_id, func.sum(LabelCount.labelled))
        .where(LabelCount.finding == "")
        .group_by(LabelCount.site_id)
    )
    return {site: int(count) for site, count in rows}


def _quarantine_reasons(session: Session) -> dict[str, dict[str, int]]:
    rows = session.execute(
        select(QuarantineEntry.site_id, QuarantineEntry.reason_code, func.count()).group_by(
            QuarantineEntry.site_id, QuarantineEntry.reason_code
        )
    )
    reasons: dict[str, dict[str, int]] = defaultdict(dict)
    for site, reason, count in rows:
        reasons[site][reason] = int(count)
    return reasons


# -- the computation -----------------------------------------------------------------


class _Timeline:
    """The campaign's days and the clamping of receipt days onto them."""

    def __init__(self, definition: CampaignDefinition, today: dt.date) -> None:
        self.start = definition.start_date
        self.end = definition.last_day
        self.length = definition.length_days
        self.today = today
        # Days elapsed including today, 0 before the start, the whole length after the end.
        self.day = max(0, min(self.length, (today - self.start).days + 1))

    def expected(self, day: dt.date) -> float:
        elapsed = max(0, min(self.length, (day - self.start).days + 1))
        return elapsed / self.length

    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.length)]

    def observed_days(self) -> list[dt.date]:
        """Campaign days up to today (empty before the start)."""
        return self.days()[: self.day]


def _matches(target: Target, modality: str, body_part: str) -> bool:
    return (target.modality is None or target.modality == modality) and (
        target.body_part is None or target.body_part == body_part
    )


def _target_series(
    site: str, target: Target, daily: _Daily, findings: _Findings
) -> tuple[list[TargetProgress], list[dict[dt.date, int]]]:
    """The target's progress rows (studies, and instances if asked) and daily counts."""
    rows: list[TargetProgress] = []
    series: list[dict[dt.date, int]] = []
    units: list[tuple[Literal["studies", "instances"], int]] = [("studies", target.studies)]
    if target.instances is not None and target.finding is None:
        units.append(("instances", target.instances))
    for unit, wanted in units:
        per_day: dict[dt.date, int] = defaultdict(int)
        if target.finding is not None:
            # Findings count labelled studies; a finding target has no instance count.
            for (f_site, finding, modality, body_part), positives in findings.items():
                if f_site == site and finding == target.finding:
                    if _matches(target, modality, body_part):
                        for day, count in positives.items():
                            per_day[day] += count
        else:
            index = 0 if unit == "studies" else 1
            for (c_site, modality, body_part), counted in daily.items():
                if c_site == site and _matches(target, modality, body_part):
                    for day, counts in counted.items():
                        per_day[day] += counts[index]
        collected = sum(per_day.values())
        fraction = 1.0 if wanted == 0 else min(1.0, collected / wanted)
        rows.append(
            TargetProgress(
                unit=unit,
                modality=target.modality,
                body_part=target.body_part,
                finding=target.finding,
                target=wanted,
                collected=collected,
                fraction=round(fraction, 6),
            )
        )
        series.append(dict(per_day))
    return rows, series


def _progress_by_day(
    rows: Sequence[TargetProgress], series: Sequence[dict[dt.date, int]], timeline: _Timeline
) -> dict[dt.date, float]:
    """Progress (mean capped target fraction) at the end of each observed campaign day.

    Data received before the start counts on day 1; after the end, on the last day.
    """
    days = timeline.observed_days()
    if not rows or not days:
        return {}
    totals = [0.0] * len(days)
    for row, per_day in zip(rows, series, strict=True):
        cumulative = [0] * len(days)
        for day, count in per_day.items():
            index = max(0, min(len(days) - 1, (day - timeline.start).days))
            cumulative[index] += count
        running = 0
        for i, count in enumerate(cumulative):
            running += count
            totals[i] += 1.0 if row.target == 0 else min(1.0, running / row.target)
    return {day: total / len(rows) for day, total in zip(days, totals, strict=True)}


def _status(
    progress: float | None,
    expected: float,
    projected: dt.date | None,
    timeline: _Timeline,
    rate: float | None,
) -> Status:
    if progress is None:
        return "no targets"
    if progress >= 1.0 - 1e-9:
        return "complete"
    if timeline.today > timeline.end:
        return "late"
    if expected <= 0:
        return "on track"  # the campaign has not started
    share = progress / expected
    if share < LATE_SHARE:
        return "late"
    if share < ON_TRACK_SHARE:
        return "at risk"
    if rate is None or rate <= 0 or projected is None or projected > timeline.end:
        return "at risk"  # on plan today, but stalled or too slow to finish in time
    return "on track"


def _rate_and_projection(
    by_day: dict[dt.date, float], timeline: _Timeline
) -> tuple[float | None, dt.date | None]:
    if not by_day:
        return None, None
    days = sorted(by_day)
    now = by_day[days[-1]]
    before_index = len(days) - 1 - RATE_WINDOW_DAYS
    before = by_day[days[before_index]] if before_index >= 0 else 0.0
    window = min(RATE_WINDOW_DAYS, len(days))
    rate = (now - before) / window
    if now >= 1.0 - 1e-9 or rate <= 0:
        return rate, None
    remaining_days = (1.0 - now) / rate
    if remaining_days > 3650 * 10:
        return rate, None
    return rate, timeline.today + dt.timedelta(days=int(remaining_days + 0.999999))


def _studies_in_window(
    site_keys: Iterable[tuple[str, str, str]], daily: _Daily, today: dt.date
) -> int:
    since = today - dt.timedelta(days=RATE_WINDOW_DAYS - 1)
    return sum(
        counts[0]
        for key in site_keys
        for day, counts in daily[key].items()
        if since <= day <= today
    )


_STATUS_ORDER = {"late": 0, "at risk": 1, "on track": 2, "complete": 3, "no targets": 4}


def compute_progress(session: Session, *, today: dt.date | None = None) -> CampaignProgress:
    """Progress and KPIs of the campaign in this catalog, per site and overall.

    Parameters
    ----------
    session
        A session on the catalog (read-only use).
    today
        The day to report for (UTC); default today. Tests pass a fixed day.

    Raises
    ------
    CampaignError
        When no campaign has been set up in the catalog.
    """
    definition = stored_campaign(session)
    now = utcnow()
    timeline = _Timeline(definition, today or now.date())
    daily = _daily_counts(session)
    findings = _positive_findings(session)
    labelled = _labelled_studies(session)
    reasons = _quarantine_reasons(session)
    sites = session.scalars(select(Site).order_by(Site.id)).all()

    site_reports: list[SiteProgress] = []
    all_rows: list[TargetProgress] = []
    all_series: list[dict[dt.date, int]] = []
    for site in sites:
        rows: list[TargetProgress] = []
        series: list[dict[dt.date, int]] = []
        for target in site_targets(site):
            target_rows, target_series = _target_series(site.id, target, daily, findings)
            rows += target_rows
            series += target_series
        all_rows += rows
        all_series += series
        keys = [key for key in daily if key[0] == site.id]
        studies = sum(c[0] for key in keys for c in daily[key].values())
        instances = sum(c[1] for key in keys for c in daily[key].values())
        size = sum(c[2] for key in keys for c in daily[key].values())
        received = [day for key in keys for day, c in daily[key].items() if c[0]]
        quarantine = reasons.get(site.id, {})
        quarantined = sum(quarantine.values())
        figures, _ = _plan_figures(rows, series, timeline)
        site_reports.append(
            SiteProgress(
                site=site.id,
                name=site.name,
                **figures,
                studies=studies,
                instances=instances,
                bytes=size,
                studies_7d=_studies_in_window(keys, daily, timeline.today),
                last_received=max(received) if received else None,
                quarantined=quarantined,
                rejection_rate=_ratio(quarantined, instances + quarantined),
                quarantine_reasons=dict(sorted(quarantine.items())),
                labelled_studies=labelled.get(site.id, 0),
                label_coverage=_ratio(labelled.get(site.id, 0), studies),
                targets=rows,
            )
        )
    site_reports.sort(key=lambda s: (_STATUS_ORDER[s.status], s.progress or 0.0, s.site))
    return _campaign_report(definition, timeline, now, site_reports, all_rows, all_series)


def _plan_figures(
    rows: Sequence[TargetProgress], series: Sequence[dict[dt.date, int]], timeline: _Timeline
) -> tuple[dict[str, Any], dict[dt.date, float]]:
    """Progress against the plan (the fields sites and the campaign share) and by day."""
    progress = sum(r.fraction for r in rows) / len(rows) if rows else None
    by_day = _progress_by_day(rows, series, timeline)
    rate, projected = _rate_and_projection(by_day, timeline)
    expected = timeline.expected(timeline.today)
    figures = {
        "status": _status(progress, expected, projected, timeline, rate),
        "progress": None if progress is None else round(progress, 6),
        "expected_progress": round(expected, 6),
        "rate_7d": None if rate is None else round(rate, 6),
        "projected_completion": projected,
        "completed": progress is not None and progress >= 1.0 - 1e-9,
    }
    return figures, by_day


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _campaign_report(
    definition: CampaignDefinition,
    timeline: _Timeline,
    now: dt.datetime,
    sites: list[SiteProgress],
    rows: list[TargetProgress],
    series: list[dict[dt.date, int]],
) -> CampaignProgress:
    figures, by_day = _plan_figures(rows, series, timeline)
    studies = sum(s.studies for s in sites)
    instances = sum(s.instances for s in sites)
    quarantined = sum(s.quarantined for s in sites)
    labelled = sum(s.labelled_studies for s in sites)
    reasons: dict[str, int] = defaultdict(int)
    for site in sites:
        for reason, count in site.quarantine_reasons.items():
            reasons[reason] += count
    burnup = [
        BurnupPoint(
            day=day,
            planned=round(timeline.expected(day), 6),
            actual=round(by_day[day], 6) if day in by_day else None,
        )
        for day in timeline.days()
    ]
    return CampaignProgress(
        generated_at=now,
        campaign=definition.name,
        start_date=timeline.start,
        end_date=timeline.end,
        length_days=timeline.length,
        day=timeline.day,
        days_left=max(0, (timeline.end - timeline.today).days),
        **figures,
        studies=studies,
        instances=instances,
        bytes=sum(s.bytes for s in sites),
        studies_7d=sum(s.studies_7d for s in sites),
        quarantined=quarantined,
        rejection_rate=_ratio(quarantined, instances + quarantined),
        quarantine_reasons=dict(sorted(reasons.items())),
        labelled_studies=labelled,
        label_coverage=_ratio(labelled, studies),
        late_sites=[s.site for s in sites if s.status == "late"],
        sites=sites,
        burnup=burnup,
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
)
"""Columns of the CSV export: one row per site, then the campaign's row (site ``*``)."""


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
        }

    rows = [row(site.site, site.name, site) for site in report.sites]
    rows.append(row("*", report.campaign, report))
    return rows
