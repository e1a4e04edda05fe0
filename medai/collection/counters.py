"""The progress counters an ingest batch adds to, written in the same transaction as its rows.

:class:`~medai.catalog.models.ProgressCount` holds, per site, UTC day, modality and body
part, the studies, instances and bytes catalogued; campaign progress reads only these
rows. A study counts on the day its first instance is catalogued, once, because only the
transaction that inserted the study row counts it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING

from medai.catalog.models import ProgressCount
from medai.catalog.writes import add_to_counters

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from medai.dicom.metadata import InstanceMetadata

__all__ = ["ProgressCounters"]


class ProgressCounters:
    """The batch's additions to :class:`~medai.catalog.models.ProgressCount`."""

    KEY = ("site_id", "day", "modality", "body_part")
    """The counter table's key columns (what :func:`~medai.catalog.db.add_to_counters` adds on)."""

    def __init__(self, today: dt.date) -> None:
        self._today = today
        self._studies: Counter[tuple[str, str, str]] = Counter()
        self._instances: Counter[tuple[str, str, str]] = Counter()
        self._bytes: Counter[tuple[str, str, str]] = Counter()

    @staticmethod
    def _kind(site: str, metadata: InstanceMetadata) -> tuple[str, str, str]:
        return (site, metadata.modality or "", metadata.body_part or "")

    def add_study(self, site: str, metadata: InstanceMetadata) -> None:
        """Count a study this batch inserted (``metadata`` of its first instance)."""
        self._studies[self._kind(site, metadata)] += 1

    def add_instance(self, site: str, metadata: InstanceMetadata, byte_size: int) -> None:
        """Count an instance this batch stored, and its de-identified size."""
        kind = self._kind(site, metadata)
        self._instances[kind] += 1
        self._bytes[kind] += byte_size

    def rows(self) -> list[dict[str, object]]:
        """The additions as counter rows, one per (site, modality, body part)."""
        kinds = set(self._studies) | set(self._instances)
        return [
            {
                "site_id": site,
                "day": self._today,
                "modality": modality,
                "body_part": body_part,
                "studies": self._studies[(site, modality, body_part)],
                "instances": self._instances[(site, modality, body_part)],
                "bytes": self._bytes[(site, modality, body_part)],
            }
            for site, modality, body_part in kinds
        ]

    def write(self, session: Session) -> None:
        """Add the batch's counts to the counter rows, inside the batch's transaction."""
        add_to_counters(session, ProgressCount, self.KEY, self.rows())
