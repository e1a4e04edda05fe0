"""The KPIs of a site or the campaign from its daily counts: progress, plan, rate, status.

**Progress** of a site is the mean, over its targets, of ``min(1, collected / target)``
(a target counts studies, or instances where it says ``instances``), so a target met
twice over cannot hide another that is behind. The campaign's progress is the mean
over all sites' targets. **The plan** is linear: by day *d* of an *N*-day campaign,
*d / N* of every target. The **7-day rate** is the progress gained over the last seven
days, per day; the **projected completion** extrapolates it.

**Status** (:data:`~medai.collection.campaign.report.STATUS_RULE`):

- ``complete``: every target is met.
- ``late``: progress is below 70 % of the plan for today, or the campaign has ended
  with targets unmet.
- ``at risk``: progress is 70-90 % of the plan, or at least 90 % but the 7-day rate
  projects completion after the last day (or no progress at all in 7 days).
- ``on track``: progress is at least 90 % of the plan and the 7-day rate finishes in
  time (or the targets are already met).
- ``no targets``: the site has none.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from medai.collection.campaign.definition import CampaignDefinition, Target
from medai.collection.campaign.report import Status, TargetProgress

__all__ = [
    "LATE_SHARE",
    "ON_TRACK_SHARE",
    "RATE_WINDOW_DAYS",
    "Daily",
    "Findings",
    "Timeline",
    "plan_figures",
    "ratio",
    "studies_in_window",
    "target_series",
]

ON_TRACK_SHARE = 0.9
LATE_SHARE = 0.7
RATE_WINDOW_DAYS = 7

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


def _status(
    progress: float | None,
    expected: float,
    projected: dt.date | None,
    timeline: Timeline,
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
    if now >= 1.0 - 1e-9 or rate <= 0:
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


def ratio(part: int, whole: int) -> float:
    """``part / whole`` to six places; 0 for an empty whole."""
    return round(part / whole, 6) if whole else 0.0
