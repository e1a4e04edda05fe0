"""The centre's side of the edge gateway, through the app (httpx TestClient), on both databases.

An ``edge`` key is bound to its site: it may STOW that site's instances (with
``Medai-Receipt-Day``), post heartbeats and read its receipts, and nothing else. The
centre stores what an edge de-identified as it is (never de-identifying it again), once,
and quarantines centrally whatever lacks the markers or still looks identified.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import stat
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import (
    AuditRecord,
    EdgeReceipt,
    IngestEvent,
    Instance,
    QuarantineEntry,
    SiteHeartbeat,
)
from medai.cli import app as cli_app
from medai.collection.accounting import verify_collection
from medai.collection.edge_receipts import receipt_hash
from medai.collection.pipeline import IngestPipeline
from medai.collection.prepare import PreparedInstance, prepare_or_reject
from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.errors import ApiKeyError
from medai.serving.keys import create_key
from medai.store import ObjectStore
from tests.serving.helpers import (
    FAILED,
    REFERENCED,
    TestClient,
    bearer,
    failure_reasons,
    multipart,
    new_key,
    sequence_uids,
)
from tests.utils.campaign import dataset_bytes

STOW = "/dicomweb/studies?site=site-a"
DAY = "2026-12-01"


def _edge_key(settings: Settings, site: str = "site-a", name: str | None = None) -> str:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        return create_key(
            engine, name=name or f"{site}-edge", role="edge", site_id=site, actor="test"
        ).key
    finally:
        engine.dispose()


def _post(
    client: TestClient, key: str, parts: list[bytes], url: str = STOW, day: str | None = DAY
) -> httpx.Response:
    body, content_type = multipart(parts)
    headers = bearer(key) | {"Content-Type": content_type}
    if day is not None:
        headers["Medai-Receipt-Day"] = day
    return client.post(url, content=body, headers=headers)


def _count(settings: Settings, model: type[Any]) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        count = session.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return count


@pytest.fixture
def edge_files(campaign: Settings, synth: SynthResult) -> list[bytes]:
    """The synthetic instances as site-a's edge forwards them: de-identified there with
    the campaign's rules and key (the edge runs the same pipeline step)."""
    pipeline = IngestPipeline.from_settings(campaign)
    try:
        prepared = [
            prepare_or_reject(
                path.read_bytes(),
                "site-a",
                pipeline.deidentifier,
                pipeline.max_instance_bytes,
                pipeline.identities,
            )
            for path in synth.files
        ]
    finally:
        pipeline.engine.dispose()
    assert all(isinstance(step, PreparedInstance) for step in prepared)
    return [step.data for step in prepared if isinstance(step, PreparedInstance)]


@pytest.fixture
def edge_key(campaign: Settings) -> str:
    return _edge_key(campaign)


def _sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


# -- keys -----------------------------------------------------------------------------


def test_edge_keys_are_bound_to_an_existing_site(campaign: Settings) -> None:
    engine = create_engine_for(campaign.resolved_database_url)
    try:
        with pytest.raises(ApiKeyError, match="--site"):
            create_key(engine, name="no-site", role="edge")
        with pytest.raises(ApiKeyError, match="unknown site 'site-z'"):
            create_key(engine, name="bad-site", role="edge", site_id="site-z")
        with pytest.raises(ApiKeyError, match="only edge keys"):
            create_key(engine, name="steward-site", role="steward", site_id="site-a")
        created = create_key(engine, name="site-b-edge", role="edge", site_id="site-b")
        assert created.info.site_id == "site-b"
    finally:
        engine.dispose()


