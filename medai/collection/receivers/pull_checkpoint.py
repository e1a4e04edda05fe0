"""A pull's (DICOMweb or DIMSE) state in the catalog: what it has done, in pseudonymized UIDs only.

A pull is identified by its site, URL (without credentials) and date window; its
:class:`PullCheckpoint` lives in the ``checkpoint`` column of each run's
:class:`~medai.catalog.models.ImportRun` row, so the next run of the same pull resumes
from the newest one (:func:`previous_checkpoint`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from medai.catalog.db import session_factory
from medai.catalog.models import ImportRun

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["CHECKPOINT_VERSION", "SOURCE", "PullCheckpoint", "previous_checkpoint"]

SOURCE = "dicomweb-pull"
CHECKPOINT_VERSION = 1


@dataclass
class PullCheckpoint:
    """What a pull has done, in ``ImportRun.checkpoint`` (pseudonymized UIDs only).

    ``done`` maps each study pulled completely to its instance count then (a study
    the archive later reports with more instances is listed again); ``quarantined``
    maps studies to their instances quarantined, so that they are not fetched again.
    """

    pull: str  # sha256 of site, URL (without credentials) and window: the pull's identity
    url: str
    since: str
    until: str | None
    done: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, list[str]] = field(default_factory=dict)
    # Date windows ("first/last", ISO dates) whose every study is done, all in the past:
    # a DIMSE pull does not search them again.
    windows_done: list[str] = field(default_factory=list)
    studies_found: int | None = None
    complete: bool = False
    error: str | None = None

    @staticmethod
    def identity(site: str, url: str, since: dt.date, until: dt.date | None) -> str:
        text = "\n".join((site, url, since.isoformat(), until.isoformat() if until else ""))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"kind": SOURCE, "version": CHECKPOINT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> PullCheckpoint | None:
        """The checkpoint in ``data``, or None when it is not one this version reads."""
        if not isinstance(data, dict) or data.get("kind") != SOURCE:
            return None
        if data.get("version") != CHECKPOINT_VERSION:
            return None
        names = cls.__dataclass_fields__.keys()
        return cls(**{name: data[name] for name in names if name in data})


def previous_checkpoint(
    engine: Engine, site: str, pull: str, source: str = SOURCE
) -> PullCheckpoint | None:
    """The newest checkpoint of the same pull (each run carries all earlier progress).

    ``source`` is the runs' ``ImportRun.source`` (``dicomweb-pull`` or ``dimse-pull``); the
    checkpoint's own format is the same for both.
    """
    reads = session_factory(engine.execution_options(sqlite_begin="DEFERRED"))
    with reads() as session:
        rows = session.scalars(
            select(ImportRun.checkpoint)
            .where(ImportRun.site_id == site, ImportRun.source == source)
            .order_by(ImportRun.id.desc())
        )
        for data in rows:
            checkpoint = PullCheckpoint.from_json(data)
            if checkpoint is not None and checkpoint.pull == pull:
                return checkpoint
    return None
