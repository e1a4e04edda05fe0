"""Folder import of hostile hand-overs: links, FIFOs, sockets, devices are refused, never read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import ImportRun, Instance, QuarantineEntry
from medai.cli import app
from medai.collection.accounting import verify_collection
from medai.collection.receivers.folder import InputRef, Unreadable, read_input
from medai.config import Settings
from medai.dicom.synth import generate
from tests.utils.campaign import init_example_campaign

runner = CliRunner()


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


def _count(
    settings: Settings, model: type[Instance] | type[QuarantineEntry] | type[ImportRun]
) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0
    finally:
        engine.dispose()


def _quarantined_bytes(settings: Settings) -> bytes:
    root = settings.resolved_quarantine_dir
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    return b"".join(p.read_bytes() for p in files)


def test_links_fifos_and_sockets_are_refused_and_never_read(
    campaign: Settings, tmp_path: Path
) -> None:
    result = generate(tmp_path / "in", studies=2, seed=5, sites=("site-a", "site-b"), image_size=32)
    own = tmp_path / "in" / "site-a"
    other = tmp_path / "in" / "site-b"
    own_files = sorted(p for p in own.rglob("*") if p.is_file())
    other_file = next(p for p in other.rglob("*") if p.is_file())
    links = own / "links"
    links.mkdir()
    (links / "passwd.dcm").symlink_to("/etc/passwd")
    (links / "site-b").symlink_to(other, target_is_directory=True)
    (links / "from-b.dcm").symlink_to(other_file)
    (links / "again.dcm").symlink_to(own_files[0])  # inside the root: read under its own name
    (links / "dangling.dcm").symlink_to(tmp_path / "nowhere")
    os.mkfifo(links / "pipe.dcm")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(links / "socket.dcm"))
    try:
        imported = runner.invoke(
            app, ["collect", "import", str(own), "--site", "site-a", "-j", "1", "--json"]
        )
        table = runner.invoke(app, ["collect", "import", str(own), "--site", "site-a", "-j", "1"])
    finally:
        listening.close()
    assert imported.exit_code == 0, imported.output
    summary = json.loads(imported.stdout)
    assert summary["refused"] == {
        "symlink-outside-root": 4,
        "symlink-inside-root": 1,
        "fifo": 1,
        "socket": 1,
    }
    assert summary["inputs"] == len(own_files) == summary["stored"]
    assert summary["quarantined"] == {}
    assert table.exit_code == 0, table.output
    assert "refused, never read: symlink-outside-root" in table.stdout
    # Nothing of /etc/passwd or of site-b ended anywhere: all stored are site-a's own files.
    assert _count(campaign, Instance) == len(own_files) < len(result.files)
    assert _count(campaign, QuarantineEntry) == 0
    assert b"root:" not in _quarantined_bytes(campaign)
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert all(run.balanced for run in report.runs)


def test_an_input_swapped_for_a_fifo_or_link_after_the_walk_is_unreadable(tmp_path: Path) -> None:
    fifo = tmp_path / "raced.dcm"
    os.mkfifo(fifo)  # no writer: a blocking open would hang forever
    started = time.monotonic()
    with pytest.raises(Unreadable):
        read_input(InputRef(fifo), 1024)
    link = tmp_path / "link.dcm"
    link.symlink_to("/etc/passwd")
    with pytest.raises(Unreadable):
        read_input(InputRef(link), 1 << 20)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", ["empty-folder", "dev-zero", "fifo", "only-links"])
def test_importing_nothing_exits_non_zero(campaign: Settings, tmp_path: Path, kind: str) -> None:
    target = tmp_path / kind
    if kind == "dev-zero":
        target = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
        if kind == "only-links":
            (target / "passwd").symlink_to("/etc/passwd")
    imported = runner.invoke(app, ["collect", "import", str(target), "--site", "site-a"])
    assert imported.exit_code == 2, imported.output
    assert "no regular file to import" in imported.stderr
    if kind in ("dev-zero", "fifo", "only-links"):
        assert "never read" in imported.stderr
    assert _count(campaign, ImportRun) == 0  # nothing to account for: no run recorded


@pytest.mark.slow
def test_workers_die_when_the_import_is_killed(campaign: Settings, tmp_path: Path) -> None:
    generate(tmp_path / "in", studies=60, seed=9, sites=("site-a",), image_size=48, ct_slices=2)
    env = {
        **os.environ,
        "MEDAI_HOME": str(campaign.resolved_home),
        "MEDAI_DATABASE_URL": campaign.resolved_database_url,
    }
    command = [sys.executable, "-m", "medai.cli", "collect", "import", str(tmp_path / "in")]
    process = subprocess.Popen(
        [*command, "--site", "site-a", "-j", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    parent = psutil.Process(process.pid)
    try:
        deadline = time.monotonic() + 120
        while len(parent.children()) < 2 or _count(campaign, Instance) == 0:
            assert process.poll() is None, "the import finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers = parent.children(recursive=True)
        process.send_signal(signal.SIGKILL)  # the import alone: its workers are not signalled
        process.wait()
        _, alive = psutil.wait_procs(workers, timeout=10)
        for orphan in alive:  # never leave them behind, even when the test fails
            orphan.kill()
        assert not alive, f"workers outlived the import: {[p.pid for p in alive]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
