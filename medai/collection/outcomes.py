"""What a receiver offers the ingest pipeline, and what becomes of each input: the outcomes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from medai.errors import Rejected

__all__ = ["Offer", "Outcome", "OutcomeCounts", "OutcomeKind"]

OutcomeKind = Literal["stored", "duplicate", "quarantined"]


@dataclass(frozen=True)
class Offer:
    """One input offered by a receiver, with where it came from."""

    data: bytes
    site: str
    source: str
    run_id: int | None = None
    original_name: str | None = None
    # Set when the receiver itself could not take the input (unreadable, too large): the
    # pipeline quarantines it with this reason instead of parsing it.
    rejected: Rejected | None = None
    # Set for an instance a site's edge gateway de-identified and forwarded (the day the
    # edge received it, UTC): the pipeline re-screens it (medai.collection.edge_screen)
    # instead of de-identifying it again, stores its bytes as they are, and records an
    # EdgeReceipt for that day.
    edge_receipt_day: dt.date | None = None

    @property
    def deidentified_by_edge(self) -> bool:
        """Whether an edge gateway de-identified this input (see ``edge_receipt_day``)."""
        return self.edge_receipt_day is not None


@dataclass(frozen=True)
class Outcome:
    """What became of one offered input. There is no fourth kind."""

    kind: OutcomeKind
    sop_instance_uid: str | None = None
    reason_code: str | None = None
    reason: str | None = None

    @classmethod
    def quarantined(cls, reason_code: str, reason: str) -> Outcome:
        return cls("quarantined", None, reason_code, reason)


@dataclass(kw_only=True)
class OutcomeCounts:
    """How many offered inputs ended stored, duplicate and quarantined (by reason code).

    The tally every receiver keeps for its summary; subclass it for a run's other figures.
    """

    stored: int = 0
    duplicate: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    @property
    def accounted(self) -> int:
        """Inputs with an outcome: stored + duplicate + quarantined."""
        return self.stored + self.duplicate + sum(self.quarantined.values())

    def add(self, outcome: Outcome) -> None:
        if outcome.kind == "stored":
            self.stored += 1
        elif outcome.kind == "duplicate":
            self.duplicate += 1
        else:
            self.quarantined[outcome.reason_code or "unknown"] += 1