def test_keys_create_edge_on_the_command_line(campaign: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli_app,
        ["keys", "create", "--role", "edge", "--site", "site-c", "--name", "c-gw", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert '"site": "site-c"' in result.stdout
    refused = runner.invoke(cli_app, ["keys", "create", "--role", "edge", "--name", "x-gw"])
    assert refused.exit_code != 0
    assert "--site" in refused.output


def test_an_edge_key_is_granted_nothing_else(
    client: TestClient, edge_key: str, campaign: Settings
) -> None:
    assert client.get("/v1/campaign/progress", headers=bearer(edge_key)).status_code == 403
    assert client.get("/v1/models", headers=bearer(edge_key)).status_code == 403
    steward = new_key(campaign, "steward")
    beat = client.post("/v1/edge/heartbeat", json=_beat(), headers=bearer(steward))
    assert beat.status_code == 403  # heartbeats come from edges only


# -- STOW with an edge key ----------------------------------------------------------------


def test_an_edge_key_for_another_site_is_refused_and_nothing_stored(
    campaign: Settings, client: TestClient, edge_files: list[bytes]
) -> None:
    forged = _edge_key(campaign, "site-b")  # a valid key, of another site's gateway
    response = _post(client, forged, edge_files)
    assert response.status_code == 403, response.text
    assert "site-b" in response.json()["detail"]
    for model in (Instance, IngestEvent, QuarantineEntry, EdgeReceipt):
        assert _count(campaign, model) == 0


@pytest.mark.parametrize(("day", "status"), [(None, 400), ("yesterday", 400), ("2026-13-01", 400)])
def test_the_receipt_day_is_required(
    campaign: Settings,
    client: TestClient,
    edge_key: str,
    edge_files: list[bytes],
    day: str | None,
    status: int,
) -> None:
    response = _post(client, edge_key, edge_files, day=day)
    assert response.status_code == status, response.text
    assert "Medai-Receipt-Day" in response.json()["detail"]
    assert _count(campaign, IngestEvent) == 0


def test_edge_instances_are_stored_as_sent_once_then_duplicates(
    campaign: Settings, client: TestClient, edge_key: str, edge_files: list[bytes]
) -> None:
    response = _post(client, edge_key, edge_files)
    assert response.status_code == 200, response.text
    assert FAILED not in response.json()
    sent_uids = [_sop_uid(data) for data in edge_files]
    assert [uid for _, uid in sequence_uids(response.json(), REFERENCED)] == sent_uids

    again = _post(client, edge_key, edge_files, day="2026-12-02")
    assert again.status_code == 200
    assert [uid for _, uid in sequence_uids(again.json(), REFERENCED)] == sent_uids

    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.store_key, Instance.source)
        )
        stored = {uid: (key, source) for uid, key, source in rows}
        receipts = session.execute(
            select(Instance.sop_instance_uid, EdgeReceipt.site_id, EdgeReceipt.receipt_day).join(
                EdgeReceipt, EdgeReceipt.instance_id == Instance.id
            )
        ).all()
        outcomes = dict(
            session.execute(
                select(IngestEvent.outcome, func.count()).group_by(IngestEvent.outcome)
            ).all()
        )
        audit_ok = verify_audit_chain(session).ok
        duplicate_details = list(
            session.scalars(
                select(AuditRecord.details).where(AuditRecord.action == "ingest.duplicate")
            )
        )
    engine.dispose()
    # Stored once each, byte for byte as the edge sent them: not de-identified again.
    store = ObjectStore(campaign.resolved_store_dir)
    assert set(stored) == set(sent_uids)
    for uid, data in zip(sent_uids, edge_files, strict=True):
        key, source = stored[uid]
        assert source == "edge"
        assert hashlib.sha256(store.read(key)).digest() == hashlib.sha256(data).digest()
    # One receipt per instance: the first day recorded (a re-send is the same instance).
    assert sorted(receipts) == sorted((uid, "site-a", dt.date(2026, 12, 1)) for uid in sent_uids)
    assert outcomes == {"stored": len(edge_files), "duplicate": len(edge_files)}
    assert audit_ok
    assert all(details["edge_receipt_day"] == "2026-12-02" for details in duplicate_details)
    report = verify_collection(campaign)
    assert report.ok, report.problems


def test_an_instance_without_markers_is_quarantined_centrally(
    campaign: Settings, client: TestClient, edge_key: str, synth: SynthResult
) -> None:
    raw = synth.files[0].read_bytes()  # never de-identified: identified, no markers
    response = _post(client, edge_key, [raw])
    assert response.status_code == 409, response.text
    assert REFERENCED not in response.json()
    assert len(failure_reasons(response.json())) == 1
    assert "(edge-not-deidentified)" in " ".join(response.headers.get_list("warning"))
    assert not [value for value in synth.phi_values if value in response.text]
    _assert_quarantined(campaign, raw, "edge-not-deidentified")


def _restore_name(ds: pydicom.Dataset) -> None:
    ds.PatientName = "Nguyen^Van^An"


def _name_in_descriptor(ds: pydicom.Dataset) -> None:
    ds.SeriesDescription = "PA Nguyen"


def _private_tag(ds: pydicom.Dataset) -> None:
    ds.private_block(0x0013, "HOSPITAL PACS", create=True).add_new(0x10, "LO", "Nguyen Van An")


@pytest.mark.parametrize("change", [_restore_name, _name_in_descriptor, _private_tag])
def test_an_identified_instance_is_quarantined_centrally(
    campaign: Settings,
    client: TestClient,
    edge_key: str,
    edge_files: list[bytes],
    change: Callable[[pydicom.Dataset], None],
) -> None:
    ds = pydicom.dcmread(io.BytesIO(edge_files[0]))
    change(ds)
    identified = dataset_bytes(ds)
    untouched = dataset_bytes(pydicom.dcmread(io.BytesIO(edge_files[1])))  # rewritten alike
    response = _post(client, edge_key, [identified, untouched])
    assert response.status_code == 202, response.text
    assert [uid for _, uid in sequence_uids(response.json(), REFERENCED)] == [_sop_uid(untouched)]
    assert "(edge-identified)" in " ".join(response.headers.get_list("warning"))
    assert "Nguyen" not in response.text + repr(response.headers.multi_items())
    _assert_quarantined(campaign, identified, "edge-identified")
    assert _count(campaign, Instance) == 1 and _count(campaign, EdgeReceipt) == 1


