"""Snapshots as catalog records: create one, list them, get one, load its verified manifest."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from medai.audit import append_audit, audited_transaction
from medai.audit.actors import operator
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Snapshot
from medai.config import Settings, get_settings
from medai.errors import SnapshotError, SnapshotExists, SnapshotNotFound
from medai.snapshots.locked_test import describe_test_set
from medai.snapshots.manifest import (
    SNAPSHOT_DIR,
    content_hash,
    manifest_counts,
    manifest_relpath,
    manifest_table,
    read_verified,
    to_pandas,
    write_manifest,
)
from medai.snapshots.query import SnapshotQuery, collect_rows, resolve_query, validate_name
from medai.snapshots.series import read_headers, series_rows
from medai.snapshots.splits import (
    DEFAULT_FRACTIONS,
    SPLITS,
    assign_splits,
    check_fractions,
    merge_resends,
)
from medai.store import ObjectStore

if TYPE_CHECKING:
    import pandas as pd
    from pydicom.dataset import Dataset
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "SnapshotInfo",
    "create_snapshot",
    "get_snapshot",
    "list_snapshots",
    "load_snapshot",
    "open_catalog",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot's catalog record; ``manifest`` is the absolute manifest path."""

    name: str
    created_at: dt.datetime
    actor: str
    query: dict[str, Any]
    seed: int
    fractions: dict[str, float]
    counts: dict[str, Any]
    content_hash: str
    manifest: Path
    test_set: dict[str, Any] | None = None
    # Series snapshots: the series left out, {"series_uid", "reason", "message"} each.
    excluded: tuple[dict[str, str], ...] = ()

    @property
    def level(self) -> str:
        """``instance`` or ``series``: what one manifest row is."""
        return str(self.query.get("level") or "instance")

    @classmethod
    def from_row(cls, row: Snapshot, settings: Settings) -> SnapshotInfo:
        counts = dict(row.counts)
        # Kept beside the counts in the catalog row (no column of its own).
        excluded = tuple(dict(entry) for entry in counts.pop("excluded", []))
        return cls(
            name=row.name,
            created_at=row.created_at,
            actor=row.actor,
            query=dict(row.query),
            seed=row.seed,
            fractions={k: float(v) for k, v in row.fractions.items()},
            counts=counts,
            content_hash=row.content_hash,
            manifest=settings.resolved_home / row.manifest_path,
            test_set=None if row.test_set is None else dict(row.test_set),
            excluded=excluded,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "actor": self.actor,
            "query": self.query,
            "seed": self.seed,
            "fractions": self.fractions,
            "counts": self.counts,
            "content_hash": self.content_hash,
            "manifest": str(self.manifest),
            "test_set": self.test_set,
            "level": self.level,
            "excluded": [dict(entry) for entry in self.excluded],
        }


