"""The catalog's side of a backup: a consistent dump and what it holds, restoring a dump.

SQLite is copied with its online backup API; PostgreSQL is dumped with ``pg_dump -Fc`` in the
snapshot of a REPEATABLE READ transaction that also reads the store keys, the audit head and the
key fingerprint, so that the dump and the facts describe one moment.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from medai.audit.anchor import AuditHead, audit_head
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import (
    ApiKey,
    AuditRecord,
    Campaign,
    Instance,
    QuarantineEntry,
    Snapshot,
    StudyLabel,
)
from medai.errors import BackupError

__all__ = [
    "DUMP_FILE",
    "CatalogFacts",
    "DatabaseKind",
    "database_kind",
    "dump_catalog",
    "libpq",
    "pg_target_empty",
    "read_only_sqlite",
    "run_tool",
    "shown_url",
    "sqlite_copy",
]

DatabaseKind = Literal["sqlite", "postgresql"]
DUMP_FILE = {"sqlite": "catalog.sqlite", "postgresql": "catalog.pgdump"}
"""The dump's file name in a backup set, by database kind."""


@dataclass
class CatalogFacts:
    """Read from the catalog in the same snapshot as its dump."""

    store_keys: list[str]
    head: AuditHead
    campaign: str | None
    key_fingerprint: str | None
    counts: dict[str, int]


def _read_facts(session: Session) -> CatalogFacts:
    def count(column: Any) -> int:
        return int(session.scalar(sa.select(sa.func.count(column))) or 0)

    campaign = session.execute(
        sa.select(Campaign.name, Campaign.key_fingerprint).order_by(Campaign.id).limit(1)
    ).first()
    return CatalogFacts(
        store_keys=sorted(set(session.scalars(sa.select(Instance.store_key).distinct()))),
        head=audit_head(session),
        campaign=None if campaign is None else str(campaign.name),
        key_fingerprint=None if campaign is None else campaign.key_fingerprint,
        counts={
            "instances": count(Instance.id),
            "quarantine_entries": count(QuarantineEntry.id),
            "study_labels": count(StudyLabel.id),
            "snapshots": count(Snapshot.id),
            "api_keys": count(ApiKey.id),
            "audit_records": count(AuditRecord.id),
        },
    )


def database_kind(url: str) -> DatabaseKind:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise BackupError(f"cannot back up a {backend} catalog: medai supports sqlite and postgresql")


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError("the SQLite catalog must be a file to be backed up")
    return Path(database).expanduser().absolute()


def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its online backup API), journal DELETE."""
    if not source.is_file():
        raise BackupError(f"the SQLite database {source} does not exist")
    src = sqlite3.connect(source, timeout=60)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one step: a read transaction on a consistent snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # a single file, no -wal beside it
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()


def read_only_sqlite(path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")


def libpq(url: str) -> tuple[dict[str, str], str]:
    """The environment and database name that point pg_dump/pg_restore at ``url``."""
    parsed = make_url(url)
    env = dict(os.environ)
    for variable, value in (
        ("PGHOST", parsed.host),
        ("PGPORT", parsed.port),
        ("PGUSER", parsed.username),
        ("PGPASSWORD", parsed.password),
        ("PGSSLMODE", parsed.query.get("sslmode")),
    ):
        if value is not None:
            env[variable] = str(value)
    if not parsed.database:
        raise BackupError("the PostgreSQL URL names no database")
    return env, parsed.database


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def run_tool(args: list[str], env: dict[str, str], what: str) -> None:
    tool = shutil.which(args[0])
    if tool is None:
        raise BackupError(
            f"{args[0]} is not installed: install the PostgreSQL client tools "
            f"(e.g. apt install postgresql-client) to {what}"
        )
    done = subprocess.run([tool, *args[1:]], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {done.returncode}"
        raise BackupError(f"{args[0]} failed to {what}: {last}")


@contextmanager
def dump_catalog(url: str, target: Path) -> Iterator[CatalogFacts]:
    """Dump the catalog at ``url`` into ``target`` and yield what it holds."""
    if database_kind(url) == "sqlite":
        sqlite_copy(_sqlite_path(url), target)
        engine = read_only_sqlite(target)
        try:
            with session_factory(engine)() as session:
                yield _read_facts(session)
        finally:
            engine.dispose()
        return
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar())
                env, name = libpq(url)
                run_tool(
                    [
                        "pg_dump",
                        "-Fc",
                        "-Z",
                        "1",
                        f"--snapshot={snapshot}",
                        "-f",
                        str(target),
                        "-d",
                        name,
                    ],
                    env,
                    "dump the catalog",
                )
                with Session(bind=conn) as session:
                    yield _read_facts(session)
    finally:
        engine.dispose()


def pg_target_empty(url: str) -> None:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                )
            ).scalar()
    except sa.exc.OperationalError:
        raise BackupError(
            f"cannot connect to {shown_url(url)}: create the database first (createdb) and check "
            "the URL"
        ) from None
    finally:
        engine.dispose()
    if tables:
        raise BackupError(
            f"the database {shown_url(url)} is not empty ({tables} tables): restore into a new, "
            "empty database"
        )
