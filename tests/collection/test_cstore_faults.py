"""`medai collect listen` under faults: cut links, SIGTERM mid-transfer, concurrent senders.

A C-STORE is in medai's custody once the sender got its Success response. Whatever
breaks, the catalog holds complete instances only, every acknowledged instance is
catalogued, and sending the whole batch again catalogues each instance exactly once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import IngestEvent, Instance
from medai.collection.accounting import VerifyReport, verify_collection
from medai.config import Settings
from medai.dicom.synth import make_ct_slice
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import SITE_A_AE, Listener, echo
from tests.utils.tcp_proxy import CuttingProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("storescu") is None and not os.environ.get("CI"),
        reason="dcmtk is not installed (apt-get install dcmtk)",
    ),
]

ACKNOWLEDGED = "Received Store Response (Success)"


def ct_files(folder: Path, count: int, *, studies: int = 2, tag: str = "") -> list[Path]:
    """``count`` small CT slices (64x64, Explicit VR LE) spread over ``studies`` studies."""
    folder.mkdir(parents=True, exist_ok=True)
    template = make_ct_slice(rows=64, columns=64, seed=7)
    paths = []
    for index in range(count):
        ds = template.copy()
        study = index % studies
        ds.PatientID = f"FAULT{study:03d}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[tag, "study", str(study)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, "series", str(study)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, "sop", str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu_command(port: int, files: Sequence[Path], calling: str = SITE_A_AE) -> list[str]:
    # -v prints one line per acknowledged instance (on stderr).
    return ["storescu", "-v", "-aet", calling, "-aec", "MEDAI", "127.0.0.1", str(port),
            *map(str, files)]  # fmt: skip


def storescu(port: int, files: Sequence[Path], calling: str = SITE_A_AE) -> tuple[int, str]:
    """Send ``files`` on one association; returns storescu's exit code and its output."""
    run = subprocess.run(
        storescu_command(port, files, calling), capture_output=True, text=True, timeout=120
    )
    return run.returncode, run.stdout + run.stderr


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


@pytest.fixture
def listener(campaign: Settings) -> Iterator[Listener]:
    running = Listener()
    yield running
    output = running.stop()
    assert running.process.returncode == 0, output
    assert "listener stopped" in output


def catalogued(settings: Settings) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)
    finally:
        engine.dispose()


def offered(settings: Settings) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(IngestEvent)) or 0)
    finally:
        engine.dispose()


def assert_consistent(settings: Settings) -> VerifyReport:
    """Every catalogued instance has its intact store file; no stray or partial files."""
    report = verify_collection(settings, rehash=True)
    assert report.ok, report.problems
    assert report.orphan_files == []
    tmp = settings.resolved_store_dir / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    return report


def test_a_cut_association_keeps_only_acknowledged_instances(
    campaign: Settings, tmp_path: Path
) -> None:
    files = ct_files(tmp_path / "in", 8)
    total = sum(path.stat().st_size for path in files)
    # The proxy resets the sender's side at once, but the listener's side of the cut
    # link stays half-open, as when a link drops without a RST: the network timeout
    # must end that association.
    listener = Listener("--network-timeout", "2")
    try:
        # Cut half-way through the batch, which is inside some instance's bytes.
        with CuttingProxy(listener.port, cut_after=total // 2, direction="upstream") as proxy:
            code, output = storescu(proxy.port, files)
            assert proxy.cut_connections == 1
        assert code != 0, output
        acknowledged = output.count(ACKNOWLEDGED)
        assert 0 < acknowledged < len(files)
        # The half-received instance never reached the pipeline; the acknowledged ones did.
        assert catalogued(campaign) == acknowledged
        report = assert_consistent(campaign)
        assert report.events == {"stored": acknowledged}

        # The sender retries the whole batch (directly: the link is back).
        code, output = storescu(listener.port, files)
        assert code == 0, output
        assert output.count(ACKNOWLEDGED) == len(files)
        report = assert_consistent(campaign)
        assert report.instances == len(files)
        assert report.events == {"stored": len(files), "duplicate": acknowledged}
        time.sleep(2.5)  # past the network timeout: the cut association is gone
    finally:
        output = listener.stop()
    assert listener.process.returncode == 0, output
    assert "for 0 in flight" in output
    assert "1 aborted" in output


def test_concurrent_associations_are_all_taken(
    listener: Listener, settings: Settings, tmp_path: Path
) -> None:
    batches = [ct_files(tmp_path / f"in{n}", 6, tag=f"sender-{n}") for n in range(4)]
    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(lambda files: storescu(listener.port, files), batches))
    for code, output in results:
        assert code == 0, output
        assert output.count(ACKNOWLEDGED) == 6
    report = assert_consistent(settings)
    assert report.instances == 24
    assert report.events == {"stored": 24}
    output = listener.stop()
    assert "5 associations" in output  # the four senders and the fixture's readiness C-ECHO
    assert "24 stored" in output


def _send_in_background(port: int, files: Sequence[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        storescu_command(port, files), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_offers(settings: Settings, at_least: int, sender: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while offered(settings) < at_least:
        assert sender.poll() is None, "the sender finished before the listener was stopped"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_sigterm_lets_the_association_in_flight_finish(campaign: Settings, tmp_path: Path) -> None:
    files = ct_files(tmp_path / "in", 30)
    listener = Listener("--drain-seconds", "60")
    sender = _send_in_background(listener.port, files)
    _wait_for_offers(campaign, 3, sender)
    listener.process.send_signal(signal.SIGTERM)
    sent, _ = sender.communicate(timeout=120)
    output = listener.stop(sig=None)  # signalled above: wait for the drain, don't cut it
    assert listener.process.returncode == 0, output
    assert "for 1 in flight" in output  # the signal did come mid-transfer
    assert "aborted 0" not in output and "0 aborted" in output
    assert sender.returncode == 0, sent
    assert sent.count(ACKNOWLEDGED) == len(files)
    report = assert_consistent(campaign)
    assert report.events == {"stored": len(files)}
    # No new association once stopping: the port is closed.
    assert echo(listener.port).returncode != 0


def test_sigterm_past_the_drain_bound_loses_nothing(campaign: Settings, tmp_path: Path) -> None:
    files = ct_files(tmp_path / "in", 30)
    listener = Listener("--drain-seconds", "0.3")
    sender = _send_in_background(listener.port, files)
    _wait_for_offers(campaign, 3, sender)
    listener.process.send_signal(signal.SIGTERM)
    sent, _ = sender.communicate(timeout=120)
    output = listener.stop(sig=None)  # signalled above: wait for the drain, don't cut it
    assert listener.process.returncode == 0, output
    assert re.search(r"aborted 1 association", output), output
    assert sender.returncode != 0, sent
    acknowledged = sent.count(ACKNOWLEDGED)
    assert 0 < acknowledged < len(files)
    # The instance being ingested at the abort may have committed without its
    # response reaching the sender: it is then a duplicate on the re-send.
    held = catalogued(campaign)
    assert held in (acknowledged, acknowledged + 1)
    assert_consistent(campaign)

    restarted = Listener()
    try:
        code, again = storescu(restarted.port, files)
        assert code == 0, again
    finally:
        restarted.stop()
    report = assert_consistent(campaign)
    assert report.instances == len(files)
    assert report.events == {"stored": len(files), "duplicate": held}
