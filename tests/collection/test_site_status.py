"""Statuses a steward can act on: agreeing with the projection, silent sites, edge heartbeats.

The demo's case: site-c at 43 % against a plan of 67 %, projected 2026-12-19 for a campaign
ending 2027-01-04, is at risk (not late), and the campaign above it is not "on track".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import SiteHeartbeat
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import CampaignProgress, progress_csv_rows
from medai.collection.campaign.setup import init_campaign
from medai.config import Settings, get_settings
from tests.collection.timeline_data import add_heartbeat, add_studies, arrival_time

START = dt.date(2026, 6, 29)  # 190 days: the last day is 2027-01-04
TODAY = dt.date(2026, 11, 2)  # day 127: the plan expects 127/190 = 67 %
NOW = arrival_time(START, 127) + dt.timedelta(hours=6)  # 18:00 UTC on day 127


def _site(site_id: str, studies: int) -> dict[str, object]:
    return {
        "id": site_id,
        "name": site_id.title(),
        "ae_titles": [site_id.upper().replace("-", "_")],
        "targets": [{"modality": "DX", "studies": studies}],
    }


SITES = [
    _site("site-a", 150),  # one study a day: 85 %, ahead of the plan
    _site("site-b", 100),  # met its target on day 5
    _site("site-c", 200),  # 69 early, then 17 in the last week: 43 %, catching up
]
SITE_D = _site("site-d", 100)  # never sent anything, no edge


def _definition(sites: list[dict[str, object]]) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {"name": "Status rule", "start_date": START, "length_days": 190, "sites": sites}
    )


@pytest.fixture
def demo_case(settings: Settings) -> Iterator[Session]:
    """The demo's three sites: site-a ahead, site-b complete, site-c behind but catching up."""
    yield from _catalog(settings, _definition(SITES))


@pytest.fixture
def catalog(settings: Settings) -> Iterator[Session]:
    """The demo's three sites and site-d, which never sent anything."""
    yield from _catalog(settings, _definition([*SITES, SITE_D]))


def _catalog(settings: Settings, definition: CampaignDefinition) -> Iterator[Session]:
    init_campaign(definition, settings)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine).begin() as session:
        add_studies(session, "site-a", START, dict.fromkeys(range(1, 128), 1))
        add_studies(session, "site-b", START, {5: 100})
        last_week = dict(zip(range(121, 128), (3, 2, 3, 2, 3, 2, 2), strict=True))
        add_studies(session, "site-c", START, {10: 69} | last_week)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def _report(session: Session, **kwargs: object) -> CampaignProgress:
    session.expire_all()
    return compute_progress(session, today=TODAY, now=NOW, **kwargs)  # type: ignore[arg-type]


def test_behind_the_plan_but_projected_in_time_is_at_risk_not_late(demo_case: Session) -> None:
    report = _report(demo_case, quiet_hours=24)
    sites = {s.site: s for s in report.sites}
    site_c = sites["site-c"]
    assert site_c.progress == pytest.approx(86 / 200)
    assert site_c.expected_progress == pytest.approx(127 / 190, abs=1e-6)
    assert site_c.projected_completion == dt.date(2026, 12, 19)
    assert (site_c.status, site_c.status_code) == ("at risk", "at-risk-behind")
    assert site_c.status_reason == (
        "43% against a plan of 67%, projected 2026-12-19, before the end 2027-01-04."
    )
    assert site_c.status_args == {
        "progress": 0.43,
        "expected": 0.6684,
        "end": "2027-01-04",
        "projected": "2026-12-19",
    }
    assert sites["site-a"].status_code == "on-track"
    assert sites["site-a"].status_reason.startswith("85% against a plan of 67%; projected")
    assert sites["site-b"].status_code == "complete"
    # The campaign is ahead on its own figures but never better than its sites warrant.
    assert report.progress is not None and report.progress > report.expected_progress
    assert (report.status, report.status_code) == ("at risk", "at-risk-sites")
    assert report.status_args["sites"] == "site-c" and report.status_args["count"] == 1
    assert report.status_reason.startswith("On track by its own figures (76% against a plan")
    assert report.status_reason.endswith("but 1 site is not: site-c (at risk).")
    assert [s.site for s in report.sites] == ["site-c", "site-a", "site-b"]
    assert report.late_sites == [] and report.silent_sites == []


