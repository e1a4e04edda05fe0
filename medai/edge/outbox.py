"""The edge's durable outbox: an index of its catalog's stored instances until the centre has them.

The outbox is ``$MEDAI_HOME/edge/outbox.sqlite`` (WAL, ``synchronous=FULL``), a small SQLite
database apart from the catalog. It never holds instance bytes (those stay in the edge's
content-addressed store); one row per stored instance says where its file is, its receipt day
(the UTC date the edge received it), how often it was tried and, once the centre answered for
it, when and with what outcome. It is filled from the catalog (:meth:`Outbox.fill`: instances
above the highest id already enqueued, re-reading a small window below it so an instance
whose transaction committed late is not skipped), so a crash between ingest and enqueue loses
nothing: the next fill finds the instance in the catalog. Acknowledging is idempotent, and an
instance is only acknowledged for what the centre's response lists, so a kill -9 at any
point leaves at worst a batch the centre already has, which it answers as duplicates.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from medai.catalog.db import session_factory
from medai.catalog.models import Instance, QuarantineEntry, Series, Study
from medai.collection.edge_receipts import receipt_hash

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "FILL_LOOKBACK",
    "Outbox",
    "OutboxItem",
    "OutboxStats",
    "outbox_path",
    "quarantined_on",
]

FILL_LOOKBACK = 256
"""Catalog ids below the highest enqueued one that each fill reads again.

