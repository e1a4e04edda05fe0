"""A real Orthanc plays site-a's PACS and pushes its studies to `medai collect listen` (C-STORE).

Orthanc's own AE title is site-a's ``STMARY_PACS``, so the listener files what it
receives under site-a; pushing everything again must add nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance
from medai.collection.accounting import verify_collection
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import free_port
from tests.utils.orthanc import Orthanc, OrthancError

pytestmark = pytest.mark.slow

SITE, SITE_AE = "site-a", "STMARY_PACS"  # collection/example-campaign.toml


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, SynthResult]]:
    synth = generate(
        tmp_path_factory.mktemp("pacs"), studies=4, seed=11, image_size=32, ct_slices=3
    )
    with Orthanc(aet=SITE_AE) as orthanc:
        orthanc.upload_files(synth.files)
        yield orthanc, synth


@pytest.fixture
def listener(settings: Settings, pacs: tuple[Orthanc, SynthResult]) -> Iterator[int]:
    """`medai collect listen` on a free port, declared to Orthanc as modality ``medai``."""
    orthanc, _ = pacs
    init_example_campaign(settings)
    port = free_port()
    orthanc.set_modality("medai", "MEDAI", "127.0.0.1", port)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medai.cli",
            "collect",
            "listen",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # ready once it answers Orthanc's C-ECHO
            assert process.poll() is None, process.communicate()[0]
            try:
                orthanc.request("POST", "/modalities/medai/echo", json={}, timeout=10)
                break
            except OrthancError:
                assert time.monotonic() < deadline, "the listener did not answer C-ECHO"
                time.sleep(0.2)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


def _sites_of_instances(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        sites = list(session.scalars(select(Instance.site_id)))
    engine.dispose()
    return sites


def test_orthanc_pushes_are_catalogued_under_its_site_once(
    listener: int, settings: Settings, pacs: tuple[Orthanc, SynthResult]
) -> None:
    orthanc, synth = pacs
    studies = orthanc.studies()
    assert len(studies) == synth.studies
    answer = orthanc.push_to("medai", studies)
    assert answer.get("FailedInstancesCount", 0) == 0, answer

    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.instances == synth.instances
    assert report.events == {"stored": synth.instances}
    assert _sites_of_instances(settings) == [SITE] * synth.instances

    # The PACS sends everything again (a re-sent worklist, a retry): duplicates only.
    orthanc.push_to("medai", studies)
    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.instances == synth.instances
    assert report.events == {"stored": synth.instances, "duplicate": synth.instances}
