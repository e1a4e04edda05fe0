"""What the QIDO-RS and WADO-RS routers share: who may browse, the audit record, Accept.

**Who.** A steward key (the people who check what de-identification produced), a
``researcher`` key (who opens the collection in a viewer) or an admin key
(:data:`BROWSE_ROLES`). Clinician keys (inference), site edge keys and monitoring keys are
refused 403.

**Audit.** Every search and retrieve appends one audit record (``dicomweb.search``,
``dicomweb.retrieve``) naming the caller's key, the level, the kind of retrieve and how
many results or instances it answered; never one record per instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Depends, HTTPException
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from medai.audit import append_audit, audited_transaction
from medai.catalog.db import session_factory
from medai.serving.auth import Caller
from medai.serving.deps import CallerDep
from medai.serving.keys import role_grants

__all__ = [
    "BROWSE_ROLES",
    "PREFIX",
    "BrowserDep",
    "MediaRange",
    "audit_call",
    "parse_accept",
    "reader",
]

PREFIX = "/dicomweb"
# The roles that may search and retrieve the collection (admin is granted steward).
BROWSE_ROLES: Final = ("steward", "researcher")


def browse_caller(caller: CallerDep) -> Caller:
    """A person's key whose role may browse the collection; 403 otherwise."""
    if not any(role_grants(caller.role, role) for role in BROWSE_ROLES):
        raise HTTPException(
            403,
            detail=f"browsing the collection needs a steward, researcher or admin key; the key "
            f"{caller.name!r} has the {caller.role} role",
        )
    return caller


BrowserDep = Annotated[Caller, Depends(browse_caller)]
_PARAM = re.compile(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)')


def reader(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read (SQLite: a deferred transaction, no write lock)."""
    return session_factory(engine.execution_options(sqlite_begin="DEFERRED"))


def audit_call(
    engine: Engine,
    caller: Caller,
    action: str,
    subject: str | None,
    details: Mapping[str, Any],
) -> None:
    """Append one audit record for a DICOMweb call (the caller's key, what, how many)."""
    with audited_transaction(engine) as session:
        append_audit(session, actor=caller.actor, action=action, subject=subject, details=details)


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type="application/dicom"``."""

    media_type: str
    params: Mapping[str, str]
    quality: float

    def matches(self, media_type: str) -> bool:
        if self.quality <= 0:
            return False
        if self.media_type in ("*/*", media_type):
            return True
        major = media_type.split("/", 1)[0]
        return self.media_type == f"{major}/*"


def _split(header: str) -> Iterable[str]:
    """The comma-separated entries of a header, commas inside quotes kept."""
    entry: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            yield "".join(entry)
            entry = []
        else:
            entry.append(char)
    yield "".join(entry)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first (none sent: ``*/*``)."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges: list[MediaRange] = []
    for entry in _split(header):
        media_type, _, rest = entry.partition(";")
        media_type = media_type.strip().lower()
        if not media_type:
            continue
        params = {
            key.lower(): value.strip().strip('"') for key, value in _PARAM.findall(";" + rest)
        }
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        ranges.append(MediaRange(media_type, params, quality))
    return sorted(ranges, key=lambda item: -item.quality)
