"""Quarantine retention: raw files with PHI are kept only as long as the campaign allows.

Purging deletes the raw file and its sidecar but keeps the catalog row (marked
``released_at``), so the accounting of what was offered still adds up.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import QuarantineEntry, utcnow
from medai.collection.quarantine import Quarantine
from medai.config import Settings, get_settings

__all__ = ["QuarantineSummary", "purge_expired", "summarize_quarantine"]


@dataclass(frozen=True)
class QuarantineSummary:
    by_site_and_reason: Counter[tuple[str, str]]
    held: int
    released: int
    oldest_held: dt.datetime | None


def summarize_quarantine(settings: Settings | None = None) -> QuarantineSummary:
    """Counts of quarantined inputs by site and reason, from the catalog."""
    settings = settings or get_settings()
    engine = create_engine_for(settings.resolved_database_url)
    held_filter = QuarantineEntry.released_at.is_(None)
    try:
        with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
            counts: Counter[tuple[str, str]] = Counter(
                {
                    (str(site), str(reason)): int(count)
                    for site, reason, count in session.execute(
                        select(
                            QuarantineEntry.site_id, QuarantineEntry.reason_code, func.count()
                        ).group_by(QuarantineEntry.site_id, QuarantineEntry.reason_code)
                    ).all()
                }
            )
            held = session.scalar(select(func.count()).where(held_filter)) or 0
            oldest = session.scalar(
                select(func.min(QuarantineEntry.received_at)).where(held_filter)
            )
    finally:
        engine.dispose()
    return QuarantineSummary(counts, held, sum(counts.values()) - held, oldest)


def purge_expired(
    settings: Settings | None = None,
    *,
    now: dt.datetime | None = None,
    actor: str | None = None,
) -> int:
    """Delete the raw files quarantined longer than ``quarantine_retention_days``.

    The purge is audited (``quarantine.purge``) by ``actor``, the person at the command
    line by default.

    Returns
    -------
    int
        How many quarantined files were deleted.
    """
    settings = settings or get_settings()
    cutoff = (now or utcnow()) - dt.timedelta(days=settings.quarantine_retention_days)
    quarantine = Quarantine(settings.resolved_quarantine_dir)
    engine = create_engine_for(settings.resolved_database_url)
    purged = 0
    try:
        with audited_transaction(engine) as session:
            expired = session.scalars(
                select(QuarantineEntry).where(
                    QuarantineEntry.released_at.is_(None), QuarantineEntry.received_at < cutoff
                )
            ).all()
            for entry in expired:
                quarantine.remove(entry.raw_sha256)
                entry.released_at = utcnow()
                purged += 1
            if purged:
                append_audit(
                    session,
                    actor=actor or actors.operator(),
                    action="quarantine.purge",
                    subject=None,
                    details={
                        "purged": purged,
                        "retention_days": settings.quarantine_retention_days,
                    },
                )
    finally:
        engine.dispose()
    return purged
