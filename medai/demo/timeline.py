"""The demo's simulated campaign timeline: a start date that makes today day N, and past arrivals.

A real campaign reaches day 60 after 60 days of pushes. The demo cannot wait, so it moves
the campaign's start date back and replays the earlier days' arrivals through the real
ingest pipeline with a simulated clock: each replayed instance is de-identified, stored
and catalogued exactly as a push would be, only dated on its simulated day (catalog rows,
ingest events and progress counters). Audit records keep the real time, since the replay
is a real action of today. Today's share of each site then arrives for real, over C-STORE
or as a folder, so the burn-up shows a campaign in progress rather than one jump today.

Sites keep different paces so the progress view has something to show: ``steady`` sites
send their past studies evenly over the days so far; a ``stalled`` site sent during the
first half only and then went quiet.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from medai.collection.outcomes import Offer, OutcomeCounts
from medai.collection.pipeline import IngestPipeline
from medai.dicom.synth import SynthResult, SynthStudy

__all__ = ["REPLAY_SOURCE", "SitePlan", "plan_site", "plans_by_site", "replay", "start_for_day"]

REPLAY_SOURCE = "demo-replay"  # the Offer source of replayed arrivals, visible in the catalog
Pace = Literal["steady", "stalled"]


def start_for_day(today: dt.date, day: int) -> dt.date:
    """The start date that makes ``today`` day ``day`` (day 1 is the start date)."""
    return today - dt.timedelta(days=day - 1)


@dataclass(frozen=True)
class SitePlan:
    """When each of a site's studies arrives: on a past simulated day, or today for real."""

    site: str
    past: dict[int, list[SynthStudy]]  # simulated day (1 = start) -> studies
    today: list[SynthStudy]

    @property
    def past_studies(self) -> int:
        return sum(len(studies) for studies in self.past.values())


def plan_site(
    site: str,
    studies: Sequence[SynthStudy],
    *,
    day: int,
    pace: Pace,
    today_fraction: float = 0.25,
) -> SitePlan:
    """Spread ``studies`` of ``site`` over the days before ``day``, keeping a share for today.

    The plan is deterministic: studies keep their generated order.
    """
    keep = max(1, round(len(studies) * today_fraction)) if studies else 0
    past, now = list(studies[: len(studies) - keep]), list(studies[len(studies) - keep :])
    span = max(1, day - 1) if pace == "steady" else max(1, (day - 1) // 2)
    days: dict[int, list[SynthStudy]] = defaultdict(list)
    for index, study in enumerate(past):
        days[1 + index * span // max(1, len(past))].append(study)
    return SitePlan(site, dict(days), now)


def plans_by_site(synth: SynthResult, *, day: int, paces: dict[str, Pace]) -> dict[str, SitePlan]:
    """One :class:`SitePlan` per site of ``synth`` (``steady`` unless ``paces`` says)."""
    by_site: dict[str, list[SynthStudy]] = defaultdict(list)
    for record in synth.study_records:
        by_site[record.site].append(record)
    return {
        site: plan_site(site, records, day=day, pace=paces.get(site, "steady"))
        for site, records in by_site.items()
    }


def replay(
    pipeline: IngestPipeline,
    plans: Sequence[SitePlan],
    start: dt.date,
    *,
    progress: Callable[[int], None] | None = None,
) -> OutcomeCounts:
    """Ingest every past arrival of ``plans`` on its simulated day; return the outcomes.

    ``progress`` is called with the number of instances after each day's batch.
    """
    counts = OutcomeCounts()
    real_clock = pipeline.clock
    by_day: dict[int, list[tuple[str, SynthStudy]]] = defaultdict(list)
    for plan in plans:
        for number, studies in plan.past.items():
            by_day[number].extend((plan.site, study) for study in studies)
    try:
        for number in sorted(by_day):
            # Mid-morning of the simulated day, UTC.
            moment = dt.datetime.combine(
                start + dt.timedelta(days=number - 1), dt.time(10), tzinfo=dt.UTC
            )
            pipeline.clock = lambda moment=moment: moment  # type: ignore[misc]
            offers = [
                Offer(path.read_bytes(), site, REPLAY_SOURCE, original_name=path.name)
                for site, study in by_day[number]
                for path in study.files
            ]
            for outcome in pipeline.ingest_many(offers):
                counts.add(outcome)
            if progress is not None:
                progress(len(offers))
    finally:
        pipeline.clock = real_clock
    return counts
