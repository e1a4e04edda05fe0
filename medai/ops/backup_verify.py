"""``medai backup verify``: every object and file re-hashed, the dump read, its chain checked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from medai.audit import actors
from medai.audit.anchor import parse_anchor, verify_against_anchor
from medai.audit.chain import append_audit
from medai.audit.transaction import audited_transaction
from medai.catalog.db import create_engine_for, session_factory
from medai.config import Settings
from medai.errors import BackupError
from medai.ops.backup import BACKUP_VERIFIED
from medai.ops.backup_catalog import (
    database_kind,
    libpq,
    pg_target_empty,
    read_only_sqlite,
    run_tool,
)
from medai.ops.backup_set import BackupDest, BackupSet, Phase, check_object, hash_file, no_progress

__all__ = ["VerifyResult", "check_set_files", "record_verified", "verify_backup"]


@dataclass
class VerifyResult:
    """What ``verify_backup`` found, per set."""

    sets: list[str]
    objects_checked: int
    problems: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    @property
    def problem_count(self) -> int:
        return sum(len(p) for p in self.problems.values())


def verify_backup(
    dest: Path,
    *,
    backup_id: str | None = None,
    all_sets: bool = False,
    scratch_database_url: str | None = None,
    progress: Phase = no_progress,
) -> VerifyResult:
    """Re-hash every object and file of a set, check its dump is readable, its chain intact.

    The SQLite dump's audit chain is verified up to the set's anchor. A PostgreSQL dump's
    table of contents is read with ``pg_restore --list``; with ``scratch_database_url`` (an
    empty database, emptied again afterwards) it is restored there and its chain verified
    up to the anchor too. An object shared by several sets is hashed once.
    """
    target = BackupDest(dest)
    target.require()
    with target.locked(exclusive=False):
        chosen = target.sets() if all_sets else [target.get(backup_id)]
        if not chosen:
            raise BackupError(f"{target.root} holds no complete backup yet")
        verdicts: dict[str, str | None] = {}
        problems: dict[str, list[str]] = {}
        for backup in chosen:
            found: list[str] = []
            found += check_set_files(backup, scratch_database_url)
            entries = [*backup.manifest.get("objects", []), *backup.manifest.get("files", [])]
            advance = progress(f"verifying {backup.id}", len(entries))
            for entry in entries:
                key = str(entry["sha256"])
                if key not in verdicts:
                    verdicts[key] = check_object(target, key, int(entry["size"]))
                verdict = verdicts[key]
                if verdict is not None:
                    found.append(verdict + (f" ({entry['path']})" if "path" in entry else ""))
                advance(1)
            problems[backup.id] = found
    return VerifyResult([s.id for s in chosen], len(verdicts), problems)


def check_set_files(backup: BackupSet, scratch_database_url: str | None = None) -> list[str]:
    found: list[str] = []
    for entry in backup.manifest.get("set_files", []):
        path = backup.path / str(entry["name"])
        if not path.is_file():
            found.append(f"{entry['name']} is missing")
        elif path.stat().st_size != int(entry["size"]):
            found.append(
                f"{entry['name']} has {path.stat().st_size} bytes, the manifest says "
                f"{entry['size']} (truncated or replaced)"
            )
        elif hash_file(path) != entry["sha256"]:
            found.append(f"{entry['name']} is damaged: it does not hash to its manifest entry")
    if found:
        return found
    database = backup.manifest["database"]
    dump = backup.path / str(database["file"])
    if database["kind"] == "postgresql":
        try:
            run_tool(["pg_restore", "--list", str(dump)], dict(os.environ), "read the dump")
            if scratch_database_url is not None:
                found += _check_pg_chain(dump, scratch_database_url, backup)
        except BackupError as exc:
            found.append(str(exc))
        return found
    engine = read_only_sqlite(dump)
    try:
        with session_factory(engine)() as session:
            check = session.execute(sa.text("PRAGMA integrity_check")).scalar()
            if check != "ok":
                return [f"the catalog dump fails SQLite's integrity check: {check}"]
            report = verify_against_anchor(session, parse_anchor(str(backup.manifest["anchor"])))
            if not report.ok:
                found.append(f"the dump's audit chain does not verify: {report.problem}")
    except sa.exc.DatabaseError as exc:
        found.append(f"the catalog dump cannot be read: {type(exc.orig).__name__}")
    finally:
        engine.dispose()
    return found


def _check_pg_chain(dump: Path, url: str, backup: BackupSet) -> list[str]:
    """Restore ``dump`` into the empty scratch database ``url``, verify its chain, empty it."""
    if database_kind(url) != "postgresql":
        raise BackupError("--scratch-database-url must name an empty PostgreSQL database")
    pg_target_empty(url)
    env, name = libpq(url)
    try:
        run_tool(
            ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-d", name,
             str(dump)],
            env,
            "restore the dump into the scratch database",
        )  # fmt: skip
        engine = create_engine_for(url)
        try:
            with session_factory(engine)() as session:
                anchor = parse_anchor(str(backup.manifest["anchor"]))
                report = verify_against_anchor(session, anchor)
        finally:
            engine.dispose()
    finally:
        engine = create_engine_for(url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA public CASCADE"))
                conn.execute(sa.text("CREATE SCHEMA public"))
        finally:
            engine.dispose()
    if report.ok:
        return []
    return [f"the dump's audit chain does not verify: {report.problem}"]


def record_verified(settings: Settings, dest: Path, result: VerifyResult) -> bool:
    """Audit ``backup.verified`` in the catalog of ``settings`` when there is one (else False)."""
    from medai.catalog.db import catalog_state

    url = settings.resolved_database_url
    if catalog_state(url) not in {"ready", "no-campaign"}:
        return False
    engine = create_engine_for(url)
    try:
        with audited_transaction(engine) as session:
            append_audit(
                session,
                actor=actors.operator(),
                action=BACKUP_VERIFIED,
                subject=result.sets[-1] if result.sets else None,
                details={
                    "destination": str(Path(dest).expanduser().absolute()),
                    "sets": result.sets,
                    "ok": result.ok,
                    "problems": result.problem_count,
                },
            )
    finally:
        engine.dispose()
    return True
