"""The KPIs of a site or the campaign from its daily counts: progress, plan, rate, status.

**Progress** of a site is the mean, over its targets, of ``min(1, collected / target)``
(a target counts studies, or instances where it says ``instances``), so a target met
twice over cannot hide another that is behind. The campaign's progress is the mean
over all sites' targets. **The plan** is linear: by day *d* of an *N*-day campaign,
*d / N* of every target. The **7-day rate** is the progress gained over the last seven
days, per day; the **projected completion** extrapolates it.

**Status** follows :data:`~medai.collection.campaign.report.STATUS_RULE` (written there
once, applied here): :func:`progress_verdict` judges progress against the plan and the
projection, :func:`silence_verdict` turns a site nothing was heard from for the quiet time
into ``silent``, and :func:`campaign_verdict` keeps the campaign's status from being better
than its sites warrant. Each verdict carries a stable code, a one-line English reason and
the figures the reason names (``status_args``, for translations).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from medai.collection.campaign.definition import CampaignDefinition, Target
from medai.collection.campaign.report import (
    STATUS_CODES,
    Status,
    StatusArg,
    StatusCode,
    TargetProgress,
)

__all__ = [
    "RATE_WINDOW_DAYS",
    "Daily",
    "Findings",
    "Timeline",
    "Verdict",
    "campaign_verdict",
    "plan_figures",
    "progress_verdict",
    "ratio",
    "silence_verdict",
    "studies_in_window",
    "target_series",
]

RATE_WINDOW_DAYS = 7
_DONE = 1.0 - 1e-9

# (site, modality, body_part) -> {day: (studies, instances, bytes)}
Daily = dict[tuple[str, str, str], dict[dt.date, tuple[int, int, int]]]

# (site, finding, modality, body_part) -> {day: positive studies}
Findings = dict[tuple[str, str, str, str], dict[dt.date, int]]


class Timeline:
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


def target_series(
    site: str, target: Target, daily: Daily, findings: Findings
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
    rows: Sequence[TargetProgress], series: Sequence[dict[dt.date, int]], timeline: Timeline
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


@dataclass(frozen=True)
class Verdict:
    """A status with its code, its one-line English reason and the figures it names."""

    code: StatusCode
    reason: str
    args: dict[str, StatusArg] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return STATUS_CODES[self.code]

    def report_fields(self) -> dict[str, Any]:
        """The report's fields for this verdict (``status``, ``status_code``, ...)."""
        return {
            "status": self.status,
            "status_code": self.code,
            "status_reason": self.reason,
            "status_args": dict(self.args),
        }


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def progress_verdict(
    progress: float | None,
    expected: float,
    rate: float | None,
    projected: dt.date | None,
    timeline: Timeline,
) -> Verdict:
    """The status progress and its projection warrant (the rule without silence).

    ``progress`` is None when there are no targets; ``projected`` is None when the rate
    never finishes (or the targets are met).
    """
    if progress is None:
        return Verdict("no-targets", "No targets.")
    if progress >= _DONE:
        return Verdict("complete", "Every target met.")
    end = timeline.end.isoformat()
    figures: dict[str, StatusArg] = {
        "progress": round(progress, 4),
        "expected": round(expected, 4),
        "end": end,
    }
    against = f"{_pct(progress)} against a plan of {_pct(expected)}"
    if timeline.today > timeline.end:
        return Verdict(
            "late-ended",
            f"The campaign ended on {end} with {_pct(progress)} of the targets met.",
            figures,
        )
    if timeline.day == 0:
        start = timeline.start.isoformat()
        return Verdict(
            "not-started", f"The campaign starts on {start}.", {**figures, "start": start}
        )
    if rate is None or rate <= 0:
        return Verdict(
            "late-stalled",
            f"{against}; nothing toward the targets arrived in the last {RATE_WINDOW_DAYS} "
            "days, so there is no projection.",
            {**figures, "days": RATE_WINDOW_DAYS},
        )
    if projected is None or projected > timeline.end:
        when = projected.isoformat() if projected else "more than 100 years away"
        return Verdict(
            "late-projected",
            f"{against}; projected {when}, after the end {end}.",
            {**figures, "projected": projected.isoformat() if projected else None},
        )
    with_projection = {**figures, "projected": projected.isoformat()}
    if progress < expected - 1e-9:
        return Verdict(
            "at-risk-behind",
            f"{against}, projected {projected.isoformat()}, before the end {end}.",
            with_projection,
        )
    return Verdict(
        "on-track",
        f"{against}; projected {projected.isoformat()}, by the end {end}.",
        with_projection,
    )


