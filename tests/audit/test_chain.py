"""The hash-chained audit log: appends, tamper detection, concurrent writers; both databases."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import traceback
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from medai.audit import (
    GENESIS_HASH,
    append_audit,
    compute_record_hash,
    verify_audit_chain,
)
from medai.catalog import db
from medai.catalog.models import AuditRecord

Factory = sessionmaker[Session]


def _append(factory: Factory, count: int, *, start: int = 0) -> None:
    for n in range(start, start + count):
        with factory.begin() as session:
            append_audit(
                session,
                actor="system:test",
                action="ingest.stored",
                subject=f"2.25.{n}",
                details={"n": n, "site": "site-a", "note": "Zürich ✓"},
            )


def _sql(factory: Factory, statement: str, **params: Any) -> None:
    with factory.begin() as session:
        session.execute(sa.text(statement), params)


def _verify(factory: Factory) -> Any:
    with factory() as session:
        return verify_audit_chain(session)


def test_empty_log_verifies(session_factory: Factory) -> None:
    report = _verify(session_factory)
    assert (report.ok, report.records, report.first_bad_seq, report.problem) == (
        True,
        0,
        None,
        None,
    )


def test_fifty_records_form_a_valid_chain(session_factory: Factory) -> None:
    _append(session_factory, 50)
    report = _verify(session_factory)
    assert report.ok and report.records == 50 and report.first_bad_seq is None
    with session_factory() as session:
        records = session.scalars(sa.select(AuditRecord).order_by(AuditRecord.seq)).all()
    assert [r.seq for r in records] == list(range(1, 51))
    assert records[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.record_hash for a, b in zip(records, records[1:], strict=False))
    assert records[7].details == {"n": 7, "site": "site-a", "note": "Zürich ✓"}


def test_append_returns_the_flushed_record_and_rolls_back_with_the_caller(
    session_factory: Factory,
) -> None:
    with session_factory() as session, session.begin():
        record = append_audit(session, actor="alice", action="export", details={"rows": 3})
        assert record.id is not None and record.seq == 1 and record.subject is None
        session.rollback()
    assert _verify(session_factory).records == 0


def test_edited_details_are_detected(session_factory: Factory) -> None:
    _append(session_factory, 50)
    _sql(session_factory, "UPDATE audit_log SET details = :d WHERE seq = 23", d='{"n": 999}')
    report = _verify(session_factory)
    assert not report.ok and report.first_bad_seq == 23 and report.records == 22
    assert "edited" in (report.problem or "")


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor", "mallory"), ("action", "ingest.duplicate"), ("subject", None)],
)
def test_edited_fields_are_detected(session_factory: Factory, column: str, value: Any) -> None:
    _append(session_factory, 10)
    _sql(session_factory, f"UPDATE audit_log SET {column} = :v WHERE seq = 4", v=value)
    assert _verify(session_factory).first_bad_seq == 4


def test_edited_time_is_detected(session_factory: Factory) -> None:
    _append(session_factory, 10)
    with session_factory.begin() as session:
        record = session.scalars(sa.select(AuditRecord).where(AuditRecord.seq == 6)).one()
        record.at = record.at + dt.timedelta(microseconds=1)
    assert _verify(session_factory).first_bad_seq == 6


def test_deleted_record_is_detected(session_factory: Factory) -> None:
    _append(session_factory, 50)
    _sql(session_factory, "DELETE FROM audit_log WHERE seq = 20")
    report = _verify(session_factory)
    assert not report.ok and report.first_bad_seq == 20 and "missing" in (report.problem or "")


def test_deleted_and_renumbered_record_is_detected(session_factory: Factory) -> None:
    _append(session_factory, 10)
    _sql(session_factory, "DELETE FROM audit_log WHERE seq = 5")
    _sql(session_factory, "UPDATE audit_log SET seq = seq + 1000 WHERE seq > 5")
    _sql(session_factory, "UPDATE audit_log SET seq = seq - 1001 WHERE seq > 1000")
    report = _verify(session_factory)
    assert report.first_bad_seq == 5 and "predecessor" in (report.problem or "")


def test_reordered_records_are_detected(session_factory: Factory) -> None:
    _append(session_factory, 10)
    _sql(session_factory, "UPDATE audit_log SET seq = 1000 WHERE seq = 3")
    _sql(session_factory, "UPDATE audit_log SET seq = 3 WHERE seq = 7")
    _sql(session_factory, "UPDATE audit_log SET seq = 7 WHERE seq = 1000")
    assert _verify(session_factory).first_bad_seq == 3


def test_forged_record_inserted_with_a_valid_hash_is_detected(session_factory: Factory) -> None:
    _append(session_factory, 10)
    _sql(session_factory, "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 6")
    _sql(session_factory, "UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000")
    with session_factory.begin() as session:
        prev = session.scalars(sa.select(AuditRecord).where(AuditRecord.seq == 5)).one()
        at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        fields: dict[str, Any] = {
            "seq": 6,
            "at": at,
            "actor": "mallory",
            "action": "export",
            "subject": None,
            "details": {},
        }
        session.add(
            AuditRecord(
                **fields,
                prev_hash=prev.record_hash,
                record_hash=compute_record_hash(prev.record_hash, **fields),
            )
        )
    report = _verify(session_factory)
    # The forgery itself links correctly; the record after it no longer does.
    assert report.first_bad_seq == 7 and report.records == 6


def test_hash_treats_naive_time_as_utc() -> None:
    fields: dict[str, Any] = {
        "seq": 1,
        "actor": "a",
        "action": "b",
        "subject": None,
        "details": {"x": [1, 2]},
    }
    aware = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    as_cet = aware.astimezone(dt.timezone(dt.timedelta(hours=1)))
    hashes = {
        compute_record_hash(GENESIS_HASH, at=at, **fields)
        for at in (aware, aware.replace(tzinfo=None), as_cet)
    }
    assert len(hashes) == 1
    assert (
        compute_record_hash(GENESIS_HASH, at=aware + dt.timedelta(microseconds=1), **fields)
        not in hashes
    )


def test_details_are_stored_as_hashed_and_must_be_json(session_factory: Factory) -> None:
    with session_factory.begin() as session:
        record = append_audit(session, actor="a", action="b", details={"ids": ("x", "y"), "n": 2})
        assert record.details == {"ids": ["x", "y"], "n": 2}
        with pytest.raises(TypeError):
            append_audit(session, actor="a", action="b", details={"when": dt.date(2026, 1, 1)})
        with pytest.raises(ValueError):
            append_audit(session, actor="a", action="b", details={"x": float("nan")})
        with pytest.raises(ValueError, match="actor"):
            append_audit(session, actor="a" * 129, action="b")
    assert _verify(session_factory).ok


def _append_worker(url: str, start: int, barrier: Any, results: Any) -> None:
    try:
        engine = db.create_engine_for(url)
        barrier.wait(timeout=60)
        _append(db.session_factory(engine), 25, start=start)
        engine.dispose()
        results.put(None)
    except BaseException:
        results.put(traceback.format_exc())


def test_concurrent_appends_keep_one_valid_chain(
    database_url: str, session_factory: Factory
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_append_worker, args=(database_url, start, barrier, results))
        for start in (0, 1000)
    ]
    for process in processes:
        process.start()
    errors = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert errors == [None, None], next(e for e in errors if e)
    report = _verify(session_factory)
    assert report.ok and report.records == 50
    with session_factory() as session:
        subjects = set(session.scalars(sa.select(AuditRecord.subject)))
    assert subjects == {f"2.25.{n}" for n in (*range(25), *range(1000, 1025))}
