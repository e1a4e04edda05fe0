"""The demo's simulated timeline: start dates, site paces, and replays dated on their days."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import IngestEvent, Instance, ProgressCount
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.demo.timeline import REPLAY_SOURCE, plan_site, plans_by_site, replay, start_for_day
from medai.dicom.synth import generate
from tests.utils.campaign import init_example_campaign


def test_start_for_day_makes_today_that_day() -> None:
    today = dt.date(2026, 12, 2)
    assert start_for_day(today, 1) == today
    assert start_for_day(today, 60) == dt.date(2026, 10, 4)


def test_paces_spread_past_studies_and_keep_a_share_for_today(tmp_path: Path) -> None:
    synth = generate(tmp_path, studies=24, seed=3, image_size=16, ct_slices=0, sites=["s"])
    studies = synth.study_records
    steady = plan_site("s", studies, day=60, pace="steady")
    stalled = plan_site("s", studies, day=60, pace="stalled")
    for plan in (steady, stalled):
        assert len(plan.today) == 6  # a quarter
        assert plan.past_studies + len(plan.today) == len(studies)
        kept = [s for day in sorted(plan.past) for s in plan.past[day]] + plan.today
        assert kept == list(studies)  # every study once, in generated order
    assert min(steady.past) == 1 and max(steady.past) > 45
    assert max(stalled.past) <= 30  # went quiet after the first half


def test_replay_dates_rows_on_their_simulated_days(settings: Settings, tmp_path: Path) -> None:
    init_example_campaign(settings)
    synth = generate(tmp_path, studies=6, seed=4, image_size=32, ct_slices=0)
    plans = plans_by_site(synth, day=10, paces={})
    start = dt.date(2026, 10, 1)
    pipeline = IngestPipeline.from_settings(settings)
    real_clock = pipeline.clock
    counts = replay(pipeline, list(plans.values()), start)
    assert pipeline.clock is real_clock  # restored
    replayed = sum(len(s.files) for p in plans.values() for d in p.past.values() for s in d)
    assert counts.stored == replayed > 0
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        received = session.scalars(select(Instance.received_at)).all()
        sources = set(session.scalars(select(Instance.source)).all())
        days = set(session.scalars(select(ProgressCount.day)).all())
        events = session.scalar(select(func.count()).select_from(IngestEvent))
    engine.dispose()
    expected_days = {
        start + dt.timedelta(days=number - 1) for p in plans.values() for number in p.past
    }
    assert {at.date() for at in received} == expected_days == days
    assert sources == {REPLAY_SOURCE}
    assert events == replayed
    assert dt.datetime.now(dt.UTC).date() not in days