def open_catalog(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """An engine on the catalog of ``settings`` and its sessions (the caller disposes of it)."""
    engine = create_engine_for(settings.resolved_database_url)
    return engine, session_factory(engine)


def create_snapshot(
    name: str,
    query: SnapshotQuery | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    settings: Settings | None = None,
    actor: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SnapshotInfo:
    """Freeze the instances matching ``query`` into the snapshot ``name``.

    The manifest, the catalog row and a ``snapshot.create`` audit record are written in
    one catalog transaction (the manifest file just before it commits). At series level
    (``query.level == "series"``) each series is assembled into a volume from its
    de-identified headers (:mod:`medai.snapshots.series`); the headers are read before the
    transaction, so the audit chain is not held while the store is read.

    Parameters
    ----------
    name
        A new snapshot name (see :func:`validate_name`).
    query
        What to take (:class:`SnapshotQuery`); everything labelled by default.
    seed
        Seed of the patient split shuffle.
    fractions
        Train, val and test fractions of patients.
    settings
        Where the catalog and home are; :func:`medai.config.get_settings` by default.
    actor
        Who is recorded; the login name by default.
    progress
        Called as ``progress(done, total)`` while series headers are read.

    Returns
    -------
    SnapshotInfo

    Raises
    ------
    SnapshotExists
        If ``name`` is taken (snapshots are immutable).
    SnapshotError
        On a bad name, split, finding, or when nothing matches.
    UnknownSite
        If a site is not one of the campaign's.
    """
    validate_name(name)
    split_fractions = check_fractions(fractions)
    settings = settings or get_settings()
    actor = actor or operator()
    relpath = manifest_relpath(name)
    home = settings.resolved_home
    query = query or SnapshotQuery()
    engine, sessions = open_catalog(settings)
    try:
        headers = _prefetch_headers(sessions, query, settings, progress)
        with audited_transaction(sessions) as session:
            if session.scalar(select(Snapshot.id).where(Snapshot.name == name)) is not None:
                raise SnapshotExists(_exists_message(name))
            resolved = resolve_query(session, query)
            rows = collect_rows(session, resolved)
            if not rows:
                raise SnapshotError(
                    f"no instances match the query {json.dumps(resolved.to_dict())}"
                    + (" (only labelled studies are taken)" if resolved.labelled_only else "")
                )
            excluded: list[dict[str, str]] = []
            if resolved.level == "series":
                # Instances that arrived since the prefetch are read now.
                store = ObjectStore(settings.resolved_store_dir)
                known = read_headers(store, (r["store_key"] for r in rows), known=headers)
                rows, excluded, linked = series_rows(rows, known)
                if not rows:
                    raise SnapshotError(_no_volume_message(excluded))
            else:
                # A re-sent image is listed once, and its patients share a split.
                rows, linked = merge_resends(rows)
            splits = assign_splits({row["patient"] for row in rows}, split_fractions, seed, linked)
            for row in rows:
                row["split"] = splits[row["patient"]]
            test_set = describe_test_set(
                session, home, rows, seed=seed, test_fraction=split_fractions[2]
            )
            table = manifest_table(rows, resolved.findings, resolved.level)
            digest = content_hash(table)
            counts = manifest_counts(rows, resolved.findings, resolved.level)
            if excluded:
                counts["excluded"] = excluded
            snapshot = Snapshot(
                name=name,
                actor=actor,
                query=resolved.to_dict(),
                seed=seed,
                fractions=dict(zip(SPLITS, split_fractions, strict=True)),
                counts=counts,
                content_hash=digest,
                manifest_path=relpath,
                test_set=test_set,
            )
            session.add(snapshot)
            session.flush()  # a concurrent creator of the same name waits or fails here
            append_audit(
                session,
                actor=actor,
                action="snapshot.create",
                subject=name,
                details={
                    "content_hash": digest,
                    "seed": seed,
                    "counts": counts["total"],
                    "test_set": test_set,
                    **({"excluded_series": len(excluded)} if excluded else {}),
                },
            )
            write_manifest(table, home / relpath, home / SNAPSHOT_DIR / ".tmp")
            info = SnapshotInfo.from_row(snapshot, settings)
    except IntegrityError:
        raise SnapshotExists(_exists_message(name)) from None
    finally:
        engine.dispose()
    logger.info(
        "snapshot %s created: %d instances, %d patients, hash %s",
        name,
        counts["total"]["instances"],
        counts["total"]["patients"],
        digest,
    )
    return info


def _prefetch_headers(
    sessions: sessionmaker[Session],
    query: SnapshotQuery,
    settings: Settings,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Dataset]:
    """A series snapshot's headers, read outside the audited transaction ({} otherwise)."""
    if query.normalized().level != "series":
        return {}
    with sessions() as session:
        rows = collect_rows(session, resolve_query(session, query))
    store = ObjectStore(settings.resolved_store_dir)
    return read_headers(store, (row["store_key"] for row in rows), progress=progress)


def _no_volume_message(excluded: Sequence[dict[str, str]]) -> str:
    reasons = sorted({entry["reason"] for entry in excluded})
    return (
        f"no series could be assembled into a volume ({len(excluded)} refused: "
        f"{', '.join(reasons)}); see `medai snapshot create --help` on series snapshots"
    )


def _exists_message(name: str) -> str:
    return (
        f"a snapshot named {name!r} already exists and snapshots are immutable: choose another name"
    )


def list_snapshots(settings: Settings | None = None) -> list[SnapshotInfo]:
    """Every snapshot, oldest first."""
    settings = settings or get_settings()
    engine, sessions = open_catalog(settings)
    try:
        with sessions() as session:
            rows = session.scalars(select(Snapshot).order_by(Snapshot.created_at, Snapshot.id))
            return [SnapshotInfo.from_row(row, settings) for row in rows]
    finally:
        engine.dispose()


def get_snapshot(name: str, settings: Settings | None = None) -> SnapshotInfo:
    """The snapshot ``name``; raises :class:`SnapshotNotFound` if there is none."""
    settings = settings or get_settings()
    engine, sessions = open_catalog(settings)
    try:
        with sessions() as session:
            row = session.scalar(select(Snapshot).where(Snapshot.name == name))
            if row is None:
                known = list(session.scalars(select(Snapshot.name).order_by(Snapshot.name)))
                raise SnapshotNotFound(
                    f"no snapshot named {name!r}; "
                    + (f"snapshots: {', '.join(known)}" if known else "there are no snapshots")
                )
            return SnapshotInfo.from_row(row, settings)
    finally:
        engine.dispose()


def load_snapshot(name: str, settings: Settings | None = None) -> pd.DataFrame:
    """Load snapshot ``name``'s manifest as a DataFrame, after checking its content hash.

    Strings are ``string`` dtype, ``rows``/``columns`` ``Int32`` and each finding ``Int8``
    (``<NA>`` where not labelled). ``df.attrs["snapshot"]`` holds the catalog record
    (:meth:`SnapshotInfo.to_dict`).

    Raises
    ------
    SnapshotNotFound
        If there is no such snapshot.
    SnapshotTampered
        If the manifest is missing, unreadable or not the content recorded at creation.
    """
    info = get_snapshot(name, settings)
    frame = to_pandas(read_verified(info.name, info.manifest, info.content_hash)[1])
    frame.attrs["snapshot"] = info.to_dict()
    return frame
