"""Receipts of edge-forwarded instances: what a site's edge received, day by day.

An edge gateway de-identifies a site's instances on site and forwards them to the
centre; both sides keep an account of them per *receipt day* (the UTC date on which the
edge received the instance) so that the two can be compared without listing every
instance: per day, the number of instances and :func:`receipt_hash`, the sha256 of their
sorted pseudonymized SOP Instance UIDs. Days whose count or hash differ are the only ones
whose UIDs need to be listed (:func:`centre_receipt_uids`).

The centre's account comes from the ``edge_receipts`` table (one row per instance an
``edge`` key forwarded and the centre holds, written in the ingest transaction that
stored it or found it a duplicate); the edge builds its own from its catalog with
:func:`receipts_by_day`. Both sides import this module, so the hash is the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypedDict

from sqlalchemy import select

from medai.catalog.models import EdgeReceipt, Instance
from medai.catalog.writes import insert_ignore

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "DayReceipt",
    "centre_receipt_uids",
    "centre_receipts",
    "parse_receipt_day",
    "receipt_hash",
    "receipts_by_day",
    "record_edge_receipt",
]


class DayReceipt(TypedDict):
    """One receipt day's account: how many instances, and the hash of their UIDs."""

    count: int
    hash: str


def receipt_hash(uids: Iterable[str]) -> str:
    """The sha256 hex digest of the sorted UIDs joined by newlines (no newline at the end).

    An empty set hashes to the sha256 of no bytes. Pass each UID once
    (:func:`receipts_by_day` does).
    """
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()


def parse_receipt_day(text: str) -> dt.date:
    """The receipt day ``YYYY-MM-DD``; ValueError for anything else."""
    if len(text) != 10:
        raise ValueError(f"not a day of the form YYYY-MM-DD: {text!r}")
    return dt.date.fromisoformat(text)


def receipts_by_day(pairs: Iterable[tuple[dt.date, str]]) -> dict[str, DayReceipt]:
    """Per receipt day (``YYYY-MM-DD``, sorted), the count and hash of ``(day, uid)`` pairs."""
    days: dict[dt.date, set[str]] = defaultdict(set)
    for day, uid in pairs:
        days[day].add(uid)
    return {
        day.isoformat(): {"count": len(uids), "hash": receipt_hash(uids)}
        for day, uids in sorted(days.items())
    }


def _site_pairs(session: Session, site: str, day: dt.date | None) -> list[tuple[dt.date, str]]:
    query = (
        select(EdgeReceipt.receipt_day, Instance.sop_instance_uid)
        .join(Instance, Instance.id == EdgeReceipt.instance_id)
        .where(EdgeReceipt.site_id == site)
    )
    if day is not None:
        query = query.where(EdgeReceipt.receipt_day == day)
    return [(row_day, uid) for row_day, uid in session.execute(query)]


def centre_receipts(
    session: Session, site: str, day: dt.date | None = None
) -> dict[str, DayReceipt]:
    """The centre's account of ``site``'s edge-forwarded instances, per receipt day.

    Only ``day`` when it is given (an empty dict when the centre holds none of that day).
    """
    return receipts_by_day(_site_pairs(session, site, day))


def centre_receipt_uids(session: Session, site: str, day: dt.date) -> list[str]:
    """The sorted SOP Instance UIDs the centre holds of ``site``'s receipt day ``day``."""
    return sorted({uid for _, uid in _site_pairs(session, site, day)})


def record_edge_receipt(session: Session, *, sop_uid: str, site: str, day: dt.date) -> bool:
    """Record that the instance ``sop_uid`` came from ``site``'s edge on receipt day ``day``.

    Insert-or-ignore: an instance keeps the first receipt recorded for it (a re-send is
    the same instance). Call it in the transaction that stored the instance or found it
    a duplicate. Returns whether a row was added (False also when the instance is not
    catalogued, which the pipeline never asks).
    """
    instance_id = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid))
    if instance_id is None:
        return False
    result = session.execute(
        insert_ignore(EdgeReceipt, instance_id=instance_id, site_id=site, receipt_day=day)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
