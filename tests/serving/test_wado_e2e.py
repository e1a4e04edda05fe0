"""QIDO-RS and WADO-RS against a real `medai serve`: dicomweb-client, and Debian's Orthanc.

dicomweb-client searches and retrieves studies, series, instances, metadata, frames and a
rendered frame; Orthanc's DICOMweb plugin, configured with medai as a remote DICOMweb server
(the steward key in its HTTP headers), lists medai's studies and retrieves one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image

from medai.config import Settings
from medai.dicom.synth import SynthResult
from tests.serving.helpers import ServeProcess, bearer, new_key
from tests.serving.test_qido import ingest
from tests.utils.audit import audit_records
from tests.utils.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.slow


@pytest.fixture
def server(campaign: Settings, synth: SynthResult) -> Iterator[ServeProcess]:
    ingest(campaign, synth)
    serve = ServeProcess()
    yield serve
    output = serve.stop()
    assert "Traceback" not in output, output


def test_dicomweb_client_browses_and_opens_studies(
    campaign: Settings, server: ServeProcess, synth: SynthResult
) -> None:
    key = new_key(campaign, "steward", "viewer")
    client = DICOMwebClient(url=f"{server.url}/dicomweb", headers=bearer(key))

    studies = client.search_for_studies()
    assert len(studies) == synth.studies
    ct = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    assert len(ct) == 1
    study = ct[0]["0020000D"]["Value"][0]
    paged = client.search_for_studies(limit=2, offset=2)
    assert len(paged) == 1
    series = client.search_for_series(study_instance_uid=study)
    assert len(series) == 1
    series_uid = series[0]["0020000E"]["Value"][0]
    instances = client.search_for_instances(
        study_instance_uid=study, series_instance_uid=series_uid
    )
    assert len(instances) == 2
    sop = instances[0]["00080018"]["Value"][0]
    assert len(client.search_for_instances()) == synth.instances

    whole = client.retrieve_study(study)
    assert sorted(str(ds.SOPInstanceUID) for ds in whole) == sorted(
        i["00080018"]["Value"][0] for i in instances
    )
    assert len(client.retrieve_series(study, series_uid)) == 2
    instance = client.retrieve_instance(study, series_uid, sop)
    assert str(instance.SOPInstanceUID) == sop
    for value in synth.phi_values:
        assert value not in str(instance)

    metadata = client.retrieve_instance_metadata(study, series_uid, sop)
    assert "BulkDataURI" in metadata["7FE00010"]
    assert len(client.retrieve_study_metadata(study)) == 2
    assert len(client.retrieve_series_metadata(study, series_uid)) == 2

    (frame,) = client.retrieve_instance_frames(study, series_uid, sop, frame_numbers=[1])
    assert frame == instance.PixelData[: len(frame)] and len(frame) == len(instance.PixelData)
    rendered = client.retrieve_instance_rendered(study, series_uid, sop, media_types=("image/png",))
    assert Image.open(io.BytesIO(rendered)).format == "PNG"
    jpeg = client.retrieve_instance_frames_rendered(study, series_uid, sop, frame_numbers=[1])
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"

    retrieves = audit_records(campaign, "dicomweb.retrieve")
    assert {r.actor for r in retrieves} == {"apikey:viewer"}
    study_retrieve = [r.details for r in retrieves if r.details["what"] == "instances"][0]
    assert study_retrieve == {"level": "study", "what": "instances", "instances": 2}


def test_orthanc_lists_and_retrieves_medai_studies(
    campaign: Settings, server: ServeProcess, synth: SynthResult
) -> None:
    require_orthanc()
    key = new_key(campaign, "steward", "orthanc-viewer")
    medai_server = {"Url": f"{server.url}/dicomweb/", "HttpHeaders": bearer(key)}
    extra = {
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"medai": medai_server}}
    }
    with Orthanc(aet="RESEARCH", extra_config=extra) as orthanc:
        listed = orthanc.request(
            "POST", "/dicom-web/servers/medai/get", json={"Uri": "/studies"}, timeout=60
        )
        assert len(listed) == synth.studies
        uids = {item["0020000D"]["Value"][0] for item in listed}
        qido = orthanc.request(
            "POST",
            "/dicom-web/servers/medai/qido",
            json={"Uri": "/studies", "Arguments": {"ModalitiesInStudy": "CT"}},
            timeout=60,
        )
        assert len(qido) == 1, qido
        # Orthanc's /qido answers its own simplified JSON: one string per Value.
        ct_study = qido[0]["0020000D"]["Value"]
        assert qido[0]["00080061"]["Value"] == "CT"
        assert ct_study in uids
        # Orthanc pulls the study from medai by WADO-RS into its own store.
        orthanc.request(
            "POST",
            "/dicom-web/servers/medai/retrieve",
            json={"Resources": [{"Study": ct_study}]},
            timeout=120,
        )
        instances = orthanc.instances()
        assert len(instances) == 2
        tags = orthanc.request("GET", f"/instances/{instances[0]}/simplified-tags")
        assert tags["StudyInstanceUID"] == ct_study
        text = json.dumps(tags)
        assert not [value for value in synth.phi_values if value in text]
