"""Engines, BEGIN IMMEDIATE, insert-ignore and get-or-create races on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
import traceback
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy import CursorResult, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance, Patient, Series, Site, Study
from medai.catalog.writes import get_or_create_id, insert_ignore

WORKERS = 3
ROUNDS = 15


def _add_site(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        session.add(Site(id="site-a", name="Site A"))


def test_sqlite_pragmas_and_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "catalog.db"
    engine = create_engine_for(f"sqlite:///{path}", busy_timeout_s=12.5)
    with engine.connect() as conn:
        pragmas = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
        }
    engine.dispose()
    assert path.exists()
    # synchronous: 2 = FULL (the default chosen for durable acknowledgements)
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 2,
        "busy_timeout": 12500,
    }


def test_sqlite_synchronous_normal_is_selectable(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="normal")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    engine.dispose()
    with pytest.raises(ValueError, match="synchronous"):
        create_engine_for(f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="LAZY")


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported catalog database"):
        create_engine_for("mysql://localhost/catalog")


def test_plain_postgresql_url_uses_psycopg3() -> None:
    engine = create_engine_for("postgresql://nobody@127.0.0.1:1/none")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_sqlite_transactions_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    engine = create_engine_for(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()  # a read opens the transaction...
            # ... which already holds the write lock: a second writer cannot start.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at the end of the transaction
        other.execute("ROLLBACK")
        # Read-only work may opt out and leave writers alone.
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            conn.exec_driver_sql("SELECT 1").scalar()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


def test_foreign_keys_are_enforced(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), session_factory.begin() as session:
        session.add(Study(study_uid="2.25.1", patient_id=12345, site_id="nowhere"))


def test_session_objects_stay_loaded_after_commit(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        site = Site(id="site-a", name="Site A")
        session.add(site)
    assert site.name == "Site A"  # no refresh (and no error) after the session closed


def test_insert_ignore_skips_duplicates(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        first = cast(CursorResult[Any], session.execute(insert_ignore(Patient, pseudonym="PA")))
        again = cast(CursorResult[Any], session.execute(insert_ignore(Patient, pseudonym="PA")))
    assert (first.rowcount, again.rowcount) == (1, 0)
    with session_factory() as session:
        rows = session.execute(sa.select(Patient.pseudonym, Patient.first_seen_at)).all()
    assert len(rows) == 1 and rows[0].first_seen_at is not None  # Python-side default applied


def test_insert_ignore_does_not_hide_other_errors(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), session_factory.begin() as session:
        session.execute(insert_ignore(Study, study_uid="2.25.9", patient_id=1, site_id="x"))


def test_insert_ignore_only_compiles_for_the_two_catalog_databases() -> None:
    from sqlalchemy.dialects import mysql

    with pytest.raises(sa.exc.CompileError):
        insert_ignore(Patient, pseudonym="P").compile(dialect=mysql.dialect())


def test_get_or_create_id_returns_the_same_row(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        created = get_or_create_id(session, Patient, "pseudonym", {"pseudonym": "PBBBB"})
        other = get_or_create_id(session, Patient, "pseudonym", {"pseudonym": "PCCCC"})
    with session_factory.begin() as session:
        found = get_or_create_id(session, Patient, "pseudonym", {"pseudonym": "PBBBB"})
        again = get_or_create_id(
            session, Patient, "pseudonym", {"pseudonym": "PBBBB"}, return_created=True
        )
        new = get_or_create_id(
            session, Patient, "pseudonym", {"pseudonym": "PDDDD"}, return_created=True
        )
    assert found == created != other
    assert again == (created, False) and new[1] is True


def _race_worker(url: str, worker: int, barrier: Any, results: Any) -> None:
    """One process of the race: get-or-create the same rows as every other worker."""
    try:
        engine = create_engine_for(url)
        factory = session_factory(engine)
        ids = []
        creations = 0
        barrier.wait(timeout=60)
        for i in range(ROUNDS):
            with factory.begin() as session:
                patient, created = get_or_create_id(
                    session, Patient, "pseudonym", {"pseudonym": f"P{i}"}, return_created=True
                )
                creations += created
                study = get_or_create_id(
                    session,
                    Study,
                    "study_uid",
                    {"study_uid": f"2.25.{i}", "patient_id": patient, "site_id": "site-a"},
                )
                series = get_or_create_id(
                    session, Series, "series_uid", {"series_uid": f"2.25.1{i}", "study_id": study}
                )
                common = {
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                    "series_id": series,
                    "site_id": "site-a",
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "store_key": "0" * 64,
                    "byte_size": 1,
                    "source": "test",
                }
                # One instance every worker sends, one only this worker sends.
                session.execute(insert_ignore(Instance, sop_instance_uid=f"2.25.2{i}", **common))
                session.execute(
                    insert_ignore(Instance, sop_instance_uid=f"2.25.3{worker}0{i}", **common)
                )
            ids.append((patient, study, series))
        engine.dispose()
        results.put((worker, (ids, creations), None))
    except BaseException:
        results.put((worker, None, traceback.format_exc()))


def test_concurrent_get_or_create_from_several_processes(
    database_url: str, engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    _add_site(session_factory)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_race_worker, args=(database_url, n, barrier, results))
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    errors = [error for _, _, error in outcomes if error]
    assert not errors, errors[0]
    # Every worker saw the same ids for the same round...
    per_worker = [ids for _, (ids, _), _ in outcomes]
    assert all(ids == per_worker[0] for ids in per_worker)
    # ... exactly one of them created each patient...
    assert sum(creations for _, (_, creations), _ in outcomes) == ROUNDS
    # ... and each row exists exactly once.
    with session_factory() as session:
        counts = [
            session.scalar(sa.select(sa.func.count()).select_from(model))
            for model in (Patient, Study, Series, Instance)
        ]
    assert counts == [ROUNDS, ROUNDS, ROUNDS, ROUNDS + WORKERS * ROUNDS]


def test_timestamps_come_back_aware_utc_on_both_databases(
    session_factory: sessionmaker[Session],
) -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    moment = dt.datetime(2026, 3, 1, 13, 30, 0, 123456, tzinfo=cet)
    with session_factory.begin() as session:
        session.add(Patient(pseudonym="PAWARE", first_seen_at=moment))
        session.add(Patient(pseudonym="PNAIVE", first_seen_at=dt.datetime(2026, 3, 1, 12, 0)))
    with session_factory() as session:
        loaded = dict(session.execute(sa.select(Patient.pseudonym, Patient.first_seen_at)).all())
        # Filtering with an aware non-UTC value compares instants, also on SQLite.
        later = session.scalars(
            sa.select(Patient.pseudonym).where(
                Patient.first_seen_at > dt.datetime(2026, 3, 1, 13, 15, tzinfo=cet)
            )
        ).all()
    assert loaded["PAWARE"] == moment and loaded["PAWARE"].tzinfo == dt.UTC
    assert loaded["PNAIVE"] == dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert later == ["PAWARE"]
