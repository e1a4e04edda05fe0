"""The C-STORE SCP's event handlers, called directly with pynetdicom events (both databases).

Each event carries a real data set, encoded in its transfer syntax as a peer sends it, and
the file meta pynetdicom derives from the request; only the association is a stand-in.
"""

from __future__ import annotations

import socket
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from sqlalchemy import select

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.collection.accounting import verify_collection
from medai.collection.pipeline import IngestPipeline
from medai.collection.receivers.cstore import (
    REJECTED_ACTION,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    ListenerCounts,
    RejectionRecorder,
    handle_aborted,
    handle_accepted,
    handle_echo,
    handle_rejected,
    handle_store,
)
from medai.config import Settings
from medai.dicom.synth import make_ct_slice
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import SITE_A_AE

SITES = {SITE_A_AE: "site-a"}


def _instance(name: str) -> pydicom.Dataset:
    ds = make_ct_slice(rows=32, columns=32, seed=7)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["handlers", name])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def store_event(ds: pydicom.Dataset, calling: str = SITE_A_AE) -> evt.Event:
    """The EVT_C_STORE event of one instance sent by ``calling``, as pynetdicom builds it."""
    syntax = ds.file_meta.TransferSyntaxUID
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    encoded = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert encoded is not None
    request.DataSet = BytesIO(encoded)
    context = build_context(ds.SOPClassUID, syntax)
    context.context_id = 1
    assoc: Any = SimpleNamespace(requestor=SimpleNamespace(ae_title=calling))
    return evt.Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})


@pytest.fixture
def pipeline(settings: Settings) -> IngestPipeline:
    init_example_campaign(settings)
    return IngestPipeline.from_settings(settings)


def test_the_event_carries_the_instance_as_sent() -> None:
    ds = _instance("as-sent")
    event = store_event(ds)
    assert event.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert event.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert event.dataset.SOPInstanceUID == ds.SOPInstanceUID


def test_stored_duplicate_and_quarantined_are_all_success(
    pipeline: IngestPipeline, settings: Settings
) -> None:
    counts = ListenerCounts()
    ds = _instance("stored")
    assert handle_store(store_event(ds), pipeline, SITES, counts) == STATUS_SUCCESS
    assert handle_store(store_event(ds), pipeline, SITES, counts) == STATUS_SUCCESS
    burned_in = _instance("burned-in")
    burned_in.BurnedInAnnotation = "YES"
    assert handle_store(store_event(burned_in), pipeline, SITES, counts) == STATUS_SUCCESS
    assert (counts.stored, counts.duplicate, counts.quarantined, counts.failed) == (1, 1, 1, 0)
    # Success is only answered for what is in custody: each is in the catalog's accounts.
    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.events == {"stored": 1, "duplicate": 1, "quarantined": 1}


def test_an_unknown_calling_ae_is_refused_and_nothing_recorded(
    pipeline: IngestPipeline, settings: Settings
) -> None:
    counts = ListenerCounts()
    event = store_event(_instance("unknown"), calling="SOMEONE_ELSE")
    assert handle_store(event, pipeline, SITES, counts) == STATUS_OUT_OF_RESOURCES
    assert (counts.failed, counts.instances) == (1, 1)
    assert verify_collection(settings).inputs == 0


def test_with_the_catalog_down_the_sender_is_told_to_retry(pipeline: IngestPipeline) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = create_engine_for(f"postgresql+psycopg://medai@127.0.0.1:{closed}/medai")
    unreachable = IngestPipeline(
        engine=down,
        store=pipeline.store,
        quarantine=pipeline.quarantine,
        deidentifier=pipeline.deidentifier,
        max_instance_bytes=pipeline.max_instance_bytes,
    )
    counts = ListenerCounts()
    try:
        status = handle_store(store_event(_instance("down")), unreachable, SITES, counts)
    finally:
        down.dispose()
    assert status == STATUS_OUT_OF_RESOURCES
    assert (counts.failed, counts.stored, counts.quarantined) == (1, 0, 0)


