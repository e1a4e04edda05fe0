"""Campaign KPIs on a hand-built timeline: late, at risk, on track and finished sites."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import (
    LabelCount,
    LabelImport,
    LabelRow,
    Patient,
    ProgressCount,
    QuarantineEntry,
    Study,
    StudyLabel,
)
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import CampaignProgress
from medai.collection.campaign.setup import init_campaign
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import generate
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
            # 20 studies in the first ten days, then silence: 22 % against a plan of 50 %.
            _site("late", {"modality": "DX", "studies": 90}),
            # 40 in the first ten days, then silence: 44 % against 50 % (89 % of the plan).
            _site("behind", {"modality": "DX", "studies": 90}),
            # Ahead of the plan (56 %) but nothing for weeks: the rate cannot finish in time.
            _site("stalled", {"modality": "DX", "studies": 90}),
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


def _add_studies(session: Session, site: str, per_day: dict[int, int], key: list[int]) -> None:
    """Studies of one patient each, received on the given campaign days (1 = START)."""
    for day, count in per_day.items():
        when = dt.datetime.combine(START + dt.timedelta(days=day - 1), dt.time(12), dt.UTC)
        for _ in range(count):
            key[0] += 1
            patient = Patient(pseudonym=f"P{key[0]:016d}")
            session.add(patient)
            session.flush()
            session.add(
                Study(
                    study_uid=f"2.25.{key[0]}",
                    patient_id=patient.id,
                    site_id=site,
                    modality="DX",
                    body_part="CHEST",
                    first_received_at=when,
                )
            )
        session.execute(
            insert(ProgressCount).values(
                site_id=site,
                day=when.date(),
                modality="DX",
                body_part="CHEST",
                studies=count,
                instances=count * 2,
                bytes=count * 1000,
            )
        )


@pytest.fixture
def timeline(settings: Settings) -> Settings:
    init_campaign(DEFINITION, settings)
    engine = create_engine_for(settings.resolved_database_url)
    key = [0]
    with session_factory(engine).begin() as session:
        _add_studies(session, "steady", dict.fromkeys(range(1, 46), 1), key)
        _add_studies(session, "late", dict.fromkeys(range(1, 11), 2), key)
        _add_studies(session, "behind", dict.fromkeys(range(1, 11), 4), key)
        _add_studies(session, "stalled", {3: 50}, key)
        _add_studies(session, "finished", {20: 60, 40: 40}, key)
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
    assert {name: s.status for name, s in sites.items()} == {
        "steady": "on track",
        "late": "late",
        "behind": "at risk",
        "stalled": "at risk",
        "finished": "complete",
        "idle": "no targets",
    }
    # Late sites first, then at risk, on track, complete.
    assert [s.site for s in report.sites][:1] == ["late"]
    assert report.late_sites == ["late"]

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

    assert report.studies == 45 + 20 + 40 + 50 + 100
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
    assert after.days_left == 0 and after.day == 90
    before = _report(timeline, dt.date(2025, 12, 1))
    assert before.day == 0 and before.expected_progress == 0
    assert {s.site: s.status for s in before.sites}["steady"] == "on track"


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
    assert document["studies"] == 255 and document["instances"] == 510
    assert document["late_sites"] == ["late"]
    assert document["schema_version"] == "1" and "generated_at" in document

    table = _medai("campaign", "status", "--today", TODAY.isoformat())
    assert table.returncode == 0 and "Late: late" in table.stdout

    exported = _medai("campaign", "export", "--format", "csv", "--today", TODAY.isoformat())
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["site"] for r in rows][-1] == "*"
    assert {r["site"]: r["status"] for r in rows}["behind"] == "at risk"

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
