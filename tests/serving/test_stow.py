"""STOW-RS through the app in process (httpx TestClient), on both databases."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, IngestEvent, Instance, QuarantineEntry
from medai.collection.accounting import verify_collection
from medai.collection.receivers.stow import FAILURE_CODES, REASON_TEXTS
from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.serving.app import create_app
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
from tests.utils.campaign import bad_inputs

STOW = "/dicomweb/studies?site=site-a"
# PS3.18 Warning values: the warn-agent is {+service}, the base URL of the DICOMweb service.
WARN = "299 http://testserver/dicomweb: "


def _uids(data: bytes) -> tuple[str, str]:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _post(
    client: TestClient, key: str, parts: list[bytes], url: str = STOW, **kwargs: Any
) -> httpx.Response:
    body, content_type = multipart(parts, **kwargs)
    return client.post(url, content=body, headers=bearer(key) | {"Content-Type": content_type})


def _no_phi(response: httpx.Response, synth: SynthResult) -> None:
    shown = response.text + repr(response.headers.multi_items())
    leaked = [value for value in synth.phi_values if value in shown]
    assert not leaked


def _count(settings: Settings, model: type[Any]) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        count = session.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return count


@pytest.fixture
def key(campaign: Settings) -> str:
    return new_key(campaign, "steward", "site-a-stow")


@pytest.fixture
def files(synth: SynthResult) -> list[bytes]:
    return [path.read_bytes() for path in synth.files]


def test_all_stored_then_all_duplicates(
    campaign: Settings, client: TestClient, key: str, files: list[bytes], synth: SynthResult
) -> None:
    response = _post(client, key, files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert FAILED not in body
    # The UIDs as the sender sent them, in request order, so it can match them.
    assert sequence_uids(body, REFERENCED) == [_uids(data) for data in files]
    assert "warning" not in response.headers
    _no_phi(response, synth)

    again = _post(client, key, files)
    assert again.status_code == 200
    assert sequence_uids(again.json(), REFERENCED) == [_uids(data) for data in files]

    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == len(files)
    assert report.events == {"stored": len(files), "duplicate": len(files)}
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        sources = set(session.scalars(select(Instance.source)))
        actors = set(
            session.scalars(select(AuditRecord.actor).where(AuditRecord.action.like("ingest.%")))
        )
    engine.dispose()
    assert sources == {"stow-rs"}
    assert actors == {"apikey:site-a-stow"}  # the audit names the caller's key


def test_good_and_bad_parts_202_then_all_bad_409(
    campaign: Settings, client: TestClient, key: str, files: list[bytes], synth: SynthResult
) -> None:
    bad = bad_inputs(files[0])
    parts = [files[0], *bad.values(), *files[1:]]
    response = _post(client, key, parts)
    assert response.status_code == 202, response.text
    body = response.json()
    assert sequence_uids(body, REFERENCED) == [_uids(data) for data in files]
    failed = sequence_uids(body, FAILED)
    assert len(failed) == len(bad)
    assert failure_reasons(body) == [FAILURE_CODES[reason] for reason in bad]
    # Every failed item references what could be read of the part, and only valid UIDs.
    assert failed[list(bad).index("not-dicom")] == (None, None)
    assert (
        failed[list(bad).index("burned-in-annotation")][1] == _uids(bad["burned-in-annotation"])[1]
    )
    # medai's reason for each failed part, by its position (1-based), in words and as its
    # code (PS3.18's Warning header), never a file value.
    warnings = response.headers.get_list("warning")
    for position, reason in enumerate(bad, start=2):
        assert f"{WARN}part {position} not accepted ({reason}): {REASON_TEXTS[reason]}" in warnings
    assert "not a DICOM file" in " ".join(warnings)
    _no_phi(response, synth)
    # Quarantined parts are in custody, though reported as failed.
    assert _count(campaign, QuarantineEntry) == len(bad)

    all_bad = _post(client, key, list(bad.values()))
    assert all_bad.status_code == 409
    assert REFERENCED not in all_bad.json()
    assert len(failure_reasons(all_bad.json())) == len(bad)

    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == len(files)
    assert report.events == {"stored": len(files), "quarantined": 2 * len(bad)}


def test_store_into_one_study_refuses_the_others(
    campaign: Settings, client: TestClient, key: str, files: list[bytes]
) -> None:
    studies = {
        study: list(group)
        for study, group in itertools.groupby(
            sorted(
                files,
                key=lambda d: str(
                    pydicom.dcmread(pydicom.filebase.DicomBytesIO(d)).StudyInstanceUID
                ),
            ),
            key=lambda d: str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(d)).StudyInstanceUID),
        )
    }
    assert len(studies) >= 2
    target, *others = studies
    wanted, unwanted = studies[target], [d for s in others for d in studies[s]]
    response = _post(
        client,
        key,
        [*unwanted, *wanted, b"not dicom"],
        url=f"/dicomweb/studies/{target}?site=site-a",
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert sequence_uids(body, REFERENCED) == [_uids(data) for data in wanted]
    assert failure_reasons(body) == [0xA900] * len(unwanted) + [0xC000]
    assert any("wrong-study" in w for w in response.headers.get_list("warning"))
    # Refused parts were never taken: only the target's instances and the unreadable part.
    assert verify_collection(campaign).events == {"stored": len(wanted), "quarantined": 1}

    bad_uid = _post(client, key, wanted, url="/dicomweb/studies/not-a-uid?site=site-a")
    assert bad_uid.status_code == 400 and "valid UID" in bad_uid.json()["detail"]


def test_refused_requests_record_nothing(
    campaign: Settings, client: TestClient, key: str, files: list[bytes]
) -> None:
    body, content_type = multipart(files)
    auth = bearer(key)

    def post(url: str = STOW, **headers: str) -> httpx.Response:
        return client.post(
            url, content=body, headers=auth | {"Content-Type": content_type} | headers
        )

    no_site = post("/dicomweb/studies")
    assert no_site.status_code == 400
    assert "site-a, site-b, site-c" in no_site.json()["detail"]
    unknown = post("/dicomweb/studies?site=elsewhere")
    assert unknown.status_code == 400 and "site-a, site-b, site-c" in unknown.json()["detail"]
    conflicting = post("/dicomweb/studies?site=site-a", **{"Medai-Site": "site-b"})
    assert conflicting.status_code == 400
    by_header = post("/dicomweb/studies", **{"Medai-Site": "site-b"})
    assert by_header.status_code == 200  # the header names the site as well as ?site= does

    wrong_type = post(**{"Content-Type": "application/dicom"})
    assert wrong_type.status_code == 415 and "multipart/related" in wrong_type.json()["detail"]
    json_parts = post(
        **{"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'}
    )
    assert json_parts.status_code == 415
    no_boundary = post(**{"Content-Type": 'multipart/related; type="application/dicom"'})
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    cut = client.post(
        STOW, content=body[: len(body) // 2], headers=auth | {"Content-Type": content_type}
    )
    assert cut.status_code == 400 and "cut short" in cut.json()["detail"]
    missing_type = client.post(STOW, content=body, headers=auth)
    assert missing_type.status_code == 415

    report = verify_collection(campaign)
    assert report.ok
    assert report.events == {"stored": len(files)}  # only the request by header


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_size_limits(campaign: Settings, files: list[bytes]) -> None:
    key = new_key(campaign, "steward")
    small, large = min(files, key=len), max(files, key=len)
    assert len(small) < len(large)
    limited = campaign.model_copy(
        update={"max_request_bytes": 3 * len(large), "max_instance_bytes": len(small)}
    )
    body, content_type = multipart([small, b"\x00" * (3 * len(large))])
    headers = bearer(key) | {"Content-Type": content_type}
    with TestClient(create_app(limited)) as client:
        declared = client.post(STOW, content=body, headers=headers)
        assert declared.status_code == 413
        assert f"{3 * len(large)}-byte limit" in declared.json()["detail"]
        # No Content-Length (chunked): counted while it streams in.
        streamed = client.post(STOW, content=_chunks(body), headers=headers)
        assert streamed.status_code == 413
        assert verify_collection(campaign).inputs == 0

        # Under the request limit, but one instance over max_instance_bytes: quarantined.
        mixed = _post(client, key, [small, large])
        assert mixed.status_code == 202
        assert failure_reasons(mixed.json()) == [FAILURE_CODES["too-large"]]
        assert mixed.headers.get_list("warning") == [
            f"{WARN}part 2 not accepted (too-large): it is larger than the limit for one instance"
        ]
    report = verify_collection(campaign)
    assert report.events == {"stored": 1, "quarantined": 1}
    assert _count(campaign, IngestEvent) == 2


def test_a_store_failure_takes_nothing_and_asks_for_a_resend(
    campaign: Settings, client: TestClient, key: str, files: list[bytes]
) -> None:
    assert _post(client, key, files[:1]).status_code == 200
    # The object store becomes unusable (its root is now a file): nothing can be taken.
    store = campaign.resolved_store_dir
    away = store.with_name("store-away")
    store.rename(away)
    store.write_bytes(b"")
    try:
        failed = _post(client, key, files[1:])
    finally:
        store.unlink()
        away.rename(store)
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "30"
    assert failure_reasons(failed.json()) == [0xA700] * len(files[1:])
    assert REFERENCED not in failed.json()
    numbers = ", ".join(str(i + 1) for i in range(len(files) - 1))
    assert failed.headers.get_list("warning") == [
        f"{WARN}parts {numbers} not accepted (not-taken): {REASON_TEXTS['not-taken']}"
    ]
    assert verify_collection(campaign).events == {"stored": 1}

    resent = _post(client, key, files)
    assert resent.status_code == 200
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.events == {"stored": len(files), "duplicate": 1}


def test_a_label_sheet_imported_before_the_upload_finds_its_studies(
    campaign: Settings, client: TestClient, key: str, files: list[bytes], synth: SynthResult
) -> None:
    from medai.catalog.models import LabelRow, StudyLabel
    from medai.collection.labels import import_label_sheet

    sheet = import_label_sheet(synth.label_sheets["site-a"], "site-a", settings=campaign)
    assert sheet.counts.unmatched == sheet.rows > 0
    assert _post(client, key, files).status_code == 200
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        statuses = set(session.scalars(select(LabelRow.status)))
        labels = session.scalar(select(func.count()).select_from(StudyLabel))
    engine.dispose()
    assert statuses == {"matched"} and labels == 3 * sheet.rows
