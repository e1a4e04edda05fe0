"""`medai keys`: create (key on the last stdout line, only its hash stored), list, revoke."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from sqlalchemy import select
from typer.testing import CliRunner

from medai.audit import actors, verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory, upgrade
from medai.catalog.models import ApiKey, AuditRecord, Base
from medai.cli import app
from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.keys import LAST_USED_RESOLUTION, authenticate_key, create_key
from tests.serving.helpers import TestClient, bearer, multipart


def _medai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medai.cli", *args],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )


runner = CliRunner()


def _catalog_text(settings: Settings) -> str:
    """Every value of every catalog table, as one string."""
    engine = create_engine_for(settings.resolved_database_url)
    chunks: list[str] = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            chunks += [repr(tuple(row)) for row in connection.execute(select(table))]
    engine.dispose()
    return "\n".join(chunks)


def test_help_exits_zero() -> None:
    for command in (["serve", "--help"], ["keys", "create", "--help"], ["keys", "--help"]):
        run = _medai(*command)
        assert run.returncode == 0, run.stderr
        assert "Usage" in run.stdout


def test_create_list_revoke(campaign: Settings) -> None:
    created = _medai("keys", "create", "--role", "steward", "--name", "site-a-pacs")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("medai_") and len(key) > 40
    assert key not in created.stderr  # shown once, on stdout only
    assert "site-a-pacs" in created.stderr

    # Only the sha256 is stored: the key appears nowhere in the catalog.
    text = _catalog_text(campaign)
    assert key not in text
    assert key[len("medai_") :] not in text
    assert hashlib.sha256(key.encode()).hexdigest() in text
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        row = session.scalars(select(ApiKey)).one()
        assert (row.name, row.role, row.revoked_at) == ("site-a-pacs", "steward", None)
        assert key.startswith(row.prefix) and len(row.prefix) < 16
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action.like("apikey.%"))
        ).all()
        assert [(r.action, r.subject) for r in audit] == [("apikey.create", "site-a-pacs")]
        # The person who ran the command, named like every operator in the chain.
        assert audit[0].actor == actors.operator() and audit[0].actor.startswith("user:")
        assert audit[0].details == {"role": "steward", "prefix": row.prefix}
        assert key not in repr(audit[0].details)

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert "site-a-pacs" in listed.stdout and "steward" in listed.stdout
    assert row.prefix in listed.stdout and key not in listed.stdout

    with TestClient(create_app(campaign)) as client:
        body, content_type = multipart([b"not DICOM"])
        headers = bearer(key) | {"Content-Type": content_type}
        accepted = client.post("/dicomweb/studies?site=site-a", content=body, headers=headers)
        assert accepted.status_code == 409  # authorised (the one part is not DICOM)
        revoked = runner.invoke(app, ["keys", "revoke", "site-a-pacs"])
        assert revoked.exit_code == 0, revoked.output
        response = client.post("/dicomweb/studies?site=site-a", content=body, headers=headers)
        assert response.status_code == 401
        assert "revoked" in response.json()["detail"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    again = runner.invoke(app, ["keys", "revoke", "site-a-pacs"])
    assert again.exit_code == 0 and "already" in again.stdout
    with session_factory(engine)() as session:
        records = session.execute(
            select(AuditRecord.action, AuditRecord.actor)
            .where(AuditRecord.action.like("apikey.%"))
            .order_by(AuditRecord.seq)
        ).all()
        # The repeated revoke changed nothing, so it recorded nothing.
        assert [tuple(r) for r in records] == [
            ("apikey.create", actors.operator()),
            ("apikey.revoke", actors.operator()),
        ]
        assert verify_audit_chain(session).ok
    engine.dispose()


def test_user_errors_exit_2(campaign: Settings) -> None:
    def keys(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["keys", *args])
        return result.exit_code, result.stdout, result.stderr

    assert keys("create", "--role", "steward", "--name", "a")[0] == 0
    code, out, err = keys("create", "--role", "admin", "--name", "a")
    assert code == 2 and "exists already" in err
    assert out == ""  # no key printed
    code, out, err = keys("create", "--role", "root", "--name", "b")
    assert code == 2 and "clinician, steward, researcher, admin" in err and out == ""
    code, _, err = keys("create", "--role", "admin", "--name", "no spaces")
    assert code == 2 and "invalid key name" in err
    code, _, err = keys("revoke", "nobody")
    assert code == 2 and "no API key named 'nobody'" in err


def test_last_used_is_written_at_most_once_a_minute(settings: Settings) -> None:
    engine = create_engine_for(settings.resolved_database_url)
    upgrade(engine)
    created = create_key(engine, name="k", role="clinician", actor="test")
    assert created.info.last_used_at is None
    first = authenticate_key(engine, created.key)
    assert first is not None and first.last_used_at is None  # the record as it was read
    second = authenticate_key(engine, created.key)
    assert second is not None and second.last_used_at is not None
    stamp = second.last_used_at
    third = authenticate_key(engine, created.key)
    assert third is not None and third.last_used_at == stamp  # not rewritten within a minute
    with session_factory(engine).begin() as session:
        row = session.scalars(select(ApiKey)).one()
        row.last_used_at = stamp - LAST_USED_RESOLUTION
    authenticate_key(engine, created.key)
    with session_factory(engine)() as session:
        assert session.scalars(select(ApiKey.last_used_at)).one() > stamp - LAST_USED_RESOLUTION
    assert authenticate_key(engine, created.key + "x") is None
    assert authenticate_key(engine, "not-a-medai-key") is None
    engine.dispose()
