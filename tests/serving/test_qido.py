"""QIDO-RS over the de-identified collection, in process: matching, paging, errors, audit, PHI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Patient, Study
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.serving.app import create_app
from tests.serving.helpers import TestClient, bearer, new_key
from tests.utils.audit import audit_records

STUDY_UID, SERIES_UID, SOP_UID, PATIENT_ID, STUDY_DATE = (
    "0020000D",
    "0020000E",
    "00080018",
    "00100020",
    "00080020",
)


def ingest(settings: Settings, synth: SynthResult) -> None:
    IngestPipeline.from_settings(settings).ingest_many(
        [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    )


@contextmanager
def browsing(
    settings: Settings, synth: SynthResult, key_name: str
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """``synth`` ingested, a client of the app, and headers with a steward key ``key_name``."""
    ingest(settings, synth)
    headers = bearer(new_key(settings, "steward", key_name))
    with TestClient(create_app(settings)) as client:
        yield client, headers


@pytest.fixture
def browse(campaign: Settings, synth: SynthResult) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with browsing(campaign, synth, "steward-browse") as found:
        yield found


def values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return [item[tag]["Value"][0] for item in items if "Value" in item.get(tag, {})]


def test_study_search_lists_the_collection_with_deidentified_values_only(
    browse: tuple[TestClient, dict[str, str]], campaign: Settings, synth: SynthResult
) -> None:
    client, headers = browse
    response = client.get("/dicomweb/studies", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    studies = response.json()
    assert len(studies) == synth.studies == 3
    text = response.text
    for value in synth.phi_values | synth.uid_values:
        assert value not in text
    for record in synth.study_records:  # neither the real IDs nor the real dates
        assert record.patient_id not in text
        assert record.study_date.strftime("%Y%m%d") not in text
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        catalog = {
            uid: (pseudonym, day)
            for uid, pseudonym, day in session.execute(
                select(Study.study_uid, Patient.pseudonym, Study.study_date).join(Patient)
            )
        }
    engine.dispose()
    assert set(values(studies, STUDY_UID)) == set(catalog)
    for study in studies:
        pseudonym, day = catalog[study[STUDY_UID]["Value"][0]]
        assert study[PATIENT_ID]["Value"] == [pseudonym]
        assert day is not None and study[STUDY_DATE]["Value"] == [day.strftime("%Y%m%d")]
        assert study["00201208"]["Value"][0] >= 1  # NumberOfStudyRelatedInstances
        assert study["00081190"]["Value"][0].endswith(
            "/dicomweb/studies/" + study[STUDY_UID]["Value"][0]
        )
    assert sum(s["00201208"]["Value"][0] for s in studies) == synth.instances
    ct = [s for s in studies if "CT" in s["00080061"]["Value"]]
    assert len(ct) == 1 and ct[0]["00201208"]["Value"] == [2]

    records = audit_records(campaign, "dicomweb.search")
    assert records[-1].actor == "apikey:steward-browse"
    assert records[-1].details["level"] == "study"
    assert records[-1].details["results"] == 3


def test_matching_on_study_attributes(browse: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = browse
    studies = client.get("/dicomweb/studies", headers=headers).json()
    first = studies[0]
    uid = first[STUDY_UID]["Value"][0]
    pseudonym = first[PATIENT_ID]["Value"][0]
    day = first[STUDY_DATE]["Value"][0]

    def search(**params: str) -> list[str]:
        response = client.get("/dicomweb/studies", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return values(response.json(), STUDY_UID)

    assert search(StudyInstanceUID=uid) == [uid]
    assert search(**{"0020000D": uid}) == [uid]  # by tag
    assert set(search(StudyInstanceUID=f"{uid},{values(studies, STUDY_UID)[1]}")) == set(
        values(studies, STUDY_UID)[:2]
    )
    assert uid in search(PatientID=pseudonym)
    assert uid in search(PatientID=pseudonym[:4] + "*")
    assert search(PatientID="nobody") == []
    assert uid in search(StudyDate=day)
    assert uid in search(StudyDate=f"{day}-")
    assert uid in search(StudyDate=f"-{day}")
    assert uid not in search(StudyDate="19000101-19000102")
    ct = [s[STUDY_UID]["Value"][0] for s in studies if "CT" in s["00080061"]["Value"]]
    assert search(ModalitiesInStudy="CT") == ct
    assert search(StudyInstanceUID=uid, ModalitiesInStudy="MR") == []


def test_paging_is_stable_and_complete(browse: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = browse
    everything = values(client.get("/dicomweb/studies", headers=headers).json(), STUDY_UID)
    pages = []
    for offset in range(0, 4):
        page = client.get(
            "/dicomweb/studies", params={"limit": 1, "offset": offset}, headers=headers
        ).json()
        pages += values(page, STUDY_UID)
    assert pages == everything
    first = client.get("/dicomweb/studies", params={"limit": 2}, headers=headers)
    assert "additional results that can be requested: offset=2" in first.headers["warning"]
    last = client.get("/dicomweb/studies", params={"limit": 2, "offset": 2}, headers=headers)
    assert len(last.json()) == 1 and "warning" not in last.headers


def test_series_and_instance_levels(
    browse: tuple[TestClient, dict[str, str]], synth: SynthResult
) -> None:
    client, headers = browse
    studies = client.get("/dicomweb/studies", params={"ModalitiesInStudy": "CT"}, headers=headers)
    ct_uid = studies.json()[0][STUDY_UID]["Value"][0]
    series = client.get(f"/dicomweb/studies/{ct_uid}/series", headers=headers).json()
    assert len(series) == 1 and series[0]["00080060"]["Value"] == ["CT"]
    assert series[0]["00201209"]["Value"] == [2]  # NumberOfSeriesRelatedInstances
    series_uid = series[0][SERIES_UID]["Value"][0]
    instances = client.get(
        f"/dicomweb/studies/{ct_uid}/series/{series_uid}/instances", headers=headers
    ).json()
    assert len(instances) == 2
    assert {i[SERIES_UID]["Value"][0] for i in instances} == {series_uid}
    assert instances[0]["00280010"]["Value"][0] > 0  # Rows
    all_series = client.get("/dicomweb/series", params={"Modality": "CT"}, headers=headers)
    assert values(all_series.json(), SERIES_UID) == [series_uid]
    all_instances = client.get("/dicomweb/instances", headers=headers).json()
    assert len(all_instances) == synth.instances
    sop = instances[0][SOP_UID]["Value"][0]
    one = client.get("/dicomweb/instances", params={"SOPInstanceUID": sop}, headers=headers)
    assert values(one.json(), SOP_UID) == [sop]
    assert one.json()[0]["00081190"]["Value"][0].endswith(
        f"/studies/{ct_uid}/series/{series_uid}/instances/{sop}"
    )
    study_instances = client.get(f"/dicomweb/studies/{ct_uid}/instances", headers=headers)
    assert len(study_instances.json()) == 2
    with_patient = client.get(
        "/dicomweb/series", params={"includefield": "PatientID,StudyDate"}, headers=headers
    ).json()
    assert all(PATIENT_ID in s and STUDY_DATE in s for s in with_patient)
    without = client.get("/dicomweb/series", headers=headers).json()
    assert all(PATIENT_ID not in s for s in without)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"NoSuchAttribute": "x"}, "not a DICOM attribute"),
        ({"StudyDate": "2020-01-01"}, "StudyDate must be"),
        ({"StudyDate": "20201301"}, "not a calendar date"),
        ({"StudyDate": "20200102-20200101"}, "ends before"),
        ({"StudyInstanceUID": "1.2.abc"}, "UID"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"SOPInstanceUID": "1.2.3"}, "search instances instead"),
        ({"includefield": "Bogus"}, "not a DICOM attribute"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        # A NUL reached PostgreSQL as a 500 before; a Long String cannot hold one.
        ({"PatientID": "*\x00*"}, "control character"),
        ({"PatientID": "A\\B"}, "backslash"),
    ],
)
def test_malformed_queries_are_refused_with_what_to_fix(
    browse: tuple[TestClient, dict[str, str]], params: dict[str, str], says: str
) -> None:
    client, headers = browse
    response = client.get("/dicomweb/studies", params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert says in response.json()["detail"]


def test_removed_attributes_match_nothing_and_say_so(
    browse: tuple[TestClient, dict[str, str]], synth: SynthResult
) -> None:
    client, headers = browse
    name = synth.study_records[0].patient_name
    response = client.get("/dicomweb/studies", params={"PatientName": name}, headers=headers)
    assert response.status_code == 200
    assert response.json() == []
    assert "PatientName is removed by de-identification" in response.headers["warning"]
    # An empty or universal value of such an attribute is no restriction (viewers send it).
    everything = client.get(
        "/dicomweb/studies", params={"PatientName": "*", "AccessionNumber": ""}, headers=headers
    )
    assert len(everything.json()) == 3


def test_only_steward_keys_browse(campaign: Settings, synth: SynthResult) -> None:
    clinician = bearer(new_key(campaign, "clinician"))
    edge = bearer(new_key(campaign, "edge"))
    with TestClient(create_app(campaign)) as client:
        assert client.get("/dicomweb/studies").status_code == 401
        assert client.get("/dicomweb/studies", headers=clinician).status_code == 403
        assert client.get("/dicomweb/instances", headers=edge).status_code == 403
        steward = bearer(new_key(campaign, "steward"))
        not_json = client.get("/dicomweb/studies", headers=steward | {"Accept": "text/html"})
        assert not_json.status_code == 406
        assert json.loads(not_json.text)["detail"].startswith("QIDO-RS answers")


def test_search_values_never_reach_the_access_log() -> None:
    import logging

    from medai.serving.access_log import RedactUids

    path = "/dicomweb/studies?PatientName=DOE%5EJANE&PatientID=MRN-4471&limit=10&offset=20"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1", "GET", path, "1.1", 200), None,
    )  # fmt: skip
    assert RedactUids().filter(record)
    line = record.getMessage()
    assert "DOE" not in line and "MRN-4471" not in line
    assert "PatientName={value}&PatientID={value}&limit=10&offset=20" in line
