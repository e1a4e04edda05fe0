"""``POST /v1/edge/study-keys``: label sheets find the studies an edge forwarded, on both databases.

An edge removes the accession number and the patient's ID before anything leaves the
hospital, so the centre cannot compute the keys a site's label sheet finds its studies by.
The edge posts them (keyed hashes only); the centre records them where it has none and
matches the label rows that were waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, LabelRow, Study, StudyLabel
from medai.collection.labels import import_label_sheet
from medai.collection.pipeline import IngestPipeline
from medai.collection.prepare import PreparedInstance, prepare_or_reject
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.serving.keys import create_key
from tests.serving.helpers import REFERENCED, TestClient, bearer, multipart, new_key, sequence_uids

KEYS = "/v1/edge/study-keys"
DAY = "2026-12-01"


def _edge_key(settings: Settings, site: str) -> str:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        return create_key(engine, name=f"{site}-gw", role="edge", site_id=site, actor="test").key
    finally:
        engine.dispose()


def _deidentified_at_edge(
    settings: Settings, synth: SynthResult, site: str
) -> list[PreparedInstance]:
    """The synthetic instances as ``site``'s edge prepares them (same rules, same key)."""
    pipeline = IngestPipeline.from_settings(settings)
    try:
        prepared = [
            prepare_or_reject(
                path.read_bytes(),
                site,
                pipeline.deidentifier,
                pipeline.max_instance_bytes,
                pipeline.identities,
            )
            for path in synth.files
        ]
    finally:
        pipeline.engine.dispose()
    assert all(isinstance(step, PreparedInstance) for step in prepared)
    return [step for step in prepared if isinstance(step, PreparedInstance)]


