"""A real Orthanc (Debian's, with its DICOMweb plugin) sends studies to `medai serve` by STOW-RS.

Orthanc's DICOMweb client (``POST /dicom-web/servers/medai/stow``) frames its requests
with a 73-character multipart boundary (two UUIDs), past RFC 2046's 70; it must be
accepted. The server entry carries the steward key and the site as HTTP headers, as a
site's administrator would configure it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medai.collection.accounting import verify_collection
from medai.config import Settings
from medai.dicom.synth import SynthResult
from tests.serving.helpers import ServeProcess, new_key
from tests.utils.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.slow


@pytest.fixture
def server(campaign: Settings) -> Iterator[ServeProcess]:
    serve = ServeProcess()
    yield serve
    output = serve.stop()
    assert "Traceback" not in output, output


def test_orthanc_stows_its_studies_to_medai(
    campaign: Settings, server: ServeProcess, synth: SynthResult
) -> None:
    require_orthanc()
    key = new_key(campaign, "steward", "stmary-orthanc")
    medai_server = {
        "Url": f"{server.url}/dicomweb/",
        "HttpHeaders": {"Authorization": f"Bearer {key}", "Medai-Site": "site-a"},
    }
    extra = {
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"medai": medai_server}}
    }
    with Orthanc(aet="STMARY_PACS", extra_config=extra) as orthanc:
        orthanc.upload_files(synth.files)
        studies = orthanc.studies()
        assert len(studies) == synth.studies
        orthanc.request(
            "POST", "/dicom-web/servers/medai/stow", json={"Resources": studies}, timeout=120
        )
        report = verify_collection(campaign)
        assert report.ok, report.problems
        assert report.events == {"stored": synth.instances}

        # Orthanc sends it all again (a retry): accepted as duplicates, nothing new.
        orthanc.request(
            "POST", "/dicom-web/servers/medai/stow", json={"Resources": studies}, timeout=120
        )
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == synth.instances
    assert report.events == {"stored": synth.instances, "duplicate": synth.instances}