On PostgreSQL ids come from a sequence, so a transaction that took a lower id may commit after
one that took a higher id; re-reading a window below the highest enqueued id (insert-or-ignore)
catches it. On SQLite (the edge's default) writers are serialized and ids appear in order.
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    instance_id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    store_key TEXT NOT NULL,
    byte_size INTEGER NOT NULL,
    receipt_day TEXT NOT NULL,
    received_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at REAL,
    acked_at REAL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS ix_outbox_unsent ON outbox (acked_at, instance_id);
CREATE INDEX IF NOT EXISTS ix_outbox_day ON outbox (receipt_day);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS study_keys (
    study_uid TEXT PRIMARY KEY,
    accession_key TEXT,
    patient_key TEXT,
    posted_at REAL
);
"""
# Added with the study keys: the study of each outbox instance (NULL in rows enqueued before).
_STUDY_COLUMN = "ALTER TABLE outbox ADD COLUMN study_uid TEXT"
_STUDY_INDEX = "CREATE INDEX IF NOT EXISTS ix_outbox_study ON outbox (study_uid)"


def outbox_path(home: Path) -> Path:
    """Where the outbox of the edge home ``home`` lives."""
    return home / "edge" / "outbox.sqlite"


def _day_start(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True)
class OutboxItem:
    """One instance waiting for the centre: where its de-identified file is, and its day."""

    instance_id: int
    sop_instance_uid: str
    store_key: str
    byte_size: int
    receipt_day: str
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    """The outbox at a glance (``medai edge status``, the heartbeat)."""

    depth: int
    oldest_unsent_seconds: float | None
    enqueued: int
    acknowledged: int
    quarantined_at_centre: int


class Outbox:
    """The outbox index of one edge home; safe to share between threads.

    Parameters
    ----------
    path
        The SQLite file (created with its folder).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "study_uid" not in columns:
            self._db.execute(_STUDY_COLUMN)
        self._db.execute(_STUDY_INDEX)
        self._hash_cache: dict[str, tuple[int, int, str]] = {}

    def close(self) -> None:
        """Close the database (further calls fail)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, tuple(params)))

    # -- filling ---------------------------------------------------------------------------

    def highest_enqueued(self) -> int:
        """The highest catalog instance id in the outbox (0 when empty)."""
        return int(self._query("SELECT coalesce(max(instance_id), 0) FROM outbox")[0][0])

    def fill(self, engine: Engine, *, limit: int = 5000, now: float | None = None) -> int:
        """Enqueue the catalog's instances not yet in the outbox; return how many were added.

        Reads instances with an id above the highest enqueued one (less :data:`FILL_LOOKBACK`),
        ``limit`` at most per call; call it until it returns 0 to catch up.
        """
        since = max(0, self.highest_enqueued() - FILL_LOOKBACK)
        read = engine.execution_options(sqlite_begin="DEFERRED")
        with session_factory(read)() as session:
            rows = session.execute(
                select(
                    Instance.id,
                    Instance.sop_instance_uid,
                    Instance.store_key,
                    Instance.byte_size,
                    Instance.received_at,
                    Study.study_uid,
                    Study.accession_key,
                    Study.patient_key,
                )
                .join(Series, Series.id == Instance.series_id)
                .join(Study, Study.id == Series.study_id)
                .where(Instance.id > since)
                .order_by(Instance.id)
                .limit(limit + FILL_LOOKBACK)
            ).all()
        if not rows:
            return 0
        stamp = time.time() if now is None else now
        values = []
        keys: dict[str, tuple[str, str | None, str | None]] = {}
        for row in rows:
            if row.accession_key is not None or row.patient_key is not None:
                keys[row.study_uid] = (row.study_uid, row.accession_key, row.patient_key)
            received = row.received_at
            if received.tzinfo is None:
                received = received.replace(tzinfo=dt.UTC)
            received = received.astimezone(dt.UTC)
            values.append(
                (
                    row.id,
                    row.sop_instance_uid,
                    row.store_key,
                    row.byte_size,
                    received.date().isoformat(),
                    received.timestamp(),
                    stamp,
                    row.study_uid,
                )
            )
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO outbox (instance_id, sop_instance_uid, store_key, "
                "byte_size, receipt_day, received_at, enqueued_at, study_uid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            added = db.total_changes - before
            # The study's keys, kept until posted (a study's keys are set when it is created).
            db.executemany(
                "INSERT OR IGNORE INTO study_keys (study_uid, accession_key, patient_key) "
                "VALUES (?, ?, ?)",
                list(keys.values()),
            )
        return int(added)

    # -- batches ---------------------------------------------------------------------------

    def next_batch(self, *, max_instances: int, max_bytes: int) -> list[OutboxItem]:
        """The next instances to send: unacknowledged, oldest first, all of one receipt day.

        At most ``max_instances`` and ``max_bytes`` (an instance larger than ``max_bytes``
        travels alone). Empty when everything has been acknowledged.
        """
        first = self._query(
            "SELECT receipt_day FROM outbox WHERE acked_at IS NULL ORDER BY instance_id LIMIT 1"
        )
        if not first:
            return []
        day = first[0][0]
        rows = self._query(
            "SELECT instance_id, sop_instance_uid, store_key, byte_size, receipt_day, attempts "
            "FROM outbox WHERE acked_at IS NULL AND receipt_day = ? ORDER BY instance_id LIMIT ?",
            (day, max_instances),
        )
        batch: list[OutboxItem] = []
        total = 0
        for row in rows:
            item = OutboxItem(*row)
            if batch and total + item.byte_size > max_bytes:
                break
            batch.append(item)
            total += item.byte_size
        return batch

    def record_attempt(self, items: Iterable[OutboxItem], *, now: float | None = None) -> None:
        """Count one more attempt of each of ``items`` (before it is sent)."""
        stamp = time.time() if now is None else now
        ids = [(stamp, item.instance_id) for item in items]
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ? "
                "WHERE instance_id = ?",
                ids,
            )

    def acknowledge(self, outcomes: dict[str, str], *, now: float | None = None) -> int:
        """Mark the instances the centre answered for; return how many were newly marked.

        ``outcomes`` maps a SOP Instance UID to the centre's outcome (``"referenced"`` or
        ``"failed:<reason>"``). Already acknowledged instances keep their first answer.
        """
        stamp = time.time() if now is None else now
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE outbox SET acked_at = ?, outcome = ? "
                "WHERE sop_instance_uid = ? AND acked_at IS NULL",
                [(stamp, outcome, uid) for uid, outcome in outcomes.items()],
            )
            changed = db.total_changes - before
        return int(changed)

    # -- study keys: what lets the centre's label sheets find the forwarded studies ---------

    def pending_study_keys(self, *, limit: int = 500) -> list[tuple[str, str | None, str | None]]:
        """Keys not yet posted of studies the centre holds an instance of.

        ``(study_uid, accession_key, patient_key)``, for studies at least one of whose
        instances the centre acknowledged as stored or duplicate (a study whose instances it
        all quarantined is not at the centre).
        """
        rows = self._query(
            "SELECT k.study_uid, k.accession_key, k.patient_key FROM study_keys k "
            "WHERE k.posted_at IS NULL AND EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.study_uid = k.study_uid AND o.outcome = 'referenced') "
            "ORDER BY k.study_uid LIMIT ?",
            (limit,),
        )
        return [(str(uid), accession, patient) for uid, accession, patient in rows]

    def study_keys_posted(self, uids: Iterable[str], *, now: float | None = None) -> int:
        """Mark the keys of ``uids`` as received by the centre; return how many were pending."""
        stamp = time.time() if now is None else now
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE study_keys SET posted_at = ? WHERE study_uid = ? AND posted_at IS NULL",
                [(stamp, uid) for uid in uids],
            )
            changed = db.total_changes - before
        return int(changed)

    def study_keys_waiting(self) -> int:
        """Studies whose keys the centre has not received yet (posted or not yet due)."""
        return int(self._query("SELECT count(*) FROM study_keys WHERE posted_at IS NULL")[0][0])

    # -- figures ---------------------------------------------------------------------------

    def stats(self, *, now: float | None = None) -> OutboxStats:
        """Depth, age of the oldest unsent instance, totals."""
        stamp = time.time() if now is None else now
        depth, oldest, total, acked, failed = self._query(
            "SELECT sum(acked_at IS NULL), min(CASE WHEN acked_at IS NULL THEN received_at END), "
            "count(*), sum(acked_at IS NOT NULL), sum(outcome LIKE 'failed%') FROM outbox"
        )[0]
        return OutboxStats(
            depth=int(depth or 0),
            oldest_unsent_seconds=None if oldest is None else max(0.0, stamp - float(oldest)),
            enqueued=int(total or 0),
            acknowledged=int(acked or 0),
            quarantined_at_centre=int(failed or 0),
        )

    def received_on(self, day: dt.date) -> int:
        """Instances the edge received (and stored) on the UTC ``day``."""
        rows = self._query("SELECT count(*) FROM outbox WHERE receipt_day = ?", (day.isoformat(),))
        return int(rows[0][0])

    def forwarded_on(self, day: dt.date) -> int:
        """Instances the centre acknowledged on the UTC ``day``."""
        start = _day_start(day)
        rows = self._query(
            "SELECT count(*) FROM outbox WHERE acked_at >= ? AND acked_at < ?",
            (start, start + 86400.0),
        )
        return int(rows[0][0])

    def receipts(self) -> dict[str, dict[str, Any]]:
        """The edge's receipts: per receipt day, the count and hash of its SOP Instance UIDs.

        The hash is :func:`medai.collection.edge_receipts.receipt_hash` (the centre computes
        the same over what it holds). A day's hash is recomputed only when its rows changed.
        """
        days = self._query(
            "SELECT receipt_day, count(*), max(instance_id) FROM outbox "
            "GROUP BY receipt_day ORDER BY receipt_day"
        )
        result: dict[str, dict[str, Any]] = {}
        for day, count, highest in days:
            cached = self._hash_cache.get(day)
            if cached is None or cached[:2] != (count, highest):
                digest = receipt_hash(self.day_uids(day))
                cached = (count, highest, digest)
                self._hash_cache[day] = cached
            result[day] = {"count": int(count), "hash": cached[2]}
        return result

    def day_uids(self, day: str) -> list[str]:
        """The SOP Instance UIDs the edge received on ``day`` (``YYYY-MM-DD``), sorted."""
        rows = self._query(
            "SELECT sop_instance_uid FROM outbox WHERE receipt_day = ? ORDER BY sop_instance_uid",
            (day,),
        )
        return [str(r[0]) for r in rows]

    def outcomes(self, uids: Iterable[str]) -> dict[str, str | None]:
        """The centre's recorded outcome of each of ``uids`` that is in the outbox."""
        wanted = list(uids)
        result: dict[str, str | None] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for uid, outcome in self._query(
                f"SELECT sop_instance_uid, outcome FROM outbox WHERE sop_instance_uid IN ({marks})",
                chunk,
            ):
                result[str(uid)] = outcome
        return result

    # -- state: the last forward and heartbeat, for `medai edge status` --------------------

    def put_state(self, name: str, value: dict[str, Any]) -> None:
        """Keep ``value`` (JSON-able) under ``name``, replacing what was there."""
        with self._write() as db:
            db.execute(
                "INSERT INTO state (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(value, default=str)),
            )

    def get_state(self, name: str) -> dict[str, Any] | None:
        """The value kept under ``name``, or None."""
        rows = self._query("SELECT value FROM state WHERE name = ?", (name,))
        if not rows:
            return None
        value = json.loads(rows[0][0])
        return value if isinstance(value, dict) else None


def quarantined_on(engine: Engine, day: dt.date) -> int:
    """Inputs the edge quarantined (kept on site) on the UTC ``day``."""
    from sqlalchemy import func

    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    read = engine.execution_options(sqlite_begin="DEFERRED")
    with session_factory(read)() as session:
        count = session.scalar(
            select(func.count(QuarantineEntry.id)).where(
                QuarantineEntry.received_at >= start,
                QuarantineEntry.received_at < start + dt.timedelta(days=1),
            )
        )
    return int(count or 0)
