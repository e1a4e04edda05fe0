"""Campaign progress and KPIs, computed from the catalog for every site and the campaign.

The figures come from small tables only: :class:`~medai.catalog.models.ProgressCount`
(kept by the ingest pipeline in the same transaction as the rows it counts),
:class:`~medai.catalog.models.LabelCount` (kept likewise by label import) and the
quarantine rows, so the computation stays fast on a catalog of millions of instances and
exact while ingest goes on. The KPIs themselves are :mod:`medai.collection.campaign.kpis`;
the document they fill is :mod:`medai.collection.campaign.report`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.catalog.models import LabelCount, ProgressCount, QuarantineEntry, Site, utcnow
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.kpis import (
    Daily,
    Findings,
    Timeline,
    plan_figures,
    ratio,
    studies_in_window,
    target_series,
)
from medai.collection.campaign.report import (
    BurnupPoint,
    CampaignProgress,
    SiteProgress,
    TargetProgress,
)
from medai.collection.campaign.sites import site_targets, stored_campaign

__all__ = ["compute_progress"]


def _as_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _daily_counts(session: Session) -> Daily:
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
    daily: Daily = defaultdict(dict)
    for site, modality, body_part, day, studies, instances, size in rows:
        daily[(site, modality, body_part)][_as_date(day)] = (studies, instances, size)
    return daily


def _positive_findings(session: Session) -> Findings:
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
    findings: Findings = defaultdict(dict)
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
    timeline = Timeline(definition, today or now.date())
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
            target_rows, per_day = target_series(site.id, target, daily, findings)
            rows += target_rows
            series += per_day
        all_rows += rows
        all_series += series
        keys = [key for key in daily if key[0] == site.id]
        studies = sum(c[0] for key in keys for c in daily[key].values())
        instances = sum(c[1] for key in keys for c in daily[key].values())
        size = sum(c[2] for key in keys for c in daily[key].values())
        received = [day for key in keys for day, c in daily[key].items() if c[0]]
        quarantine = reasons.get(site.id, {})
        quarantined = sum(quarantine.values())
        figures, _ = plan_figures(rows, series, timeline)
        site_reports.append(
            SiteProgress(
                site=site.id,
                name=site.name,
                **figures,
                studies=studies,
                instances=instances,
                bytes=size,
                studies_7d=studies_in_window(keys, daily, timeline.today),
                last_received=max(received) if received else None,
                quarantined=quarantined,
                rejection_rate=ratio(quarantined, instances + quarantined),
                quarantine_reasons=dict(sorted(quarantine.items())),
                labelled_studies=labelled.get(site.id, 0),
                label_coverage=ratio(labelled.get(site.id, 0), studies),
                targets=rows,
            )
        )
    site_reports.sort(key=lambda s: (_STATUS_ORDER[s.status], s.progress or 0.0, s.site))
    return _campaign_report(definition, timeline, now, site_reports, all_rows, all_series)


def _campaign_report(
    definition: CampaignDefinition,
    timeline: Timeline,
    now: dt.datetime,
    sites: list[SiteProgress],
    rows: list[TargetProgress],
    series: list[dict[dt.date, int]],
) -> CampaignProgress:
    figures, by_day = plan_figures(rows, series, timeline)
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
        rejection_rate=ratio(quarantined, instances + quarantined),
        quarantine_reasons=dict(sorted(reasons.items())),
        labelled_studies=labelled,
        label_coverage=ratio(labelled, studies),
        late_sites=[s.site for s in sites if s.status == "late"],
        sites=sites,
        burnup=burnup,
    )
