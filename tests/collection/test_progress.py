"""Campaign KPIs on a hand-built timeline: silent, late, at risk, on track and finished sites."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import (
    LabelCount,
    LabelImport,
    LabelRow,
    QuarantineEntry,
    Study,
    StudyLabel,
)
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import STATUS_RULE, CampaignProgress
from medai.collection.campaign.setup import init_campaign
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import generate
from tests.collection.timeline_data import add_heartbeat, add_studies, arrival_time
from tests.utils.campaign import init_example_campaign

REPO = Path(__file__).resolve().parents[2]
START = dt.date(2026, 1, 1)  # day 1; the campaign's last day is 2026-03-31
TODAY = START + dt.timedelta(days=44)  # day 45 of 90: the plan expects 50 %


def _site(site_id: str, *targets: dict[str, object]) -> dict[str, object]:
    return {
        "id": site_id,
        "name": site_id.title(),
        "ae_titles": [site_id.upper().replace("-", "_")],
        "targets": list(targets),
    }


DEFINITION = CampaignDefinition.model_validate(
    {
        "name": "KPI timeline",
        "start_date": START,
        "length_days": 90,
        "sites": [
            # 1 study a day since day 1: 45/80 done, finishing well before the end.
            _site("steady", {"modality": "DX", "body_part": "CHEST", "studies": 80}),
            # 20 studies in the first ten days, then nothing heard: silent.
            _site("late", {"modality": "DX", "studies": 90}),
            # 30 on day 2, then 2 a day in the last week: 49 % against a plan of 50 %, but
            # projected on day 68 of 90: at risk.
            _site("behind", {"modality": "DX", "studies": 90}),
            # Ahead of the plan (56 %) but nothing for weeks while its edge still reports:
            # no projection, late.
            _site("stalled", {"modality": "DX", "studies": 90}),
            # 1 a day: 45 % of its 100, projected on day 100 of 90: late.
            _site("slow", {"modality": "DX", "studies": 100}),
            # Targets met: 100 DX studies and 5 labelled nodules.
            _site(
                "finished",
                {"modality": "DX", "studies": 90},
                {"finding": "nodule", "studies": 5},
            ),
            _site("idle"),
        ],
    }
)


@pytest.fixture
def timeline(settings: Settings) -> Settings:
    init_campaign(DEFINITION, settings)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine).begin() as session:
        add_studies(session, "steady", START, dict.fromkeys(range(1, 46), 1))
        add_studies(session, "late", START, dict.fromkeys(range(1, 11), 2))
        add_studies(session, "behind", START, {2: 30} | dict.fromkeys(range(39, 46), 2))
        add_studies(session, "stalled", START, {3: 50})
        add_studies(session, "slow", START, dict.fromkeys(range(1, 46), 1))
        add_studies(session, "finished", START, {20: 60, 40: 40})
        add_heartbeat(session, "stalled", arrival_time(START, 45), outbox_depth=0)
        sheet = LabelImport(site_id="finished", sheet_sha256="0" * 64, rows=6, actor="test")
        session.add(sheet)
        session.flush()
        labelled = session.query(Study.id).filter(Study.site_id == "finished").limit(6).all()
        for number, (study_id,) in enumerate(labelled):
            row = LabelRow(
                import_id=sheet.id,
                site_id="finished",
                row_number=number + 2,
                ref_kind="study_uid",
                ref=f"ref{number}",
                findings={"nodule": int(number < 5)},
                study_id=study_id,
                status="matched",
            )
            session.add(row)
            session.flush()
            session.add(
                StudyLabel(
                    study_id=study_id,
                    site_id="finished",
                    finding="nodule",
                    value=int(number < 5),
                    label_row_id=row.id,
                )
            )
        # What label import keeps beside the labels (the six studies arrived on day 20).
        day_20 = START + dt.timedelta(days=19)
        for finding, labelled, positives in (("nodule", 6, 5), ("", 6, 0)):
            session.add(
                LabelCount(
                    site_id="finished",
                    day=day_20,
                    modality="DX",
                    body_part="CHEST",
                    finding=finding,
                    labelled=labelled,
                    positives=positives,
                )
            )
        for number, reason in enumerate(["not-dicom", "not-dicom", "burned-in-annotation"]):
            session.add(
                QuarantineEntry(
                    raw_sha256=f"{number:064d}",
                    site_id="late",
                    source="folder",
                    reason_code=reason,
                    reason="test",
                    relative_path=f"late/{number}",
                    byte_size=10,
                )
            )
    engine.dispose()
    return settings


def _report(settings: Settings, today: dt.date) -> CampaignProgress:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        report = compute_progress(session, today=today)
    engine.dispose()
    return report


def test_status_rules_on_a_hand_built_timeline(timeline: Settings) -> None:
    report = _report(timeline, TODAY)
    sites = {s.site: s for s in report.sites}
    assert report.day == 45 and report.days_left == 45
    assert report.expected_progress == pytest.approx(0.5)
    assert {name: s.status_code for name, s in sites.items()} == {
        "steady": "on-track",
        "late": "silent",
        "behind": "at-risk-behind",
        "stalled": "late-stalled",
        "slow": "late-projected",
        "finished": "complete",
        "idle": "no-targets",
    }
    # Silent sites first, then late, at risk, on track, complete, no targets.
    assert [s.site for s in report.sites] == [
        "late",
        "slow",
        "stalled",
        "behind",
        "steady",
        "finished",
        "idle",
    ]
    assert report.silent_sites == ["late"] and report.late_sites == ["slow", "stalled"]
    # On track by its own figures, but never better than its sites warrant.
    assert report.status_code == "at-risk-sites" and report.status == "at risk"
    assert report.status_args["sites"] == "late, slow, stalled, behind"
    assert report.status_reason.endswith(
        "but 4 sites are not: late (silent), slow (late), stalled (late), behind (at risk)."
    )

    behind = sites["behind"]
    assert behind.progress == pytest.approx(44 / 90, rel=1e-5)
    assert behind.projected_completion == START + dt.timedelta(days=67)
    assert behind.status_reason == (
        "49% against a plan of 50%, projected 2026-03-09, before the end 2026-03-31."
    )
    assert behind.status_args == {
        "progress": 0.4889,
        "expected": 0.5,
        "end": "2026-03-31",
        "projected": "2026-03-09",
    }
    assert sites["slow"].status_reason == (
        "45% against a plan of 50%; projected 2026-04-10, after the end 2026-03-31."
    )
    assert sites["stalled"].edge is not None and sites["stalled"].edge.outbox_depth == 0
    assert sites["stalled"].last_seen == arrival_time(START, 45)
    assert "no projection" in sites["stalled"].status_reason
    assert sites["late"].last_seen == arrival_time(START, 10)
    assert sites["late"].status_args["hours"] == 35 * 24 + 12.0

    steady = sites["steady"]
    assert steady.progress == pytest.approx(45 / 80)
    assert steady.rate_7d == pytest.approx(1 / 80, rel=1e-4)
    assert steady.projected_completion == TODAY + dt.timedelta(days=35)
    assert steady.studies == 45 and steady.instances == 90 and steady.studies_7d == 7

    stalled = sites["stalled"]
    assert stalled.progress == pytest.approx(50 / 90, rel=1e-5)
    assert stalled.rate_7d == 0 and stalled.projected_completion is None

    finished = sites["finished"]
    assert finished.completed and finished.progress == 1.0
    assert [t.collected for t in finished.targets] == [100, 5]
    assert finished.labelled_studies == 6
    assert finished.label_coverage == pytest.approx(6 / 100, abs=1e-6)

    late = sites["late"]
    assert late.quarantined == 3
    assert late.quarantine_reasons == {"burned-in-annotation": 1, "not-dicom": 2}
    assert late.rejection_rate == pytest.approx(3 / (40 + 3), abs=1e-6)
    assert late.last_received == START + dt.timedelta(days=9)

    assert report.studies == 45 + 20 + 44 + 50 + 45 + 100
    assert report.instances == 2 * report.studies
    assert report.quarantine_reasons == {"burned-in-annotation": 1, "not-dicom": 2}


def test_burnup_has_every_day_with_actuals_up_to_today(timeline: Settings) -> None:
    report = _report(timeline, TODAY)
    assert len(report.burnup) == 90
    assert report.burnup[0].day == START and report.burnup[-1].day == dt.date(2026, 3, 31)
    assert report.burnup[-1].planned == 1.0
    actual = [p.actual for p in report.burnup]
    assert all(a is not None for a in actual[:45]) and all(a is None for a in actual[45:])
    observed = [a for a in actual if a is not None]
    assert observed == sorted(observed)  # cumulative: never goes down
    assert observed[-1] == report.progress


def test_after_the_end_unmet_targets_are_late_and_before_the_start_on_track(
    timeline: Settings,
) -> None:
    after = _report(timeline, dt.date(2026, 4, 15))
    statuses = {s.site: s.status for s in after.sites}
    assert statuses["steady"] == "late" and statuses["finished"] == "complete"
    # After the end nobody is silent: the campaign ended, not the link.
    assert statuses["late"] == "late" and not after.silent_sites
    assert {s.site: s.status_code for s in after.sites}["steady"] == "late-ended"
    assert after.days_left == 0 and after.day == 90
    before = _report(timeline, dt.date(2025, 12, 1))
    assert before.day == 0 and before.expected_progress == 0
    assert {s.site: s.status for s in before.sites}["steady"] == "on track"
    assert before.status_code == "not-started" and not before.silent_sites


def test_progress_follows_real_ingest(settings: Settings, tmp_path: Path) -> None:
    init_example_campaign(settings)
    synth = generate(tmp_path / "in", studies=6, seed=5, image_size=48, ct_slices=2)
    pipeline = IngestPipeline.from_settings(settings)
    pipeline.ingest_many(
        [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    )
    report = _report(settings, dt.date.today())
    assert report.studies == synth.studies and report.instances == synth.instances
    by_site = {s.site: s for s in report.sites}
    for record in synth.study_records:
        assert by_site[record.site].studies >= 1
    assert sum(s.studies_7d for s in report.sites) == synth.studies


def _medai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medai.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_status_and_export_commands(timeline: Settings) -> None:
    status = _medai("campaign", "status", "--today", TODAY.isoformat(), "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["studies"] == 304 and document["instances"] == 608
    assert document["silent_sites"] == ["late"] and document["late_sites"] == ["slow", "stalled"]
    assert document["schema_version"] == "1.1" and "generated_at" in document
    assert document["status_rule"] == STATUS_RULE
    assert document["sites"][0]["status_code"] == "silent"
    assert document["sites"][0]["last_seen"].startswith("2026-01-10T12:00:00")

    table = _medai("campaign", "status", "--today", TODAY.isoformat())
    assert table.returncode == 0
    assert "Silent: late" in table.stdout and "Late: slow, stalled" in table.stdout
    words = " ".join(table.stdout.split())
    assert "behind: at risk — 49% against a plan of 50%, projected 2026-03-09" in words
    help_text = " ".join(_medai("campaign", "status", "--help").stdout.split())
    assert "MEDAI_SITE_QUIET_HOURS" in help_text and "late: the 7-day rate projects" in help_text

    exported = _medai("campaign", "export", "--format", "csv", "--today", TODAY.isoformat())
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["site"] for r in rows][-1] == "*"
    by_site = {r["site"]: r for r in rows}
    assert by_site["behind"]["status"] == "at risk"
    assert by_site["behind"]["status_code"] == "at-risk-behind"
    assert by_site["stalled"]["outbox_depth"] == "0" and by_site["behind"]["outbox_depth"] == ""
    assert by_site["late"]["last_seen"].startswith("2026-01-10T12:00:00")

    bad = _medai("campaign", "export", "--format", "xml")
    assert bad.returncode == 2 and "--format json" in bad.stderr
    bad_day = _medai("campaign", "status", "--today", "yesterday")
    assert bad_day.returncode == 2 and "YYYY-MM-DD" in bad_day.stderr


def test_the_committed_json_schema_is_the_exported_one() -> None:
    committed = json.loads((REPO / "collection" / "progress.schema.json").read_text())
    assert committed == CampaignProgress.model_json_schema(), (
        "the export's fields changed: regenerate collection/progress.schema.json with "
        "`medai campaign export --schema` and bump SCHEMA_VERSION if a field was renamed"
    )


def test_label_targets_and_coverage_follow_imported_sheets(
    settings: Settings, tmp_path: Path
) -> None:
    """Real ingest and real label import: the counters agree with the label rows."""
    from sqlalchemy import func, select

    from medai.collection.labels import import_label_sheet

    init_example_campaign(settings)
    synth = generate(tmp_path / "in", studies=9, seed=8, image_size=32, ct_slices=2)
    IngestPipeline.from_settings(settings).ingest_many(
        [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    )
    for site, sheet in synth.label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="test")
    report = _report(settings, dt.date.today())
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        labelled = dict(
            session.execute(
                select(StudyLabel.site_id, func.count(func.distinct(StudyLabel.study_id))).group_by(
                    StudyLabel.site_id
                )
            ).all()
        )
        positives = dict(
            session.execute(
                select(StudyLabel.site_id + ":" + StudyLabel.finding, func.count())
                .where(StudyLabel.value == 1)
                .group_by(StudyLabel.site_id, StudyLabel.finding)
            ).all()
        )
    engine.dispose()
    assert sum(labelled.values()) > 0
    for site in report.sites:
        assert site.labelled_studies == labelled.get(site.site, 0)
        for target in site.targets:
            if target.finding:
                assert target.collected == positives.get(f"{site.site}:{target.finding}", 0)
    planted = {
        f"{r.site}:{finding}"
        for r in synth.study_records
        for finding in ("nodule", "effusion", "cardiomegaly")
        if getattr(r, finding) and r.modality in ("CR", "DX")
    }
    assert {k for k, v in positives.items() if v} <= planted
