"""Studies complete after a quiet period; a late instance reopens them (both databases)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Study, utcnow
from medai.collection.pipeline import IngestPipeline
from medai.collection.receivers.study_completion import (
    ACTION,
    CompletionSweeper,
    complete_quiet_studies,
    sweep_interval,
)
from medai.config import Settings
from medai.dicom.synth import make_ct_slice
from tests.collection.test_cstore_faults import Listener, ct_files, storescu
from tests.utils.campaign import dataset_bytes, init_example_campaign

QUIET = 60.0


def _instance(study: str, index: int) -> pydicom.Dataset:
    ds = make_ct_slice(rows=32, columns=32, seed=index)
    ds.PatientID = f"QUIET-{study}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["quiet", study])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["quiet", study, "series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["quiet", study, str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture
def pipeline(settings: Settings) -> IngestPipeline:
    init_example_campaign(settings)
    return IngestPipeline.from_settings(settings)


def _uid(pipeline: IngestPipeline, study: str) -> str:
    """The pseudonymized StudyInstanceUID the catalog holds for a test study."""
    original = str(_instance(study, 0).StudyInstanceUID)
    return pipeline.deidentifier.pseudonymizer.uid(original)


def _studies(pipeline: IngestPipeline) -> dict[str, Study]:
    with session_factory(pipeline.engine)() as session:
        return {study.study_uid: study for study in session.scalars(select(Study))}


def _completion_records(pipeline: IngestPipeline) -> list[AuditRecord]:
    with session_factory(pipeline.engine)() as session:
        return list(
            session.scalars(
                select(AuditRecord).where(AuditRecord.action == ACTION).order_by(AuditRecord.seq)
            )
        )


def _ingest(pipeline: IngestPipeline, study: str, index: int) -> str:
    return pipeline.ingest(dataset_bytes(_instance(study, index)), "site-a", "test").kind


def test_quiet_studies_complete_once_and_a_late_instance_reopens(
    pipeline: IngestPipeline,
) -> None:
    for study, index in (("A", 0), ("A", 1), ("B", 0)):
        assert _ingest(pipeline, study, index) == "stored"
    a, b = _uid(pipeline, "A"), _uid(pipeline, "B")
    received = utcnow()

    assert complete_quiet_studies(pipeline.engine, QUIET, now=received) == []
    assert _studies(pipeline)[a].completed_at is None

    later = received + dt.timedelta(seconds=QUIET + 1)
    done = complete_quiet_studies(pipeline.engine, QUIET, now=later)
    assert {(study.study_uid, study.site_id, study.instances) for study in done} == {
        (a, "site-a", 2),
        (b, "site-a", 1),
    }
    studies = _studies(pipeline)
    assert studies[a].completed_at == later and studies[b].completed_at == later
    records = _completion_records(pipeline)
    assert {(r.subject, r.details["site"], r.details["instances"]) for r in records} == {
        (a, "site-a", 2),
        (b, "site-a", 1),
    }
    # Idempotent: nothing new arrived, nothing completes again.
    assert complete_quiet_studies(pipeline.engine, QUIET, now=later + dt.timedelta(hours=1)) == []
    assert len(_completion_records(pipeline)) == 2

    # Re-sending a known instance is a duplicate and leaves the study complete ...
    assert _ingest(pipeline, "A", 0) == "duplicate"
    assert _studies(pipeline)[a].completed_at == later
    # ... but a new (late) instance reopens it and restarts its quiet period.
    assert _ingest(pipeline, "A", 2) == "stored"
    studies = _studies(pipeline)
    assert studies[a].completed_at is None
    assert studies[a].last_received_at is not None
    assert studies[a].last_received_at > received
    assert studies[b].completed_at == later

    late = studies[a].last_received_at
    assert complete_quiet_studies(pipeline.engine, QUIET, now=late) == []
    again = late + dt.timedelta(seconds=QUIET)
    done = complete_quiet_studies(pipeline.engine, QUIET, now=again)
    assert [(study.study_uid, study.instances) for study in done] == [(a, 3)]
    assert _studies(pipeline)[a].completed_at == again
    records = _completion_records(pipeline)
    assert [(r.subject, r.details["instances"]) for r in records if r.subject == a] == [
        (a, 2),
        (a, 3),
    ]
    with session_factory(pipeline.engine)() as session:
        assert verify_audit_chain(session).ok


def test_studies_from_before_the_quiet_clock_use_their_first_receipt(
    pipeline: IngestPipeline,
) -> None:
    assert _ingest(pipeline, "OLD", 0) == "stored"
    assert _ingest(pipeline, "RECENT", 0) == "stored"
    now = utcnow()
    with session_factory(pipeline.engine).begin() as session:
        # As catalogued before migration 0002: no last_received_at.
        session.execute(update(Study).values(last_received_at=None))
        session.execute(
            update(Study)
            .where(Study.study_uid == _uid(pipeline, "OLD"))
            .values(first_received_at=now - dt.timedelta(days=3))
        )
    done = complete_quiet_studies(pipeline.engine, QUIET, now=now)
    assert [study.study_uid for study in done] == [_uid(pipeline, "OLD")]


def test_the_sweeper_completes_in_the_background_and_at_stop(pipeline: IngestPipeline) -> None:
    assert sweep_interval(60) == 5.0 and sweep_interval(1) == 0.25
    seen: list[str] = []
    with CompletionSweeper(
        pipeline.engine, 0.3, on_completed=lambda done: seen.extend(s.study_uid for s in done)
    ) as sweeper:
        assert _ingest(pipeline, "A", 0) == "stored"
        deadline = time.monotonic() + 20
        while not seen:
            assert time.monotonic() < deadline, "the sweeper did not complete the study"
            time.sleep(0.05)
        assert seen == [_uid(pipeline, "A")]
        assert _ingest(pipeline, "B", 0) == "stored"
        time.sleep(0.3)  # B is quiet by the final sweep at stop, maybe not before
    assert sorted(seen) == sorted([_uid(pipeline, "A"), _uid(pipeline, "B")])
    assert sweeper.completed == 2
    assert len(_completion_records(pipeline)) == 2


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("storescu") is None and not os.environ.get("CI"),
    reason="dcmtk is not installed (apt-get install dcmtk)",
)
def test_the_listener_completes_studies_after_the_quiet_period(
    settings: Settings, tmp_path: Path
) -> None:
    init_example_campaign(settings)
    files = ct_files(tmp_path / "in", 4, studies=2)
    listener = Listener("--quiet-seconds", "1")
    try:
        code, output = storescu(listener.port, files)
        assert code == 0, output
        engine = create_engine_for(settings.resolved_database_url)
        try:
            deadline = time.monotonic() + 30
            while True:
                with session_factory(engine)() as session:
                    studies = session.scalars(select(Study)).all()
                    if len(studies) == 2 and all(s.completed_at for s in studies):
                        break
                assert time.monotonic() < deadline, "studies were not completed"
                time.sleep(0.2)
            for study in studies:
                assert study.completed_at is not None and study.last_received_at is not None
                quiet_for = study.completed_at - study.last_received_at
                assert quiet_for >= dt.timedelta(seconds=1)
        finally:
            engine.dispose()
    finally:
        output = listener.stop()
    assert listener.process.returncode == 0, output
    assert "2 studies completed" in output