def test_echo_and_association_events_are_counted() -> None:
    counts = ListenerCounts()
    assoc: Any = SimpleNamespace()
    assert handle_echo(evt.Event(assoc, evt.EVT_C_ECHO)) == STATUS_SUCCESS
    handle_accepted(evt.Event(assoc, evt.EVT_ACCEPTED), counts)
    handle_accepted(evt.Event(assoc, evt.EVT_ACCEPTED), counts)
    handle_rejected(evt.Event(assoc, evt.EVT_REJECTED), counts)
    handle_aborted(evt.Event(assoc, evt.EVT_ABORTED), counts)
    assert (counts.associations, counts.rejected, counts.aborted) == (2, 1, 1)


def rejected_event(calling: str, called: str, peer: tuple[str, int]) -> evt.Event:
    """The EVT_REJECTED event of an association request pynetdicom refused."""
    request = SimpleNamespace(calling_ae_title=calling, called_ae_title=called)
    requestor = SimpleNamespace(ae_title=calling, primitive=request, address=peer[0], port=peer[1])
    assoc: Any = SimpleNamespace(requestor=requestor)
    return evt.Event(assoc, evt.EVT_REJECTED)


def _rejections(pipeline: IngestPipeline) -> list[dict[str, Any]]:
    with session_factory(pipeline.engine)() as session:
        records = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.action == REJECTED_ACTION)
            .order_by(AuditRecord.seq)
        ).all()
        assert {record.actor for record in records} <= {"system:cstore"}
        return [dict(record.details) for record in records]


def test_rejected_associations_are_audited_when_they_happen(
    pipeline: IngestPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    counts = ListenerCounts()
    recorder = RejectionRecorder(pipeline.engine, "MEDAI", SITES)
    caplog.set_level("WARNING", logger="medai.collection.receivers.cstore")
    handle_rejected(rejected_event(SITE_A_AE, "WRONG", ("10.1.2.3", 40001)), counts, recorder)
    handle_rejected(rejected_event("INTRUDER", "MEDAI", ("10.9.9.9", 40002)), counts, recorder)
    assert counts.rejected == 2
    assert _rejections(pipeline) == [
        {
            "calling_ae_title": SITE_A_AE,
            "called_ae_title": "WRONG",
            "peer": "10.1.2.3:40001",
            "reason": "called-ae-title-not-recognised",
            "repeated": 0,
        },
        {
            "calling_ae_title": "INTRUDER",
            "called_ae_title": "MEDAI",
            "peer": "10.9.9.9:40002",
            "reason": "calling-ae-title-not-recognised",
            "repeated": 0,
        },
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "called-ae-title-not-recognised" in warnings[0]
    with session_factory(pipeline.engine)() as session:
        assert verify_audit_chain(session).ok


def test_a_peer_retrying_in_a_loop_cannot_flood_the_audit_chain(pipeline: IngestPipeline) -> None:
    counts = ListenerCounts()
    peer = ("10.1.2.3", 40001)
    throttled = RejectionRecorder(pipeline.engine, "MEDAI", SITES)
    for _ in range(20):
        handle_rejected(rejected_event("INTRUDER", "MEDAI", peer), counts, throttled)
    assert counts.rejected == 20
    assert len(_rejections(pipeline)) == 1
    # Once the interval has passed, the next record counts those that were not recorded.
    eager = RejectionRecorder(pipeline.engine, "MEDAI", SITES, interval=0.0)
    handle_rejected(rejected_event("INTRUDER", "MEDAI", peer), counts, eager)
    handle_rejected(rejected_event("\x00EVIL\nTITLE", "MEDAI", peer), counts, eager)
    details = _rejections(pipeline)
    assert len(details) == 3
    assert details[-1]["calling_ae_title"] == "?EVIL?TITLE"  # printable, as logged
