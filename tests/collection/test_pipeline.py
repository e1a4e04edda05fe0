"""The ingest pipeline on both databases: outcomes, no PHI at rest, dedupe, quarantine, crashes."""

from __future__ import annotations

import io
import json
import logging
import stat
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, text

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import (
    Base,
    IngestEvent,
    Instance,
    Patient,
    QuarantineEntry,
    Study,
)
from medai.collection.accounting import collect_orphans, verify_collection
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.errors import UnknownSite
from medai.store import ObjectStore
from tests.utils.campaign import bad_inputs, init_example_campaign


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, studies=6, seed=7, sites=("site-a", "site-b"), image_size=64, ct_slices=3)


def _site_of(path: Path, synth_root: Path) -> str:
    return path.relative_to(synth_root).parts[0]


def _catalog_text(settings: Settings) -> str:
    """Every value of every catalog table, as one string to search for PHI."""
    engine = create_engine_for(settings.resolved_database_url)
    chunks: list[str] = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                chunks.append(repr(tuple(row)))
    return "\n".join(chunks)


def test_every_instance_is_stored_deidentified_and_catalogued(
    campaign: Settings, synth: SynthResult, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pipeline = IngestPipeline.from_settings(campaign)
    root = synth.files[0].parents[4]
    outcomes = [
        pipeline.ingest(path.read_bytes(), _site_of(path, root), "folder") for path in synth.files
    ]
    assert {o.kind for o in outcomes} == {"stored"}, [o for o in outcomes if o.kind != "stored"]
    assert len({o.sop_instance_uid for o in outcomes}) == len(synth.files)
    assert all(o.sop_instance_uid and o.sop_instance_uid.startswith("2.25.") for o in outcomes)

    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(synth.files)
        assert session.scalar(select(func.count()).select_from(Study)) == synth.studies
        assert session.scalar(select(func.count()).select_from(Patient)) == synth.patients
        keys = list(session.scalars(select(Instance.store_key)))
        assert verify_audit_chain(session).ok

    # No PHI at rest: not in the stored bytes, the catalog or the logs.
    store = ObjectStore(campaign.resolved_store_dir)
    stored_bytes = b"\n".join(store.read(key) for key in keys)
    catalog = _catalog_text(campaign)
    logs = "\n".join(record.getMessage() for record in caplog.records)
    phi = sorted(synth.phi_values)
    assert len(phi) > 20
    for value in phi:
        assert value.encode() not in stored_bytes, f"PHI {value!r} in the store"
        assert value not in catalog, f"PHI {value!r} in the catalog"
        assert value not in logs, f"PHI {value!r} in the logs"

    # What is stored is valid DICOM with the de-identification marks.
    ds = pydicom.dcmread(io.BytesIO(store.read(keys[0])))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert str(ds.SOPInstanceUID).startswith("2.25.")


def test_resending_from_any_site_is_a_duplicate(campaign: Settings, synth: SynthResult) -> None:
    pipeline = IngestPipeline.from_settings(campaign)
    data = synth.files[0].read_bytes()
    first = pipeline.ingest(data, "site-a", "folder")
    again = pipeline.ingest(data, "site-a", "folder")
    other_site = pipeline.ingest(data, "site-c", "c-store")
    assert first.kind == "stored"
    assert again.kind == other_site.kind == "duplicate"
    assert first.sop_instance_uid == again.sop_instance_uid == other_site.sop_instance_uid
    # A second pipeline (another process, same key) maps the instance identically.
    assert IngestPipeline.from_settings(campaign).ingest(data, "site-b", "folder").kind == (
        "duplicate"
    )
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.events == {"stored": 1, "duplicate": 3}


def test_bad_inputs_are_quarantined_once_with_reasons(
    campaign: Settings, synth: SynthResult
) -> None:
    pipeline = IngestPipeline.from_settings(campaign)
    bad = bad_inputs(synth.files[0].read_bytes())
    for expected, data in bad.items():
        outcome = pipeline.ingest(data, "site-a", "folder", original_name=f"in/{expected}.dcm")
        assert outcome.kind == "quarantined", (expected, outcome)
        assert outcome.reason_code == expected, outcome
        assert outcome.reason
        # Offering the same bad file again keeps one quarantine entry.
        assert pipeline.ingest(data, "site-a", "folder").reason_code == expected

    root = campaign.resolved_quarantine_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        entries = list(session.scalars(select(QuarantineEntry)))
        assert sorted(e.reason_code for e in entries) == sorted(bad)
        for entry in entries:
            raw = (root / entry.relative_path).read_bytes()
            assert raw == bad[entry.reason_code], "the raw bytes are kept exactly"
        events = session.scalar(
            select(func.count())
            .select_from(IngestEvent)
            .where(IngestEvent.outcome == "quarantined")
        )
        assert events == 2 * len(bad)
    sidecars = [json.loads(p.read_text()) for p in root.rglob("*.json")]
    assert sorted(s["reason_code"] for s in sidecars) == sorted(bad)
    assert verify_collection(campaign).ok


def test_unknown_site_is_refused_before_anything_is_recorded(
    campaign: Settings, synth: SynthResult
) -> None:
    pipeline = IngestPipeline.from_settings(campaign)
    with pytest.raises(UnknownSite, match="site-a"):
        pipeline.ingest(synth.files[0].read_bytes(), "nowhere", "folder")
    assert verify_collection(campaign).inputs == 0


def test_crash_between_store_and_commit_leaves_only_an_orphan(
    campaign: Settings, synth: SynthResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = IngestPipeline.from_settings(campaign)
    data = synth.files[1].read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("power cut after the store write")

    monkeypatch.setattr(pipeline.writer, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.ingest(data, "site-a", "folder")
    report = verify_collection(campaign)
    assert report.ok and report.instances == 0
    assert len(report.orphan_files) == 1  # a file without a row, never the reverse

    monkeypatch.undo()
    assert pipeline.ingest(data, "site-a", "folder").kind == "stored"
    report = verify_collection(campaign)
    assert report.ok and report.instances == 1 and report.orphan_files == []

    # An orphan that stays unreferenced is collected (once old enough).
    store = ObjectStore(campaign.resolved_store_dir)
    key = store.put(b"left behind by a crash")
    report = verify_collection(campaign)
    assert report.orphan_files == [key]
    assert collect_orphans(report, campaign, min_age_seconds=3600) == 0
    assert collect_orphans(report, campaign, min_age_seconds=0) == 1
    assert not store.exists(key)


def test_verify_detects_a_missing_or_corrupt_store_file(
    campaign: Settings, synth: SynthResult
) -> None:
    pipeline = IngestPipeline.from_settings(campaign)
    for path in synth.files[:2]:
        assert pipeline.ingest(path.read_bytes(), "site-a", "folder").kind == "stored"
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        first, second = session.scalars(select(Instance.store_key).order_by(Instance.id))
    store = ObjectStore(campaign.resolved_store_dir)
    store.path(first).chmod(0o644)
    store.path(first).write_bytes(b"tampered")
    store.delete(second)
    report = verify_collection(campaign)
    assert report.corrupt_files == [first]
    assert report.missing_files == [second]
    assert not report.ok


def test_audit_verify_detects_an_edited_record(campaign: Settings, synth: SynthResult) -> None:
    pipeline = IngestPipeline.from_settings(campaign)
    for path in synth.files[:3]:
        pipeline.ingest(path.read_bytes(), "site-a", "folder")
    engine = create_engine_for(campaign.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE audit_log SET actor = 'someone-else' "
                "WHERE seq = (SELECT MAX(seq) FROM audit_log)"
            )
        )
    with session_factory(engine)() as session:
        report = verify_audit_chain(session)
    assert not report.ok and report.first_bad_seq is not None


def test_quarantine_retention_purges_files_but_keeps_the_accounting(
    campaign: Settings, synth: SynthResult
) -> None:
    import datetime as dt

    from medai.collection.retention import purge_expired, summarize_quarantine

    pipeline = IngestPipeline.from_settings(campaign)
    assert pipeline.ingest(b"not an image at all", "site-b", "folder").kind == "quarantined"
    assert purge_expired(campaign) == 0  # nothing is older than the retention yet
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=campaign.quarantine_retention_days + 1)
    assert purge_expired(campaign, now=later) == 1
    assert not any(campaign.resolved_quarantine_dir.rglob("*.raw"))
    summary = summarize_quarantine(campaign)
    assert summary.held == 0 and summary.released == 1
    assert summary.by_site_and_reason == {("site-b", "not-dicom"): 1}
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.events == {"quarantined": 1}
