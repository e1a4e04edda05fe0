"""Folder and zip import: accounting, zip bombs, re-runs, the CLI, and kill -9 midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance, QuarantineEntry
from medai.cli import app
from medai.collection.accounting import verify_collection
from medai.collection.receivers.folder import import_path, iter_inputs
from medai.config import Settings
from medai.dicom.synth import generate
from tests.utils.campaign import bad_inputs, init_example_campaign

runner = CliRunner()


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


def _hand_over(root: Path, *, studies: int, seed: int = 3) -> tuple[Path, int, int]:
    """A site's hand-over: synthetic studies, bad files, a zip of good and bad, a zip bomb.

    Returns the folder, the number of inputs and the number of distinct good instances.
    """
    result = generate(
        root / "synth", studies=studies, seed=seed, sites=("site-a",), image_size=48, ct_slices=2
    )
    folder = root / "synth" / "site-a"
    bad = bad_inputs(result.files[0].read_bytes())
    for reason, data in bad.items():
        (folder / f"bad-{reason}.dcm").write_bytes(data)
    (folder / "notes.txt").write_text(
        "scanned requisition forms are elsewhere"
    )  # same as not-dicom? no: distinct bytes
    with zipfile.ZipFile(folder / "batch.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("again/first.dcm", result.files[0].read_bytes())  # a duplicate
        archive.writestr("again/bad.bin", bad["not-dicom"])  # the same bad bytes again
    with zipfile.ZipFile(folder / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("huge.dcm", b"\0" * (64 * 1024 * 1024))
    inputs = len(result.files) + len(bad) + 1 + 2 + 1
    return folder, inputs, len(result.files)


def test_import_accounts_for_every_input_and_rerun_adds_nothing(
    campaign: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign.max_instance_bytes = 8 * 1024 * 1024  # the 64 MiB zip member is a bomb
    folder, inputs, good = _hand_over(tmp_path, studies=4)
    assert len(list(iter_inputs(folder))) == inputs

    first = import_path(folder, "site-a", settings=campaign, workers=2)
    assert first.inputs == first.offered == inputs
    assert first.stored == good
    assert first.duplicate == 1  # the zip's copy of the first instance
    assert first.quarantined["too-large"] == 1
    assert first.quarantined["not-dicom"] == 3  # report text, notes.txt, its copy in the zip

    second = import_path(folder, "site-a", settings=campaign, workers=1)
    assert second.stored == 0
    assert second.duplicate == good + 1
    assert second.quarantined == first.quarantined

    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == good
    assert report.inputs == 2 * inputs
    # The same bad bytes (in the folder and in the zip, in both runs) are one entry.
    assert report.quarantine_entries == sum(first.quarantined.values()) - 1
    bomb = [e for e in _entries(campaign) if e.reason_code == "too-large"]
    assert len(bomb) == 1 and bomb[0].byte_size < 1024 * 1024  # kept compressed, never inflated


def _entries(settings: Settings) -> list[QuarantineEntry]:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        return list(session.scalars(select(QuarantineEntry)))


def test_cli_import_verify_and_audit(campaign: Settings, tmp_path: Path) -> None:
    result = generate(
        tmp_path / "in", studies=2, seed=5, sites=("site-b",), image_size=32, ct_slices=2
    )
    for args in (
        ["collect", "--help"],
        ["collect", "import", "--help"],
        ["collect", "verify", "--help"],
    ):
        assert runner.invoke(app, args).exit_code == 0
    imported = runner.invoke(
        app, ["collect", "import", str(tmp_path / "in" / "site-b"), "--site", "site-b", "-j", "1"]
    )
    assert imported.exit_code == 0, imported.output
    assert "stored" in imported.output and str(len(result.files)) in imported.output
    verified = runner.invoke(app, ["collect", "verify"])
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.output
    audited = runner.invoke(app, ["audit", "verify"])
    assert audited.exit_code == 0 and "chain intact" in audited.output
    unknown = runner.invoke(app, ["collect", "import", str(tmp_path / "in"), "--site", "nowhere"])
    assert unknown.exit_code == 2 and "site-a" in unknown.output


def _count(settings: Settings, model: type[Instance] | type[QuarantineEntry]) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.slow
def test_kill_9_midway_then_rerun_loses_and_duplicates_nothing(
    campaign: Settings, tmp_path: Path
) -> None:
    folder, inputs, good = _hand_over(tmp_path, studies=60, seed=11)
    campaign.max_instance_bytes = 8 * 1024 * 1024
    env = {
        **os.environ,
        "MEDAI_HOME": str(campaign.resolved_home),
        "MEDAI_DATABASE_URL": campaign.resolved_database_url,
        "MEDAI_MAX_INSTANCE_BYTES": str(campaign.max_instance_bytes),
    }
    command = [
        sys.executable,
        "-m",
        "medai.cli",
        "collect",
        "import",
        str(folder),
        "--site",
        "site-a",
        "-j",
        "2",
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while _count(campaign, Instance) == 0:  # kill right after the first batch commits
        assert process.poll() is None, "the import finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the import and its workers, mid-write
    process.wait()
    killed_at = _count(campaign, Instance)
    assert 0 < killed_at < good

    report = verify_collection(campaign)
    assert report.ok, report.problems  # at most orphan files, never a row without its file
    assert len(report.interrupted_runs) == 1

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _count(campaign, Instance) == good
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == good
    reasons = {e.reason_code for e in _entries(campaign)}
    assert len(_entries(campaign)) == len({e.raw_sha256 for e in _entries(campaign)})
    assert "too-large" in reasons and "truncated" in reasons
    assert all(run.balanced for run in report.runs if run.finished)


def test_cli_quarantine_lists_reasons_and_purges(campaign: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "handover"
    folder.mkdir()
    (folder / "referral.txt").write_text("a scanned referral, not an image")
    imported = runner.invoke(app, ["collect", "import", str(folder), "--site", "site-c"])
    assert imported.exit_code == 0, imported.output
    listed = runner.invoke(app, ["collect", "quarantine"])
    assert listed.exit_code == 0, listed.output
    assert "site-c" in listed.output and "not-dicom" in listed.output
    assert "held 1, purged 0" in listed.output
    # Nothing is older than the retention yet: --purge keeps it.
    purged = runner.invoke(app, ["collect", "quarantine", "--purge"])
    assert purged.exit_code == 0 and "purged 0 file(s)" in purged.output
    assert any(campaign.resolved_quarantine_dir.rglob("*.raw"))
