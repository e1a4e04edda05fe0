"""`medai collect listen` against real dcmtk clients (echoscu, storescu) on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.collection.accounting import verify_collection
from medai.collection.receivers.cstore import REJECTED_ACTION
from medai.config import Settings
from medai.demo.services import STORESCU_PROPOSE
from medai.dicom.synth import generate
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import SITE_A_AE, Listener, echo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("storescu") is None and not os.environ.get("CI"),
        reason="dcmtk is not installed (apt-get install dcmtk)",
    ),
]

BUNDLED = ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]
# MR_small_RLE.dcm is MR_small_implicit.dcm re-encoded (same SOPInstanceUID): a duplicate.
# JPEG2000.dcm is a secondary capture: quarantined for possible burned-in annotation.
BUNDLED_STORED, BUNDLED_DUPLICATE, BUNDLED_QUARANTINED = 2, 1, 1


@pytest.fixture
def listener(settings: Settings) -> Iterator[int]:
    init_example_campaign(settings)
    running = Listener()
    yield running.port
    output = running.stop(timeout=30)
    assert running.process.returncode == 0, output
    assert "listener stopped" in output


def _store(port: int, calling: str, files: list[Path]) -> list[str]:
    """Send ``files`` with storescu, one run per transfer syntax; returns the runs' errors."""
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        by_syntax.setdefault(str(syntax), []).append(path)
    failures = []
    for syntax, group in sorted(by_syntax.items()):
        run = subprocess.run(
            [
                "storescu",
                *STORESCU_PROPOSE[syntax],
                "-aet",
                calling,
                "-aec",
                "MEDAI",
                "127.0.0.1",
                str(port),
                *map(str, group),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if run.returncode != 0:
            failures.append(f"{syntax}: {run.stdout}{run.stderr}")
    return failures


def test_storescu_pushes_are_catalogued_once(
    listener: int, settings: Settings, tmp_path: Path
) -> None:
    synth = generate(tmp_path / "in", studies=6, seed=21, image_size=32, ct_slices=2)
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    for name in BUNDLED:
        source = get_testdata_file(name, download=False)
        assert source, name
        shutil.copy(str(source), bundled / name)
    expected = len(synth.files) + BUNDLED_STORED

    files = [*synth.files, *sorted(bundled.iterdir())]
    syntaxes = {
        str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files
    }
    assert len(syntaxes) >= 5  # all the generator's syntaxes, plus JPEG 2000 lossy
    assert _store(listener, SITE_A_AE, files) == []
    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.instances == expected  # every transfer syntax was received and taken
    assert report.events["quarantined"] == BUNDLED_QUARANTINED  # in custody: Success

    assert _store(listener, "STMARY_CR1", synth.files) == []  # the same site, another AE
    report = verify_collection(settings)
    assert report.instances == expected
    assert report.events == {
        "stored": expected,
        "duplicate": len(synth.files) + BUNDLED_DUPLICATE,
        "quarantined": BUNDLED_QUARANTINED,
    }


def test_unknown_calling_ae_is_rejected_at_association(listener: int, settings: Settings) -> None:
    refused = echo(listener, "SOMEONE_ELSE")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert verify_collection(settings).inputs == 0


def _rejections(settings: Settings) -> list[dict[str, object]]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            query = select(AuditRecord).where(AuditRecord.action == REJECTED_ACTION)
            return [dict(r.details) for r in session.scalars(query.order_by(AuditRecord.seq))]
    finally:
        engine.dispose()


def test_a_wrong_called_ae_is_rejected_and_recorded_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    init_example_campaign(settings)
    running = Listener()
    try:
        wrong = subprocess.run(
            ["echoscu", "-aet", SITE_A_AE, "-aec", "WRONG", "127.0.0.1", str(running.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
        synth = generate(tmp_path / "in", studies=1, seed=5, image_size=32, ct_slices=1)
        refused = subprocess.run(
            ["storescu", "-aet", "INTRUDER", "-aec", "MEDAI", "127.0.0.1", str(running.port),
             *map(str, synth.files)],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0
        # Recorded when they happen, while the listener runs (not at its shutdown): the
        # listener writes the record right after it answers, so allow it a moment under load.
        deadline = time.monotonic() + 10
        recorded = _rejections(settings)
        while len(recorded) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            recorded = _rejections(settings)
        assert [(r["calling_ae_title"], r["called_ae_title"], r["reason"]) for r in recorded] == [
            (SITE_A_AE, "WRONG", "called-ae-title-not-recognised"),
            ("INTRUDER", "MEDAI", "calling-ae-title-not-recognised"),
        ]
        assert all(str(r["peer"]).startswith("127.0.0.1:") for r in recorded)
        assert verify_collection(settings).inputs == 0
    finally:
        output = running.stop(timeout=30)
    assert running.process.returncode == 0, output
    assert "rejected an association from 127.0.0.1" in output
    assert "2 rejected" in output
