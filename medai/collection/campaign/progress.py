"""Campaign progress and KPIs, computed from the catalog for every site and the campaign.

The figures come from small tables only: :class:`~medai.catalog.models.ProgressCount`
(kept by the ingest pipeline in the same transaction as the rows it counts),
:class:`~medai.catalog.models.LabelCount` (kept likewise by label import) and the
quarantine rows, so the computation stays fast on a catalog of millions of instances and
exact while ingest goes on. A site's ``last_seen`` adds one indexed lookup per site
(``max(instances.received_at)`` on ``ix_instances_site_received``) and its edge's latest
heartbeat (:class:`~medai.catalog.models.SiteHeartbeat`, one row per site). The KPIs
and statuses themselves are :mod:`medai.collection.campaign.kpis`; the document they
fill is :mod:`medai.collection.campaign.report`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.catalog.models import (
    Instance,
    LabelCount,
    ProgressCount,
    QuarantineEntry,
    Site,
    SiteHeartbeat,
    utcnow,
)
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.kpis import (
    Daily,
    Findings,
    Timeline,
    Verdict,
    campaign_verdict,
    plan_figures,
    ratio,
    silence_verdict,
    studies_in_window,
    target_series,
)
from medai.collection.campaign.report import (
    STATUS_ORDER,
    BurnupPoint,
    CampaignProgress,
    EdgeState,
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


def _last_instance(session: Session, site_id: str, until: dt.datetime) -> dt.datetime | None:
    """When the site's latest instance was received, up to ``until`` (an index lookup)."""
    latest: dt.datetime | None = session.scalar(
        select(func.max(Instance.received_at)).where(
            Instance.site_id == site_id, Instance.received_at <= until
        )
    )
    return latest


def _edges(session: Session, until: dt.datetime) -> dict[str, EdgeState]:
    """The latest heartbeat of each site's edge, received up to ``until``."""
    edges: dict[str, EdgeState] = {}
    for beat in session.scalars(select(SiteHeartbeat).where(SiteHeartbeat.received_at <= until)):
        edges[beat.site_id] = EdgeState(
            last_heartbeat=beat.received_at,
            version=beat.edge_version,
            outbox_depth=beat.outbox_depth,
            oldest_unsent_seconds=beat.oldest_unsent_seconds,
            clock_skew_seconds=beat.clock_skew_seconds,
            received_today=beat.received_today,
            forwarded_today=beat.forwarded_today,
            quarantined_today=beat.quarantined_today,
        )
    return edges


def _order(site: SiteProgress) -> tuple[int, dt.datetime, float, str]:
    # Silent sites longest silent first (never heard from before all); others least done first.
    never = dt.datetime.min.replace(tzinfo=dt.UTC)
    seen = (site.last_seen or never) if site.status == "silent" else never
    return (STATUS_ORDER[site.status], seen, site.progress or 0.0, site.site)


def compute_progress(
    session: Session,
    *,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
    quiet_hours: float | None = None,
) -> CampaignProgress:
    """Progress and KPIs of the campaign in this catalog, per site and overall.

    Parameters
    ----------
    session
        A session on the catalog (read-only use).
    today
        The day to report for (UTC); default today. Tests pass a fixed day. A day other
        than today is reported as of its end: what was heard later does not count.
    now
        The moment to report for (UTC); default the clock (or the end of ``today``).
    quiet_hours
        A running site is silent after this long with nothing heard from it; default
        the ``MEDAI_SITE_QUIET_HOURS`` setting.

    Raises
    ------
    CampaignError
        When no campaign has been set up in the catalog.
    """
    definition = stored_campaign(session)
    generated = now or utcnow()
    timeline = Timeline(definition, today or generated.date())
    moment = generated
    if now is None and timeline.today != generated.date():
        moment = dt.datetime.combine(timeline.today, dt.time.max, dt.UTC)
    if quiet_hours is None:
        from medai.config import get_settings

        quiet_hours = get_settings().site_quiet_hours
    edges = _edges(session, moment)
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
        figures, own, _ = plan_figures(rows, series, timeline)
        edge = edges.get(site.id)
        heard = [_last_instance(session, site.id, moment)]
        heard.append(edge.last_heartbeat if edge else None)
        last_seen = max((t for t in heard if t is not None), default=None)
        verdict = silence_verdict(
            own, timeline, last_seen=last_seen, now=moment, quiet_hours=quiet_hours
        )
        site_reports.append(
            SiteProgress(
                site=site.id,
                name=site.name,
                **figures,
                **verdict.report_fields(),
                last_seen=last_seen,
                edge=edge,
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
    site_reports.sort(key=_order)
    return _campaign_report(definition, timeline, generated, site_reports, all_rows, all_series)


def _campaign_report(
    definition: CampaignDefinition,
    timeline: Timeline,
    now: dt.datetime,
    sites: list[SiteProgress],
    rows: list[TargetProgress],
    series: list[dict[dt.date, int]],
) -> CampaignProgress:
    figures, own, by_day = plan_figures(rows, series, timeline)
    verdict = campaign_verdict(
        own,
        [(s.site, Verdict(s.status_code, s.status_reason, s.status_args)) for s in sites],
    )
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
        **verdict.report_fields(),
        studies=studies,
        instances=instances,
        bytes=sum(s.bytes for s in sites),
        studies_7d=sum(s.studies_7d for s in sites),
        quarantined=quarantined,
        rejection_rate=ratio(quarantined, instances + quarantined),
        quarantine_reasons=dict(sorted(reasons.items())),
        labelled_studies=labelled,
        label_coverage=ratio(labelled, studies),
        silent_sites=[s.site for s in sites if s.status == "silent"],
        late_sites=[s.site for s in sites if s.status == "late"],
        sites=sites,
        burnup=burnup,
    )
