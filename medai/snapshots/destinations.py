"""Where ``medai snapshot export NAME --to DEST`` sends a snapshot, and what it has confirmed.

``DEST`` is read by :func:`parse_destination`: ``http(s)://...`` is a DICOMweb server
(STOW-RS), ``AE@HOST:PORT`` a DICOM node (C-STORE), anything else a folder written as
DICOM media with a DICOMDIR. A destination takes the snapshot's instances in batches and
answers, for each, whether it is confirmed there (:class:`Sent`). An export to a server or
node keeps an :class:`ExportState` file under ``<home>/exports/``: the instances confirmed,
by store key (a sha256, no identifier), so that the same export run again sends only the
rest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from medai.errors import SnapshotError
from medai.store import write_atomically

__all__ = [
    "Destination",
    "ExportItem",
    "ExportState",
    "PartialSend",
    "Sent",
    "destination_kind",
]

_NODE = re.compile(r"[^@/\\]{1,16}@[^:@/\s]+:\d{1,5}")


@dataclass(frozen=True)
class ExportItem:
    """One instance to export: its store key, and its bytes once read."""

    key: str  # sha256 of the Part 10 bytes in the object store
    data: bytes
    sop_uid: str  # the (pseudonymized) SOP Instance UID
    sop_class: str
    transfer_syntax: str


@dataclass(frozen=True)
class Sent:
    """What a destination said of one instance: confirmed, or why not."""

    key: str
    confirmed: bool
    reason: str = ""


class PartialSend(Exception):  # noqa: N818 - a carrier, not an error of its own
    """A batch stopped part-way: what was answered before ``error`` stopped it."""

    def __init__(self, sent: list[Sent], error: SnapshotError) -> None:
        super().__init__(str(error))
        self.sent = sent
        self.error = error


class Destination(Protocol):
    """A place a snapshot's instances go to."""

    kind: str  # folder | stow-rs | c-store

    def describe(self) -> str:
        """Where, without credentials (for messages, the audit and the state file)."""
        ...

    def send(self, items: list[ExportItem]) -> list[Sent]:
        """Send a batch; one :class:`Sent` per item, in order."""
        ...

    def close(self) -> None: ...


def destination_kind(text: str) -> str:
    """``stow-rs``, ``c-store`` or ``folder``: how ``--to`` text is read."""
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return "stow-rs"
    if _NODE.fullmatch(text.strip()):
        return "c-store"
    if "://" in text:
        raise SnapshotError(
            f"{text.split('://')[0]}:// is not a destination: give a folder, an http(s):// "
            "DICOMweb root or a DICOM node AE@HOST:PORT"
        )
    return "folder"


@dataclass
class ExportState:
    """The instances an export to one destination has confirmed (by store key)."""

    path: Path
    snapshot: str
    content_hash: str
    destination: str
    confirmed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_export(
        cls, home: Path, snapshot: str, content_hash: str, destination: str
    ) -> ExportState:
        """The state of exporting ``snapshot`` to ``destination``: read back, or new."""
        ident = hashlib.sha256(f"{snapshot}\n{content_hash}\n{destination}".encode()).hexdigest()
        path = home / "exports" / f"{ident[:32]}.json"
        state = cls(path, snapshot, content_hash, destination)
        if path.exists():
            try:
                data: Any = json.loads(path.read_text(encoding="utf-8"))
                state.confirmed = {str(key) for key in data["confirmed"]}
            except (OSError, ValueError, KeyError, TypeError):
                raise SnapshotError(
                    f"the export state {path} is unreadable: delete it to export everything again"
                ) from None
        return state

    def save(self) -> None:
        """Write the state atomically (a crash leaves the old or the new one)."""
        body = {
            "snapshot": self.snapshot,
            "content_hash": self.content_hash,
            "destination": self.destination,
            "confirmed": sorted(self.confirmed),
            "failed": dict(sorted(self.failed.items())),
        }
        text = json.dumps(body, indent=1) + "\n"
        tmp = self.path.parent / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        write_atomically(text.encode("utf-8"), self.path, tmp, mode=0o600)