def _assert_quarantined(campaign: Settings, raw: bytes, reason: str) -> None:
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        entries = session.execute(
            select(
                QuarantineEntry.reason_code, QuarantineEntry.relative_path, QuarantineEntry.reason
            )
        ).all()
        held = set(session.scalars(select(Instance.sop_instance_uid)))
    engine.dispose()
    assert [(code) for code, _, _ in entries] == [reason]
    _, relative, words = entries[0]
    assert "Nguyen" not in words
    assert _sop_uid(raw) not in held  # never the store
    root = campaign.resolved_quarantine_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / relative).read_bytes() == raw  # the raw bytes, for review


# -- heartbeats and receipts -------------------------------------------------------------


def _beat(**changes: Any) -> dict[str, Any]:
    beat: dict[str, Any] = {
        "version": "0.9.0",
        "sent_at": (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).isoformat(),
        "outbox_depth": 7,
        "oldest_unsent_seconds": 12.5,
        "received_today": 20,
        "forwarded_today": 13,
        "quarantined_today": 1,
        "receipts": {DAY: {"count": 20, "hash": "0" * 64}},
    }
    return beat | changes


@pytest.fixture
def forwarded(client: TestClient, edge_key: str, edge_files: list[bytes]) -> list[str]:
    """The UIDs of site-a's instances its edge forwarded on DAY (all stored)."""
    response = _post(client, edge_key, edge_files)
    assert response.status_code == 200, response.text
    return sorted(_sop_uid(data) for data in edge_files)


def test_a_heartbeat_is_kept_per_site_and_answered_with_receipts(
    campaign: Settings, client: TestClient, edge_key: str, forwarded: list[str]
) -> None:
    audit_before = _count(campaign, AuditRecord)
    first = client.post("/v1/edge/heartbeat", json=_beat(), headers=bearer(edge_key))
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["site"] == "site-a"
    assert answer["receipts"] == {DAY: {"count": len(forwarded), "hash": receipt_hash(forwarded)}}
    server_time = dt.datetime.fromisoformat(answer["server_time"])
    assert abs((server_time - dt.datetime.now(dt.UTC)).total_seconds()) < 60

    second = client.post("/v1/edge/heartbeat", json=_beat(outbox_depth=0), headers=bearer(edge_key))
    assert second.status_code == 200
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        rows = session.scalars(select(SiteHeartbeat)).all()
        assert [(row.site_id, row.outbox_depth, row.edge_version) for row in rows] == [
            ("site-a", 0, "0.9.0")
        ]
        assert 20 < rows[0].clock_skew_seconds < 40  # the edge's clock runs 30 s ahead
        assert rows[0].receipts == {DAY: {"count": 20, "hash": "0" * 64}}
        assert rows[0].forwarded_today == 13 and rows[0].oldest_unsent_seconds == 12.5
    engine.dispose()
    assert _count(campaign, AuditRecord) == audit_before  # heartbeats are not audited


def test_a_malformed_heartbeat_is_refused(client: TestClient, edge_key: str) -> None:
    for bad in (
        _beat(outbox_depth=-1),
        _beat(receipts={"not-a-day": {"count": 1, "hash": "0" * 64}}),
        _beat(receipts={DAY: {"count": 1, "hash": "xyz"}}),
    ):
        response = client.post("/v1/edge/heartbeat", json=bad, headers=bearer(edge_key))
        assert response.status_code == 422, response.text


def test_receipts_per_day_and_for_one_day(
    campaign: Settings, client: TestClient, edge_key: str, forwarded: list[str]
) -> None:
    account = {DAY: {"count": len(forwarded), "hash": receipt_hash(forwarded)}}
    own = client.get("/v1/edge/receipts?site=site-a", headers=bearer(edge_key))
    assert own.status_code == 200, own.text
    assert own.json() == {"site": "site-a", "receipts": account}

    day = client.get(f"/v1/edge/receipts?site=site-a&day={DAY}", headers=bearer(edge_key))
    assert day.json() == {"site": "site-a", "receipts": account, "sop_instance_uids": forwarded}
    empty = client.get("/v1/edge/receipts?day=2026-11-30", headers=bearer(edge_key))
    assert empty.json() == {"site": "site-a", "receipts": {}, "sop_instance_uids": []}
    bad_day = client.get("/v1/edge/receipts?day=30.11.2026", headers=bearer(edge_key))
    assert bad_day.status_code == 400

    other = client.get("/v1/edge/receipts?site=site-b", headers=bearer(edge_key))
    assert other.status_code == 403  # an edge reads its own site's receipts only

    steward = new_key(campaign, "steward")
    read = client.get("/v1/edge/receipts?site=site-a", headers=bearer(steward))
    assert read.json() == {"site": "site-a", "receipts": account}
    assert client.get("/v1/edge/receipts?site=site-b", headers=bearer(steward)).json() == {
        "site": "site-b",
        "receipts": {},
    }
    assert client.get("/v1/edge/receipts", headers=bearer(steward)).status_code == 400
    clinician = new_key(campaign, "clinician")
    assert client.get("/v1/edge/receipts?site=site-a", headers=bearer(clinician)).status_code == 403
