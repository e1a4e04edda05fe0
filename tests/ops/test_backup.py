"""Backups beyond the drill: retention, refusals, the quarantine's PHI, a backup during ingest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from medai.catalog.db import create_engine_for, session_factory
from medai.cli import app
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings, get_settings
from medai.dicom.synth import SynthResult, generate
from medai.errors import BackupError
from medai.ops.backup import create_backup, last_backup
from medai.ops.backup_restore import restore_backup
from medai.ops.backup_set import select_kept
from medai.store import ObjectStore
from tests.utils.campaign import init_example_campaign

NOT_DICOM = b"Nguyen Van A, MRN 12345678, not an image\n" * 8


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(
        tmp_path_factory.mktemp("synth"), studies=6, seed=11, image_size=32, ct_slices=2
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth: SynthResult) -> Iterator[Settings]:
    """A SQLite deployment with a few instances and one quarantined input."""
    for name in list(os.environ):
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    settings = Settings(home=tmp_path / "home")
    init_example_campaign(settings)
    offers = [
        Offer(path.read_bytes(), record.site, "folder", original_name="Nguyen_Van_A.dcm")
        for record in synth.study_records[:3]
        for path in record.files
    ]
    IngestPipeline.from_settings(settings).ingest_many(
        [*offers, Offer(NOT_DICOM, "site-a", "folder", original_name="Nguyen_Van_A.txt")]
    )
    yield settings
    get_settings.cache_clear()


def _cli(*args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args))


def _all_bytes(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def test_retention_keeps_the_newest_of_each_day_and_week() -> None:
    base = dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.UTC)  # a Sunday
    sets = [(f"d{i}", base - dt.timedelta(days=i)) for i in range(21)]
    sets.append(("d0-early", base - dt.timedelta(hours=1)))
    kept = select_kept(sets, keep_daily=3, keep_weekly=2)
    # The newest three days' newest sets; this week's and last week's newest (Sundays end
    # ISO weeks, so d0 is this week's newest and d1 last week's... d7 the one before).
    assert kept == {"d0", "d1", "d2", "d7"}
    assert select_kept(sets, keep_daily=0, keep_weekly=0) == {"d0"}
    assert select_kept([], keep_daily=1, keep_weekly=1) == set()


def test_prune_removes_sets_and_only_unneeded_objects(home: Settings, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    day = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    ids = [create_backup(dest, home, now=day + dt.timedelta(days=i)).id for i in range(3)]
    stray = dest / "objects" / "ab" / "cd" / ("abcd" + "0" * 60)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by nobody")
    pruned = _cli("backup", "prune", str(dest), "--keep-daily", "2", "--json")
    assert pruned.exit_code == 0, pruned.output
    result = json.loads(pruned.stdout)
    assert result["removed"] == [ids[0]] and result["kept"] == ids[1:]
    assert result["objects_freed"] == 1 and not stray.exists()
    assert not (dest / ids[0]).exists()
    assert _cli("backup", "verify", str(dest), "--all").exit_code == 0
    nothing = _cli("backup", "prune", str(dest))
    assert nothing.exit_code == 2 and "--keep-daily" in nothing.output


def test_create_with_retention_and_last_backup(home: Settings, tmp_path: Path) -> None:
    engine = create_engine_for(home.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert last_backup(session) is None
        dest = tmp_path / "backups"
        created = _cli("backup", "create", str(dest), "--keep-daily", "1", "--json")
        assert created.exit_code == 0, created.output
        again = json.loads(
            _cli("backup", "create", str(dest), "--keep-daily", "1", "--json").stdout
        )
        assert again["objects_copied"] == 0 and again["pruned"] == [
            json.loads(created.stdout)["id"]
        ]
        with session_factory(engine)() as session:
            when = last_backup(session)
        assert when is not None and dt.datetime.now(dt.UTC) - when < dt.timedelta(minutes=1)
    finally:
        engine.dispose()
    listed = _cli("backup", "list", str(dest))
    assert listed.exit_code == 0 and again["id"] in listed.stdout


def test_quarantined_phi_stays_out_unless_asked(home: Settings, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    result = create_backup(dest, home)
    assert NOT_DICOM not in _all_bytes(dest)
    text = b"\n".join(_all_bytes(dest))
    assert b"Nguyen_Van_A" not in text  # the original file names are PHI too
    reasons = json.loads((result.path / "quarantine-reasons.json").read_text())
    assert [r["reason_code"] for r in reasons] == ["not-dicom"]
    assert all("original_name" not in r for r in reasons)

    with_phi = create_backup(tmp_path / "with-phi", home, include_quarantine=True)
    assert NOT_DICOM in _all_bytes(tmp_path / "with-phi")
    restored = restore_backup(tmp_path / "with-phi", tmp_path / "new", backup_id=with_phi.id)
    assert restored.quarantine_released == 0
    raw = hashlib.sha256(NOT_DICOM).hexdigest()
    assert (tmp_path / "new" / "quarantine" / raw[:2] / f"{raw}.raw").read_bytes() == NOT_DICOM
    assert oct((tmp_path / "new" / "quarantine").stat().st_mode & 0o777) == "0o700"


def test_refusals_say_what_to_do(home: Settings, tmp_path: Path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    refused = _cli("backup", "create", str(other))
    assert refused.exit_code == 2 and "not empty and not a medai backup" in refused.output
    assert sorted(p.name for p in other.iterdir()) == ["holiday.jpg"]
    for command in ("list", "verify"):
        result = _cli("backup", command, str(other))
        assert result.exit_code == 2 and "not a medai backup destination" in result.output

    dest = tmp_path / "backups"
    create_backup(dest, home)
    busy = tmp_path / "busy-home"
    busy.mkdir()
    (busy / "catalog.db").write_bytes(b"")
    result = _cli("backup", "restore", str(dest), "--home", str(busy))
    assert result.exit_code == 2 and "not empty" in result.output
    result = _cli(
        "backup", "restore", str(dest), "--home", str(tmp_path / "n"),
        "--database-url", "postgresql+psycopg://127.0.0.1/x",
    )  # fmt: skip
    assert result.exit_code == 2 and "restores into sqlite only" in result.output
    result = _cli("backup", "restore", str(dest), "--home", str(tmp_path / "n"), "--id", "nope")
    assert result.exit_code == 2 and "no backup 'nope'" in result.output

    # A damaged store object is never carried as a good one.
    store = ObjectStore(home.resolved_store_dir)
    key = next(store.keys())
    os.chmod(store.path(key), 0o644)
    store.path(key).write_bytes(b"rotten")
    with pytest.raises(BackupError, match=f"store object {key} does not match"):
        create_backup(tmp_path / "fresh", home)


def test_a_backup_taken_during_an_import_restores_consistently(
    home: Settings, synth: SynthResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offers = [
        Offer(path.read_bytes(), record.site, "folder")
        for record in synth.study_records[3:]
        for path in record.files
    ]
    pipeline = IngestPipeline.from_settings(home)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for offer in offers:
                pipeline.ingest_many([offer])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=ingest)
    thread.start()
    results: list[Any] = []
    while thread.is_alive() or not results:
        results.append(create_backup(tmp_path / "backups", home))
    thread.join()
    assert not errors
    for result in results:
        new = tmp_path / f"restored-{result.id}"
        restore_backup(tmp_path / "backups", new, backup_id=result.id)
        monkeypatch.setenv("MEDAI_HOME", str(new))
        verified = _cli("collect", "verify")
        assert verified.exit_code == 0, verified.output
        audit = _cli("audit", "verify", "--anchor", result.anchor)
        assert audit.exit_code == 0, audit.output


SERVING = Path(__file__).resolve().parents[2] / "serving"


def test_the_nightly_units_commands_work(home: Settings, tmp_path: Path) -> None:
    unit = (SERVING / "medai-backup.service").read_text(encoding="utf-8")
    timer = (SERVING / "medai-backup.timer").read_text(encoding="utf-8")
    assert "Unit=medai-backup.service" in timer and "Persistent=true" in timer
    assert "ReadWritePaths=/var/lib/medai /srv/medai-backups" in unit
    commands = [
        line.split("=", 1)[1].split()
        for line in unit.splitlines()
        if line.startswith(("ExecStart=", "ExecStartPost="))
    ]
    assert [c[:3] for c in commands] == [
        ["/opt/medai/venv/bin/medai", "backup", "create"],
        ["/opt/medai/venv/bin/medai", "backup", "verify"],
    ]
    dest = str(tmp_path / "backups")
    for command in commands:
        args = [dest if a == "/srv/medai-backups" else a for a in command[1:]]
        result = _cli(*args)
        assert result.exit_code == 0, result.output
    if shutil.which("systemd-analyze") is None:
        return
    medai = Path(__file__).resolve().parents[2] / ".venv/bin/medai"
    if not medai.is_file():
        return
    for name, text in (("medai-backup.service", unit), ("medai-backup.timer", timer)):
        (tmp_path / name).write_text(
            text.replace("/opt/medai/venv/bin/medai", str(medai)), encoding="utf-8"
        )
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            *(str(tmp_path / n) for n in ("medai-backup.service", "medai-backup.timer")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "medai-backup" not in done.stderr


def test_serving_state_and_mlflow_come_back_pointing_at_the_new_home(
    home: Settings, tmp_path: Path
) -> None:
    root = home.resolved_home
    for name in ("serving.key", "dashboard-session.key"):
        (root / name).write_text(secrets.token_hex(32))
        os.chmod(root / name, 0o600)
    artifact = root / "mlartifacts" / "chest" / "1" / "model.pt"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"weights")
    with sqlite3.connect(root / "mlflow.db") as conn:
        conn.execute("CREATE TABLE experiments (name TEXT, artifact_location VARCHAR(256))")
        conn.execute(
            "INSERT INTO experiments VALUES ('chest', ?)", (artifact.parent.parent.as_uri(),)
        )
    result = create_backup(tmp_path / "backups", home)
    assert result.files == 4
    new = tmp_path / "new"
    restore_backup(tmp_path / "backups", new)
    for name in ("serving.key", "dashboard-session.key"):
        assert (new / name).read_text() == (root / name).read_text()
        assert (new / name).stat().st_mode & 0o777 == 0o600
    assert (new / "mlartifacts/chest/1/model.pt").read_bytes() == b"weights"
    with sqlite3.connect(new / "mlflow.db") as conn:
        location = conn.execute("SELECT artifact_location FROM experiments").fetchone()[0]
    assert location == (new / "mlartifacts" / "chest").as_uri()
