"""The restore drill, on SQLite and PostgreSQL: back up, back up again, lose the home, restore.

What a user relies on: every instance, label, snapshot, API key and audit record comes
back; `collect verify` and `audit verify --anchor` pass in the new home; the second backup
copies only what is new; `backup verify` finds a flipped byte and a truncated dump.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import ApiKey, AuditRecord, Instance, QuarantineEntry, StudyLabel
from medai.cli import app
from medai.collection.labels import import_label_sheet
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings, get_settings
from medai.dicom.synth import SynthResult, generate
from medai.keyfile import escrow_key, load_key
from medai.serving.keys import authenticate_key, create_key
from medai.snapshots import create_snapshot, load_snapshot
from tests.utils.campaign import init_example_campaign

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(tmp_path_factory.mktemp("synth"), studies=8, seed=5, image_size=32, ct_slices=2)


def _offers(synth: SynthResult, part: slice) -> list[Offer]:
    return [
        Offer(path.read_bytes(), record.site, "folder")
        for record in synth.study_records[part]
        for path in record.files
    ]


def _cli(*args: str) -> Result:
    get_settings.cache_clear()
    result = CliRunner().invoke(app, list(args))
    get_settings.cache_clear()
    return result


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _catalog_state(url: str) -> dict[str, Any]:
    engine = create_engine_for(url)
    try:
        with session_factory(engine)() as session:
            return {
                "instances": sorted(session.scalars(select(Instance.sop_instance_uid))),
                "labels": sorted(
                    (row.study_id, row.finding, row.value)
                    for row in session.execute(
                        select(StudyLabel.study_id, StudyLabel.finding, StudyLabel.value)
                    )
                ),
                "api_keys": sorted(session.scalars(select(ApiKey.key_hash))),
                "audit": [
                    (row.seq, row.record_hash)
                    for row in session.execute(
                        select(AuditRecord.seq, AuditRecord.record_hash).order_by(AuditRecord.seq)
                    )
                ],
            }
    finally:
        engine.dispose()


@pytest.fixture
def fresh_database(database_url: str) -> Any:
    """Two empty databases on the same server, to restore into and to verify in (else None)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        yield None
        return
    names = [f"medai_restore_{secrets.token_hex(6)}" for _ in range(2)]
    connect: dict[str, Any] = {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "dbname": url.database,
        "autocommit": True,
    }
    with psycopg.connect(**connect) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [url.set(database=n).render_as_string(hide_password=False) for n in names]
    finally:
        with psycopg.connect(**connect) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_restore_drill(
    settings: Settings,
    synth: SynthResult,
    fresh_database: list[str] | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init_example_campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    first = pipeline.ingest_many(
        [*_offers(synth, slice(0, 4)), Offer(b"not dicom at all" * 10, "site-a", "folder")]
    )
    assert sum(o.kind == "stored" for o in first) >= 4
    dest = tmp_path / "backups"

    one = _json(_cli("backup", "create", str(dest), "--json"))
    assert one["objects_copied"] == one["objects"] == one["counts"]["instances"] > 0
    assert one["objects_present"] == 0

    # More data: instances, label sheets, a snapshot, an API key.
    more = pipeline.ingest_many(_offers(synth, slice(4, None)))
    added = sum(o.kind == "stored" for o in more)
    assert added > 0
    for site, sheet in synth.label_sheets.items():
        import_label_sheet(sheet, site, settings=settings, actor="test")
    create_snapshot("drill-v1", settings=settings, actor="test")
    engine = create_engine_for(settings.resolved_database_url)
    try:
        api_key = create_key(engine, name="drill-steward", role="steward").key
    finally:
        engine.dispose()

    two = _json(_cli("backup", "create", str(dest), "--json"))
    # Incremental: the second backup copies only the new instances' objects.
    assert two["objects"] == one["objects"] + added
    assert two["objects_copied"] == added
    assert two["objects_present"] == one["objects"]
    assert two["files_copied"] >= 1  # the snapshot's manifest
    listed = _json(_cli("backup", "list", str(dest), "--json"))
    assert [s["id"] for s in listed] == [one["id"], two["id"]]
    assert listed[1]["key_fingerprint"] == two["key_fingerprint"] is not None

    before = _catalog_state(settings.resolved_database_url)
    anchor_seq = int(two["anchor"].split(":")[0])
    key = load_key(settings.resolved_key_file)
    escrow = tmp_path / "escrow.json"
    escrow.write_bytes(escrow_key(key, PASSPHRASE, campaign=str(listed[1]["campaign"])))
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            actions = list(session.scalars(select(AuditRecord.action)))
    finally:
        engine.dispose()
    assert actions.count("backup.created") == 2

    # Lose the home (and, for PostgreSQL, restore into another database).
    shutil.rmtree(settings.resolved_home)
    new_home = tmp_path / "new-home"
    args = ["backup", "restore", str(dest), "--home", str(new_home), "--json"]
    if fresh_database is not None:
        args += ["--database-url", fresh_database[0]]
    # A wrong key in the new home is refused before anything is written.
    new_home.mkdir()
    (new_home / "campaign.key").write_text(secrets.token_hex(32))
    os.chmod(new_home / "campaign.key", 0o600)
    refused = _cli(*args)
    assert refused.exit_code == 2 and "holds another key" in refused.output
    assert sorted(p.name for p in new_home.iterdir()) == ["campaign.key"]
    (new_home / "campaign.key").unlink()

    restored = _json(_cli(*args))
    assert restored["id"] == two["id"] and restored["key_status"] == "missing"
    assert restored["quarantine_released"] == 1

    monkeypatch.setenv("MEDAI_HOME", str(new_home))
    new_url = fresh_database[0] if fresh_database else f"sqlite:///{new_home / 'catalog.db'}"
    monkeypatch.setenv("MEDAI_DATABASE_URL", new_url)
    passfile = tmp_path / "pass.txt"
    passfile.write_text(PASSPHRASE + "\n")
    imported = _cli("campaign", "key", "import", str(escrow), "--passphrase-file", str(passfile))
    assert imported.exit_code == 0, imported.output

    verified = _cli("collect", "verify")
    assert verified.exit_code == 0, verified.output
    audit = _cli("audit", "verify", "--anchor", two["anchor"])
    assert audit.exit_code == 0, audit.output

    after = _catalog_state(new_url)
    assert after["instances"] == before["instances"]
    assert after["labels"] == before["labels"] and after["labels"]
    assert after["api_keys"] == before["api_keys"]
    assert after["audit"][:anchor_seq] == before["audit"][:anchor_seq]
    new_settings = Settings(home=new_home, database_url=new_url)
    assert len(load_snapshot("drill-v1", settings=new_settings)) > 0  # its hash checks out
    engine = create_engine_for(new_url)
    try:
        found = authenticate_key(engine, api_key)
        assert found is not None and found.name == "drill-steward"
        with session_factory(engine)() as session:
            held = session.scalars(
                select(QuarantineEntry).where(QuarantineEntry.released_at.is_(None))
            ).all()
            assert held == []
            last = session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
            assert last is not None and last.action in {"backup.restored", "campaign.key-import"}
    finally:
        engine.dispose()

    # A flipped byte in a backup object and a truncated dump are found.
    scratch = ["--scratch-database-url", fresh_database[1]] if fresh_database else []
    whole = _json(_cli("backup", "verify", str(dest), "--all", *scratch, "--json"))
    assert whole["ok"] and whole["sets"] == [one["id"], two["id"]]
    flipped_key = _first_object(dest, two["id"])
    obj = dest / "objects" / flipped_key[:2] / flipped_key[2:4] / flipped_key
    os.chmod(obj, 0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    flipped = _cli("backup", "verify", str(dest), "--json")
    assert flipped.exit_code == 1
    report = json.loads(flipped.stdout.strip().splitlines()[-1])
    assert any(obj.name in p and "damaged" in p for p in report["problems"][two["id"]])
    dump = next((dest / two["id"]).glob("catalog.*"))
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    truncated = _cli("backup", "verify", str(dest), "--id", two["id"])
    assert truncated.exit_code == 1 and "truncated" in truncated.output


def _first_object(dest: Path, backup_id: str) -> str:
    manifest = json.loads((dest / backup_id / "manifest.json").read_text())
    return str(manifest["objects"][0]["sha256"])