def _forward(client: TestClient, key: str, site: str, prepared: list[PreparedInstance]) -> None:
    body, content_type = multipart([p.data for p in prepared])
    headers = bearer(key) | {"Content-Type": content_type, "Medai-Receipt-Day": DAY}
    response = client.post(f"/dicomweb/studies?site={site}", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(sequence_uids(response.json(), REFERENCED)) == len(prepared)


def _keys_body(prepared: list[PreparedInstance]) -> dict[str, Any]:
    studies = {
        p.study_uid: {
            "study_uid": p.study_uid,
            "accession_key": p.accession_key,
            "patient_key": p.patient_key,
        }
        for p in prepared
    }
    return {"studies": list(studies.values())}


def _post_keys(client: TestClient, key: str, body: dict[str, Any]) -> httpx.Response:
    response: httpx.Response = client.post(KEYS, json=body, headers=bearer(key))
    return response


@pytest.fixture
def read(campaign: Settings) -> Iterator[Any]:
    engine = create_engine_for(campaign.resolved_database_url)
    factory = session_factory(engine.execution_options(sqlite_begin="DEFERRED"))

    def query(statement: Any) -> list[Any]:
        with factory() as session:
            return list(session.execute(statement).all())

    yield query
    engine.dispose()


def test_posted_keys_link_the_site_label_sheet_to_edge_forwarded_studies(
    campaign: Settings, client: TestClient, synth: SynthResult, read: Any
) -> None:
    key = _edge_key(campaign, "site-a")
    prepared = _deidentified_at_edge(campaign, synth, "site-a")
    assert all(p.accession_key and p.patient_key for p in prepared)  # the edge has them
    _forward(client, key, "site-a", prepared)
    # Forwarded as they are: the centre holds the studies without their keys...
    studies = read(select(Study.study_uid, Study.accession_key, Study.patient_key))
    assert len(studies) == 3 and all(s.accession_key is s.patient_key is None for s in studies)
    # ... so the site's sheet (keyed by accession number) finds none of them.
    sheet = import_label_sheet(synth.label_sheets["site-a"], "site-a", settings=campaign)
    assert sheet.rows == 2 and sheet.counts.unmatched == 2 and sheet.labels_added == 0

    response = _post_keys(client, key, _keys_body(prepared))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer == {
        "site": "site-a",
        "studies": 3,
        "updated": 3,
        "unchanged": 0,
        "conflicts": 0,
        "unknown": 0,
        "labels_matched": 2,
        "labels_added": 6,
        "rows_rechecked": 0,
    }
    expected = {(p.study_uid, p.accession_key, p.patient_key) for p in prepared}
    assert (
        set(map(tuple, read(select(Study.study_uid, Study.accession_key, Study.patient_key))))
        == expected
    )
    assert {row.status for row in read(select(LabelRow.status))} == {"matched"}
    assert len(read(select(StudyLabel.id))) == 6
    (audit,) = read(select(AuditRecord).where(AuditRecord.action == "edge.study-keys"))
    record = audit[0]
    assert record.subject == "site-a" and record.details["updated"] == 3
    assert all(isinstance(v, int) for v in record.details.values())  # counts, no key or UID

    # Idempotent: the same post again changes nothing, and is audited as such.
    again = _post_keys(client, key, _keys_body(prepared)).json()
    assert (again["updated"], again["unchanged"], again["labels_matched"]) == (0, 3, 0)
    assert len(read(select(StudyLabel.id))) == 6


def test_keys_never_overwrite_and_reach_only_the_key_site(
    campaign: Settings, client: TestClient, synth: SynthResult, read: Any
) -> None:
    key_a = _edge_key(campaign, "site-a")
    prepared = _deidentified_at_edge(campaign, synth, "site-a")
    _forward(client, key_a, "site-a", prepared)
    body = _keys_body(prepared)

    # Another site's gateway cannot set site-a's keys (nor learn which studies exist).
    forged = _post_keys(client, _edge_key(campaign, "site-b"), body)
    assert forged.status_code == 200, forged.text
    assert (forged.json()["unknown"], forged.json()["updated"]) == (3, 0)
    # Only edge keys post keys.
    for role in ("steward", "admin"):
        assert _post_keys(client, new_key(campaign, role), body).status_code == 403
    assert client.post(KEYS, json=body).status_code == 401
    # Hashes and pseudonymized UIDs only: anything else is refused unread.
    bad: dict[str, Any]
    for bad in (
        {"studies": [{"study_uid": "1.2.3.4", "accession_key": "ab" * 16}]},
        {"studies": [{"study_uid": prepared[0].study_uid, "accession_key": "ACC-1234"}]},
        {"studies": []},
    ):
        assert _post_keys(client, key_a, bad).status_code == 422
    assert all(s.accession_key is None for s in read(select(Study.accession_key)))

    # A study that already holds another key keeps it: counted as a conflict.
    first = body["studies"][0]["study_uid"]
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine).begin() as session:
        session.execute(
            update(Study).where(Study.study_uid == first).values(accession_key="0" * 32)
        )
    engine.dispose()
    answer = _post_keys(client, key_a, body).json()
    assert (answer["updated"], answer["conflicts"]) == (3, 1)  # its patient key was still set
    held = dict(map(tuple, read(select(Study.study_uid, Study.accession_key))))
    assert held[first] == "0" * 32


@pytest.fixture(scope="module")
def synth_b(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """Two small studies of site-b, whose RIS export is keyed by study UID, with patient ids."""
    out: Path = tmp_path_factory.mktemp("synth-b")
    return generate(out, studies=2, seed=5, sites=("site-b",), image_size=32, ct_slices=2)


def test_a_patient_mismatch_for_want_of_a_key_is_checked_again(
    campaign: Settings, client: TestClient, synth_b: SynthResult, read: Any
) -> None:
    key = _edge_key(campaign, "site-b")
    prepared = _deidentified_at_edge(campaign, synth_b, "site-b")
    _forward(client, key, "site-b", prepared)
    # The sheet finds the studies by UID, but without the site's patient key the patient
    # check falls back to a pseudonym the edge's patients never have: refused.
    sheet = import_label_sheet(synth_b.label_sheets["site-b"], "site-b", settings=campaign)
    assert sheet.rows > 0 and sheet.counts.mismatch == sheet.rows

    answer = _post_keys(client, key, _keys_body(prepared)).json()
    assert answer["rows_rechecked"] == sheet.rows == answer["labels_matched"]
    assert {row.status for row in read(select(LabelRow.status))} == {"matched"}
    assert len(read(select(StudyLabel.id))) == 3 * sheet.rows