def test_a_site_without_arrivals_in_the_rate_window_is_late(catalog: Session) -> None:
    report = _report(catalog, quiet_hours=24 * 365)  # nobody silent here
    site_d = report.sites[0]
    assert (site_d.site, site_d.status_code) == ("site-d", "late-stalled")
    assert site_d.status_reason == (
        "0% against a plan of 67%; nothing toward the targets arrived in the last 7 days, "
        "so there is no projection."
    )
    assert site_d.status_args["days"] == 7
    # The campaign's own projection now ends after the last day: late, not just at risk.
    assert (report.status, report.status_code) == ("late", "late-projected")
    assert report.late_sites == ["site-d"]


def test_a_site_not_heard_from_for_the_quiet_time_is_silent_and_first(catalog: Session) -> None:
    report = _report(catalog, quiet_hours=24)
    site_d = report.sites[0]
    assert (site_d.site, site_d.status, site_d.status_code) == ("site-d", "silent", "silent")
    assert site_d.last_seen is None and site_d.edge is None
    assert report.silent_sites == ["site-d"] and report.status == "late"
    # Silence counts from the start for a site never heard from: 126 days and 18 hours.
    assert site_d.status_args == {"hours": 126 * 24 + 18.0, "quiet_hours": 24, "last_seen": None}
    assert site_d.status_reason == (
        "Nothing heard for 3042 h (no instance, no edge heartbeat; silent after 24 h); "
        "never heard from since the start 2026-06-29."
    )
    # site-c's last instance arrived six hours before NOW: within any quiet time above that.
    site_c = next(s for s in report.sites if s.site == "site-c")
    assert site_c.last_seen == arrival_time(START, 127) and site_c.status == "at risk"
    assert _report(catalog, quiet_hours=5).silent_sites == ["site-d", "site-c", "site-a"]
    # Complete sites are never silent: they have nothing left to send.
    assert "site-b" not in _report(catalog, quiet_hours=1).silent_sites


def test_an_edge_heartbeat_keeps_a_site_from_being_silent_and_shows_its_outbox(
    catalog: Session,
) -> None:
    beat = NOW - dt.timedelta(minutes=3)
    add_heartbeat(catalog, "site-d", beat, outbox_depth=42, oldest_unsent_seconds=5400.0)
    catalog.commit()
    report = _report(catalog, quiet_hours=24)
    site_d = next(s for s in report.sites if s.site == "site-d")
    assert site_d.status_code == "late-stalled" and report.silent_sites == []
    assert site_d.last_seen == beat
    assert site_d.edge is not None
    assert site_d.edge.outbox_depth == 42 and site_d.edge.oldest_unsent_seconds == 5400.0
    assert site_d.edge.version == "0.test" and site_d.edge.clock_skew_seconds == -1.5
    assert (site_d.edge.received_today, site_d.edge.forwarded_today) == (12, 5)
    document = report.model_dump(mode="json")
    edge = next(s for s in document["sites"] if s["site"] == "site-d")["edge"]
    assert edge["outbox_depth"] == 42 and edge["last_heartbeat"].startswith("2026-11-02T17:57")
    csv_row = next(r for r in progress_csv_rows(report) if r["site"] == "site-d")
    assert csv_row["outbox_depth"] == 42 and csv_row["oldest_unsent_seconds"] == 5400.0
    assert csv_row["status_code"] == "late-stalled"

    # A heartbeat older than the quiet time no longer counts as being heard from.
    catalog.execute(delete(SiteHeartbeat))
    add_heartbeat(catalog, "site-d", NOW - dt.timedelta(hours=30), outbox_depth=900)
    catalog.commit()
    stale = next(s for s in _report(catalog, quiet_hours=24).sites if s.site == "site-d")
    assert stale.status == "silent" and stale.edge is not None
    assert stale.status_args["hours"] == 30.0
    assert stale.status_reason.startswith("Nothing heard for 30 h")
    assert stale.status_reason.endswith("last seen 2026-11-01 12:00 UTC.")


def test_the_quiet_time_is_a_setting(catalog: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAI_SITE_QUIET_HOURS", str(24 * 365))
    get_settings.cache_clear()
    assert _report(catalog).silent_sites == []
    monkeypatch.setenv("MEDAI_SITE_QUIET_HOURS", "0.5")
    get_settings.cache_clear()
    assert _report(catalog).silent_sites == ["site-d", "site-c", "site-a"]
    get_settings.cache_clear()


def test_a_past_day_is_reported_as_of_its_end(catalog: Session) -> None:
    """Instances received after the reported day do not make a site heard from on it."""
    catalog.expire_all()
    report = compute_progress(catalog, today=dt.date(2026, 10, 1), quiet_hours=24)
    site_c = next(s for s in report.sites if s.site == "site-c")
    assert site_c.last_seen == arrival_time(START, 10)
    assert site_c.status == "silent"
    assert report.sites[0].site == "site-d"  # never heard from: the longest silent
