"""Group commit of prediction audit records, on the real catalog (SQLite and PostgreSQL).

Concurrent predictions share transactions and every record lands, in an intact chain; a
lone one is written at once; a transaction that fails fails every prediction of it.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.audit import AuditEntry, verify_audit_chain
from medai.catalog.db import create_engine_for, upgrade
from medai.catalog.models import AuditRecord
from medai.config import Settings
from medai.serving.inference.audit import PREDICT_ACTION
from medai.serving.inference.audit_writer import AuditWriter


def _entry(number: int) -> AuditEntry:
    return AuditEntry("apikey:test", PREDICT_ACTION, f"{number:064x}", {"prediction": number})


def test_concurrent_records_share_transactions_and_all_land(settings: Settings) -> None:
    engine = create_engine_for(settings.resolved_database_url)
    upgrade(engine)
    writer = AuditWriter(engine)

    async def scenario() -> float:
        started = time.perf_counter()
        await writer.append(_entry(0))  # alone: written at once
        alone_s = time.perf_counter() - started
        await asyncio.gather(*(writer.append(_entry(n)) for n in range(1, 41)))
        return alone_s

    try:
        alone_s = asyncio.run(scenario())
        with Session(engine) as session:
            count = session.scalar(select(func.count()).where(AuditRecord.action == PREDICT_ACTION))
            report = verify_audit_chain(session)
            subjects = set(session.scalars(select(AuditRecord.subject)))
    finally:
        engine.dispose()
    assert count == 41
    assert report.ok, report.problem
    assert {f"{n:064x}" for n in range(41)} <= subjects
    assert writer.transactions[0] == 1 and alone_s < 5
    assert sum(writer.transactions) == 41
    assert len(writer.transactions) < 41  # the concurrent ones shared transactions


def test_a_failed_transaction_fails_each_of_its_records(settings: Settings) -> None:
    engine = create_engine_for(settings.resolved_database_url)
    upgrade(engine)
    writer = AuditWriter(engine)
    # A subject past the chain's limit: the whole transaction is refused.
    bad = AuditEntry("apikey:test", PREDICT_ACTION, "x" * 10_000, {})

    async def scenario() -> list[BaseException | None]:
        await writer.append(_entry(0))
        # The three queue before the writer runs again: one transaction.
        return list(
            await asyncio.gather(
                writer.append(_entry(1)), writer.append(bad), writer.append(_entry(2)),
                return_exceptions=True,
            )
        )  # fmt: skip

    try:
        outcomes = asyncio.run(scenario())
        with Session(engine) as session:
            count = session.scalar(select(func.count()).where(AuditRecord.action == PREDICT_ACTION))
    finally:
        engine.dispose()
    assert all(isinstance(outcome, ValueError) for outcome in outcomes), outcomes
    assert count == 1  # only the record written before: none of the failed transaction
