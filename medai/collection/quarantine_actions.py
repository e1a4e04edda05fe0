"""Acting on the quarantine: list, view, release (re-offer after a fix) and purge, all audited.

The catalog's :class:`~medai.catalog.models.QuarantineEntry` rows are the list; the raw
files are in :class:`~medai.collection.quarantine.Quarantine`. An entry is *held* while
its raw file is kept (``released_at`` is empty) and *closed* once the file is gone
(``released_at`` says when). How it was closed is read from the audit chain, which
records every action on the quarantine with who did it, on which entry and the outcome:

* ``quarantine.release`` (subject: the file's sha256): the raw file was offered to the
  ingest pipeline again, under the campaign's and the settings' current rules. Stored
  or duplicate: the entry is closed and its raw file deleted (raw PHI must not outlive
  its need). Quarantined again: the entry stays held, with the new reason.
* ``quarantine.discard`` (subject: the sha256): a steward deleted the raw file now; the
  row stays, so the accounting still adds up.
* ``quarantine.view`` (subject: the sha256): a steward read the file's header
  (:func:`show_entry`); nothing is closed.
* ``quarantine.purge`` (no subject): the retention limit deleted raw files
  (:func:`medai.collection.retention.purge_expired`); such entries read as *expired*, as
  do those a backup restore closed because it did not carry their raw files.

A release is a new input (source ``quarantine-release``, no import run): its ingest event
counts like any re-sent file, so ``inputs = stored + duplicate + quarantined`` and the
checks of ``medai collect verify`` hold after it. The catalog row is closed in a
transaction after the ingest, and the raw file deleted after that commit: a crash between
the steps leaves the entry held with its file, and releasing it again finds a duplicate.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.orm import Session

from medai.audit import AuditEntry, append_audit_many, audited_transaction
from medai.catalog.db import session_factory
from medai.catalog.models import AuditRecord, QuarantineEntry, utcnow
from medai.collection.pipeline import IngestPipeline
from medai.collection.quarantine import Quarantine
from medai.collection.quarantine_view import HeaderView, describe_raw
from medai.config import Settings
from medai.errors import QuarantineActionRefused, QuarantineEntryNotFound

__all__ = [
    "DISCARD_ACTION",
    "RELEASE_ACTION",
    "RELEASE_SOURCE",
    "VIEW_ACTION",
    "ActionResult",
    "EntryView",
    "QuarantineFilter",
    "QuarantineItem",
    "QuarantinePage",
    "Status",
    "all_held",
    "discard_entries",
    "list_entries",
    "release_entries",
    "select_entries",
    "show_entry",
]

logger = logging.getLogger(__name__)

RELEASE_ACTION: Final = "quarantine.release"
DISCARD_ACTION: Final = "quarantine.discard"
VIEW_ACTION: Final = "quarantine.view"
RELEASE_SOURCE: Final = "quarantine-release"
# Refused edge inputs are already de-identified with the campaign's key: de-identifying
# them again at the centre would give their instances second UIDs. The edge re-sends them.
_NOT_RELEASABLE: Final = frozenset({"edge-not-deidentified", "edge-identified"})
MAX_PER_PAGE: Final = 500
MAX_PAGE: Final = 1_000_000

_Row = TypeVar("_Row")
Status = Literal["held", "closed", "all"]
Resolution = Literal["held", "released", "discarded", "expired"]


@dataclass(frozen=True)
class QuarantineFilter:
    """Which entries: by site, reason code, day received (inclusive, UTC) and status."""

    site: str | None = None
    reason: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    status: Status = "held"

    def apply(self, query: Select[_Row]) -> Select[_Row]:
        """``query`` (on quarantine_entries) narrowed to the entries this filter chooses."""
        if self.site:
            query = query.where(QuarantineEntry.site_id == self.site)
        if self.reason:
            query = query.where(QuarantineEntry.reason_code == self.reason)
        if self.since:
            start = dt.datetime.combine(self.since, dt.time(), dt.UTC)
            query = query.where(QuarantineEntry.received_at >= start)
        if self.until:
            end = dt.datetime.combine(self.until + dt.timedelta(days=1), dt.time(), dt.UTC)
            query = query.where(QuarantineEntry.received_at < end)
        if self.status == "held":
            query = query.where(QuarantineEntry.released_at.is_(None))
        elif self.status == "closed":
            query = query.where(QuarantineEntry.released_at.is_not(None))
        return query


@dataclass(frozen=True)
class QuarantineItem:
    """One entry as a steward sees it (no file name: names may identify the patient)."""

    id: int
    sha256: str
    site: str
    source: str
    reason_code: str
    reason: str
    byte_size: int
    received_at: dt.datetime
    status: Resolution
    closed_at: dt.datetime | None
    closed_by: str | None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "site": self.site,
            "source": self.source,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "byte_size": self.byte_size,
            "received_at": self.received_at.isoformat(),
            "status": self.status,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "closed_by": self.closed_by,
        }


@dataclass(frozen=True)
class QuarantinePage:
    items: list[QuarantineItem]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "page": self.page,
            "per_page": self.per_page,
            "pages": self.pages,
            "entries": [item.to_dict() for item in self.items],
        }


@dataclass(frozen=True)
class EntryView:
    """One entry with its header, values that may identify removed."""

    item: QuarantineItem
    header: HeaderView | None  # None: the raw file is gone (closed) or missing

    def to_dict(self) -> dict[str, object]:
        header: dict[str, object] | None = None
        if self.header is not None:
            header = {
                "byte_size": self.header.byte_size,
                "kind": self.header.kind,
                "read_problem": self.header.read_problem,
                "truncated": self.header.truncated,
                "elements": [
                    {
                        "tag": e.tag,
                        "keyword": e.keyword,
                        "vr": e.vr,
                        "length": e.length,
                        "value": e.value,
                        "withheld": e.withheld,
                        "depth": e.depth,
                    }
                    for e in self.header.elements
                ],
            }
        return {**self.item.to_dict(), "header": header}


@dataclass(frozen=True)
class ActionResult:
    """What a release or a discard did to one entry."""

    id: int
    sha256: str
    site: str
    # released: stored; released-duplicate; requarantined (reason_code is the new one);
    # discarded; missing (the raw file was already gone); refused (not releasable).
    outcome: str
    reason_code: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "site": self.site,
            "outcome": self.outcome,
            "reason_code": self.reason_code,
        }


@dataclass
class _Closing:
    status: Resolution = "expired"
    by: str | None = None
    details: dict[str, object] = field(default_factory=dict)


def _reader(engine: Engine) -> Session:
    return session_factory(engine.execution_options(sqlite_begin="DEFERRED"))()


def _closings(session: Session, shas: Sequence[str]) -> dict[str, _Closing]:
    """How each closed entry was closed, from the audit chain (the latest action wins)."""
    found: dict[str, _Closing] = {}
    if not shas:
        return found
    rows = session.execute(
        select(AuditRecord.subject, AuditRecord.action, AuditRecord.actor, AuditRecord.details)
        .where(AuditRecord.action.in_((RELEASE_ACTION, DISCARD_ACTION)))
        .where(AuditRecord.subject.in_(list(shas)))
        .order_by(AuditRecord.seq)
    )
    for subject, action, actor, details in rows:
        if subject is None:
            continue
        if action == DISCARD_ACTION:
            found[subject] = _Closing("discarded", actor, dict(details or {}))
        elif (details or {}).get("outcome") in ("stored", "duplicate"):
            found[subject] = _Closing("released", actor, dict(details or {}))
    return found


def _items(session: Session, entries: Sequence[QuarantineEntry]) -> list[QuarantineItem]:
    closed = _closings(session, [e.raw_sha256 for e in entries if e.released_at is not None])
    items = []
    for entry in entries:
        closing = closed.get(entry.raw_sha256, _Closing())
        held = entry.released_at is None
        items.append(
            QuarantineItem(
                id=entry.id,
                sha256=entry.raw_sha256,
                site=entry.site_id,
                source=entry.source,
                reason_code=entry.reason_code,
                reason=entry.reason,
                byte_size=entry.byte_size,
                received_at=entry.received_at,
                status="held" if held else closing.status,
                closed_at=entry.released_at,
                closed_by=None if held else closing.by,
            )
        )
    return items


def list_entries(
    engine: Engine, where: QuarantineFilter, *, page: int = 1, per_page: int = 50
) -> QuarantinePage:
    """One page of the entries ``where`` chooses, newest first."""
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= MAX_PER_PAGE:
        raise QuarantineActionRefused(
            f"page must be between 1 and {MAX_PAGE} and per-page between 1 and {MAX_PER_PAGE}"
        )
    with _reader(engine) as session:
        query = where.apply(select(QuarantineEntry))
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        entries = session.scalars(
            query.order_by(QuarantineEntry.received_at.desc(), QuarantineEntry.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        return QuarantinePage(_items(session, entries), total, page, per_page)


def _entry(session: Session, entry_id: int) -> QuarantineEntry:
    entry = session.get(QuarantineEntry, entry_id)
    if entry is None:
        raise QuarantineEntryNotFound(
            f"no quarantine entry {entry_id}: `medai collect quarantine list` shows the ids"
        )
    return entry


def show_entry(
    engine: Engine, quarantine: Quarantine, entry_id: int, *, actor: str | None = None
) -> EntryView:
    """Entry ``entry_id`` with its header (no identifying values), if its file is held.

    With ``actor``, reading the raw file is audited (``quarantine.view``): the view holds
    no identifying value, but the file it was read from does.
    """
    with _reader(engine) as session:
        entry = _entry(session, entry_id)
        item = _items(session, [entry])[0]
    header = None
    if item.status == "held":
        try:
            header = describe_raw(quarantine.read(item.sha256))
        except FileNotFoundError:
            logger.warning("quarantine entry %d has no raw file", entry_id)
    if header is not None and actor is not None:
        with audited_transaction(engine) as session:
            details = {"entry": item.id, "site": item.site, "reason_code": item.reason_code}
            append_audit_many(session, [AuditEntry(actor, VIEW_ACTION, item.sha256, details)])
    return EntryView(item, header)


def select_entries(
    engine: Engine, *, ids: Sequence[int] = (), where: QuarantineFilter | None = None
) -> list[int]:
    """The ids of the held entries chosen by ``ids`` and/or ``where`` (never all by accident).

    Raises
    ------
    QuarantineActionRefused
        When neither ``ids`` nor a filter with a site, reason or day is given.
    QuarantineEntryNotFound
        When an id names no entry.
    """
    if not ids and (
        where is None or not (where.site or where.reason or where.since or where.until)
    ):
        raise QuarantineActionRefused(
            "choose entries by id, or by --site, --reason, --since or --until "
            "(or --all for every held entry)"
        )
    held = (
        QuarantineFilter(where.site, where.reason, where.since, where.until, status="held")
        if where is not None
        else QuarantineFilter(status="held")
    )
    query = held.apply(select(QuarantineEntry.id))
    with _reader(engine) as session:
        for entry_id in ids:
            _entry(session, entry_id)  # an unknown id is an error, not nothing to do
        if ids:
            query = query.where(QuarantineEntry.id.in_(list(ids)))
        return list(session.scalars(query.order_by(QuarantineEntry.id)))


def all_held(engine: Engine) -> list[int]:
    """The ids of every held entry (``--all``)."""
    with _reader(engine) as session:
        return list(
            session.scalars(
                select(QuarantineEntry.id)
                .where(QuarantineEntry.released_at.is_(None))
                .order_by(QuarantineEntry.id)
            )
        )


def release_entries(
    settings: Settings,
    entry_ids: Sequence[int],
    *,
    actor: str,
    pipeline: IngestPipeline | None = None,
    progress: Callable[[ActionResult], None] | None = None,
) -> list[ActionResult]:
    """Offer each held entry's raw file to the ingest pipeline again; see the module docstring.

    Parameters
    ----------
    settings
        Whose campaign, catalog, store and quarantine (and limits) apply.
    entry_ids
        The entries (from :func:`select_entries`); closed ones are skipped.
    actor
        Who releases (``user:<login>``, ``apikey:<name>``): named by every audit record.
    pipeline
        The pipeline to offer through; built from ``settings`` when not given.
    progress
        Called with each entry's result as it is done.
    """
    owned = pipeline is None
    pipe = pipeline or IngestPipeline.from_settings(settings)
    # The ingest records name the person who released the file, not a receiver.
    pipe.actor = actor
    results: list[ActionResult] = []
    try:
        for entry_id in entry_ids:
            result = _release_one(pipe, entry_id, actor)
            if result is not None:
                results.append(result)
                if progress is not None:
                    progress(result)
    finally:
        if owned:
            pipe.engine.dispose()
    return results


def _release_one(pipe: IngestPipeline, entry_id: int, actor: str) -> ActionResult | None:
    with _reader(pipe.engine) as session:
        entry = _entry(session, entry_id)
        if entry.released_at is not None:
            return None
        sha, site, old_reason = entry.raw_sha256, entry.site_id, entry.reason_code
        size = entry.byte_size
    if old_reason in _NOT_RELEASABLE or size == 0:
        # Nothing was kept of an input refused unread (too large to copy): the site re-sends.
        return ActionResult(entry_id, sha, site, "refused", old_reason)
    try:
        raw = pipe.quarantine.read(sha)
    except FileNotFoundError:
        logger.warning("quarantine entry %d has no raw file to release", entry_id)
        return ActionResult(entry_id, sha, site, "missing")
    outcome = pipe.ingest(raw, site, RELEASE_SOURCE)
    details: dict[str, object] = {
        "entry": entry_id,
        "site": site,
        "outcome": outcome.kind,
        "previous_reason_code": old_reason,
    }
    with audited_transaction(pipe.engine) as session:
        entry = _entry(session, entry_id)
        if outcome.kind == "quarantined":
            # Still refused: the entry stays held, with the reason of the current rules.
            entry.reason_code = outcome.reason_code or entry.reason_code
            entry.reason = outcome.reason or entry.reason
            details["reason_code"] = entry.reason_code
        else:
            entry.released_at = utcnow()
        append_audit_many(session, [AuditEntry(actor, RELEASE_ACTION, sha, details)])
    if outcome.kind == "quarantined":
        return ActionResult(entry_id, sha, site, "requarantined", outcome.reason_code)
    # Only after the commit: a crash before it leaves the entry held, with its file.
    pipe.quarantine.remove(sha)
    kind = "released" if outcome.kind == "stored" else "released-duplicate"
    return ActionResult(entry_id, sha, site, kind)


def discard_entries(
    engine: Engine,
    quarantine: Quarantine,
    entry_ids: Sequence[int],
    *,
    actor: str,
) -> list[ActionResult]:
    """Delete the raw files of the held entries ``entry_ids`` now; the rows stay (closed).

    One transaction closes every entry with its audit record (``quarantine.discard``);
    the files are deleted after it commits.
    """
    results: list[ActionResult] = []
    with audited_transaction(engine) as session:
        audit: list[AuditEntry] = []
        now = utcnow()
        for entry_id in entry_ids:
            entry = _entry(session, entry_id)
            if entry.released_at is not None:
                continue
            entry.released_at = now
            audit.append(
                AuditEntry(
                    actor,
                    DISCARD_ACTION,
                    entry.raw_sha256,
                    {
                        "entry": entry.id,
                        "site": entry.site_id,
                        "reason_code": entry.reason_code,
                        "bytes": entry.byte_size,
                    },
                )
            )
            results.append(
                ActionResult(
                    entry.id, entry.raw_sha256, entry.site_id, "discarded", entry.reason_code
                )
            )
        append_audit_many(session, audit)
    for result in results:
        quarantine.remove(result.sha256)
    return results
