"""Reading a test catalog's audit trail."""

from __future__ import annotations

from sqlalchemy import select

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.config import Settings


def audit_records(settings: Settings, action: str) -> list[AuditRecord]:
    """The catalog's ``action`` records, oldest first, after checking the whole chain.

    The records are detached from their (closed) session: their columns stay readable.
    """
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert verify_audit_chain(session).ok
            rows = list(
                session.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.action == action)
                    .order_by(AuditRecord.seq)
                )
            )
            session.expunge_all()
    finally:
        engine.dispose()
    return rows