def silence_verdict(
    verdict: Verdict,
    timeline: Timeline,
    *,
    last_seen: dt.datetime | None,
    now: dt.datetime,
    quiet_hours: float,
) -> Verdict:
    """``silent`` when nothing was heard from a site for ``quiet_hours``; else ``verdict``.

    Only while the campaign runs and the site still has targets to meet: a complete site,
    one without targets, and every site before the start or after the end keep
    ``verdict``. A site never heard from counts its silence from the start (00:00 UTC).
    """
    if verdict.status in ("complete", "no targets") or verdict.code in (
        "not-started",
        "late-ended",
    ):
        return verdict
    since = last_seen or dt.datetime.combine(timeline.start, dt.time(), dt.UTC)
    silent_for = (now - since).total_seconds() / 3600
    if silent_for < quiet_hours:
        return verdict
    hours = round(silent_for, 1)
    args: dict[str, StatusArg] = {
        "hours": hours,
        "quiet_hours": quiet_hours,
        "last_seen": last_seen.isoformat() if last_seen else None,
    }
    heard = (
        f"last seen {last_seen.strftime('%Y-%m-%d %H:%M')} UTC"
        if last_seen
        else f"never heard from since the start {timeline.start.isoformat()}"
    )
    return Verdict(
        "silent",
        f"Nothing heard for {hours:.0f} h (no instance, no edge heartbeat; silent after "
        f"{quiet_hours:g} h); {heard}.",
        args,
    )


def campaign_verdict(own: Verdict, sites: Sequence[tuple[str, Verdict]]) -> Verdict:
    """The campaign's verdict: its own, made ``at risk`` when a site is silent, late or at risk.

    ``own`` judges the campaign's figures (its own projection can make it late);
    ``sites`` are ``(site id, verdict)`` worst first.
    """
    if own.code != "on-track":
        return own
    troubled = [(site, v) for site, v in sites if v.status in ("silent", "late", "at risk")]
    if not troubled:
        return own
    named = ", ".join(f"{site} ({v.status})" for site, v in troubled)
    return Verdict(
        "at-risk-sites",
        f"On track by its own figures ({own.reason[:1].lower()}{own.reason[1:-1]}), but "
        f"{len(troubled)} site{'s are' if len(troubled) > 1 else ' is'} not: {named}.",
        {
            **own.args,
            "sites": ", ".join(site for site, _ in troubled),
            "count": len(troubled),
        },
    )


def _rate_and_projection(
    by_day: dict[dt.date, float], timeline: Timeline
) -> tuple[float | None, dt.date | None]:
    if not by_day:
        return None, None
    days = sorted(by_day)
    now = by_day[days[-1]]
    before_index = len(days) - 1 - RATE_WINDOW_DAYS
    before = by_day[days[before_index]] if before_index >= 0 else 0.0
    window = min(RATE_WINDOW_DAYS, len(days))
    rate = (now - before) / window
    if now >= _DONE or rate <= 0:
        return rate, None
    remaining_days = (1.0 - now) / rate
    if remaining_days > 3650 * 10:
        return rate, None
    return rate, timeline.today + dt.timedelta(days=int(remaining_days + 0.999999))


def studies_in_window(
    site_keys: Iterable[tuple[str, str, str]], daily: Daily, today: dt.date
) -> int:
    since = today - dt.timedelta(days=RATE_WINDOW_DAYS - 1)
    return sum(
        counts[0]
        for key in site_keys
        for day, counts in daily[key].items()
        if since <= day <= today
    )


def plan_figures(
    rows: Sequence[TargetProgress], series: Sequence[dict[dt.date, int]], timeline: Timeline
) -> tuple[dict[str, Any], Verdict, dict[dt.date, float]]:
    """Progress against the plan (the fields sites and the campaign share), its verdict, and
    progress by day.

    The verdict is :func:`progress_verdict`'s: the caller applies :func:`silence_verdict`
    (sites) or :func:`campaign_verdict` (the campaign) on top, then adds its fields.
    """
    progress = sum(r.fraction for r in rows) / len(rows) if rows else None
    by_day = _progress_by_day(rows, series, timeline)
    rate, projected = _rate_and_projection(by_day, timeline)
    expected = timeline.expected(timeline.today)
    figures = {
        "progress": None if progress is None else round(progress, 6),
        "expected_progress": round(expected, 6),
        "rate_7d": None if rate is None else round(rate, 6),
        "projected_completion": projected,
        "completed": progress is not None and progress >= _DONE,
    }
    return figures, progress_verdict(progress, expected, rate, projected, timeline), by_day


def ratio(part: int, whole: int) -> float:
    """``part / whole`` to six places; 0 for an empty whole."""
    return round(part / whole, 6) if whole else 0.0
