"""The centre's side of the edge gateways: heartbeats in, receipts out.

- ``POST /v1/edge/heartbeat`` (an ``edge`` key; the site is the key's): the edge's
  version, clock, outbox depth and age, today's counts and its own receipts per day. The
  centre keeps the latest per site (``site_heartbeats``, one row replaced each time, with
  the clock skew = edge clock minus centre clock) and answers with its own account of
  the site's edge-forwarded instances per receipt day, so the edge sees at once which
  days differ.
- ``GET /v1/edge/receipts?site=SITE[&day=YYYY-MM-DD]``: that account, per receipt day
  (count and :func:`~medai.collection.edge_receipts.receipt_hash` of the pseudonymized
  SOP Instance UIDs), and with ``day`` the sorted UIDs of that day too (what
  ``medai collect reconcile`` compares). An edge key reads its own site only; steward and
  admin keys read any site.
- ``POST /v1/edge/study-keys`` (an ``edge`` key): the keyed hashes of the accession number
  and the site's PatientID of studies the centre has acknowledged, which the edge computed
  before de-identification removed what they hash. The centre records them on the key's
  site's studies where it has none (never overwriting: conflicts are counted), audits the
  counts and matches the label rows waiting for those studies
  (:func:`~medai.collection.edge_study_keys.apply_study_keys`).

Instances themselves arrive by STOW-RS (:mod:`medai.serving.dicomweb`). Nothing here
holds PHI: pseudonymized UIDs, counts and hashes only.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from medai.catalog.db import session_factory
from medai.catalog.models import Site, SiteHeartbeat, utcnow
from medai.collection.edge_receipts import (
    centre_receipt_uids,
    centre_receipts,
    parse_receipt_day,
)
from medai.collection.edge_study_keys import StudyKeys as StudyKeysEntry
from medai.collection.edge_study_keys import apply_study_keys
from medai.serving.auth import Caller, check_role
from medai.serving.context import Service
from medai.serving.deps import AnyKeyDep, ServiceDep, require_role
from medai.serving.keys import EDGE_ROLE

__all__ = [
    "DayReceipt",
    "Heartbeat",
    "HeartbeatAnswer",
    "ReceiptsAnswer",
    "StudyKeys",
    "StudyKeysAnswer",
    "StudyKeysPost",
    "router",
]

router = APIRouter(prefix="/v1/edge", tags=["edge"])

EdgeDep = Annotated[Caller, Depends(require_role(EDGE_ROLE))]
_MAX_DAYS: Final = 1000  # receipt days in one heartbeat (the campaign is shorter)
_HASH: Final = r"^[0-9a-f]{64}$"
_KEY: Final = r"^[0-9a-f]{32,64}$"  # a keyed hash (Pseudonymizer: 32 hex digits)
_PSEUDO_UID: Final = r"^2\.25\.[0-9]{1,39}$"
_MAX_STUDIES: Final = 1000


class DayReceipt(BaseModel):
    """One receipt day's account: the instances' count and the hash of their sorted UIDs."""

    count: int = Field(ge=0)
    hash: str = Field(pattern=_HASH)


def _days(value: dict[str, DayReceipt]) -> dict[str, DayReceipt]:
    if len(value) > _MAX_DAYS:
        raise ValueError(f"at most {_MAX_DAYS} receipt days")
    for day in value:
        parse_receipt_day(day)  # ValueError: answered 422 naming the field
    return value


class Heartbeat(BaseModel):
    """What an edge reports each minute (MEDAI_EDGE_HEARTBEAT_SECONDS)."""

    version: str = Field(min_length=1, max_length=64)
    sent_at: dt.datetime = Field(description="The edge's clock (ISO 8601, UTC).")
    outbox_depth: int = Field(ge=0)
    oldest_unsent_seconds: float | None = Field(default=None, ge=0)
    received_today: int = Field(ge=0)
    forwarded_today: int = Field(ge=0)
    quarantined_today: int = Field(ge=0)
    receipts: dict[str, DayReceipt] = Field(
        default_factory=dict, description="The edge's receipts per day (YYYY-MM-DD)."
    )

    _check_days = field_validator("receipts")(_days)


class HeartbeatAnswer(BaseModel):
    """The centre's answer: its time, and its account of the site per receipt day."""

    site: str
    server_time: dt.datetime
    receipts: dict[str, DayReceipt]


class ReceiptsAnswer(BaseModel):
    """The centre's account of a site's edge-forwarded instances per receipt day."""

    site: str
    receipts: dict[str, DayReceipt]
    sop_instance_uids: list[str] | None = Field(
        default=None, description="With ?day= only: the UIDs of that day, sorted."
    )


def _receipts(service: Service, site: str, day: dt.date | None = None) -> dict[str, DayReceipt]:
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        return {
            key: DayReceipt(count=value["count"], hash=value["hash"])
            for key, value in centre_receipts(session, site, day).items()
        }


@router.post(
    "/heartbeat",
    summary="An edge gateway's heartbeat (edge key)",
    response_model=HeartbeatAnswer,
    responses={400: {"description": "The body is not JSON"}},
)
def heartbeat(beat: Heartbeat, caller: EdgeDep, service: ServiceDep) -> HeartbeatAnswer:
    """Record the latest heartbeat of the key's site; answer the centre's receipts."""
    site = caller.site_id
    if site is None:  # an edge key always has one (keys.create_key)
        raise HTTPException(403, detail="this edge key is bound to no site: create a new one")
    now = utcnow()
    sent_at = beat.sent_at if beat.sent_at.tzinfo else beat.sent_at.replace(tzinfo=dt.UTC)
    values = {
        "received_at": now,
        "edge_version": beat.version,
        "clock_skew_seconds": (sent_at - now).total_seconds(),
        "outbox_depth": beat.outbox_depth,
        "oldest_unsent_seconds": beat.oldest_unsent_seconds,
        "received_today": beat.received_today,
        "forwarded_today": beat.forwarded_today,
        "quarantined_today": beat.quarantined_today,
        "receipts": {day: receipt.model_dump() for day, receipt in beat.receipts.items()},
    }
    # Not audited, on purpose: a heartbeat a minute per site would add 1,440 records a day
    # per site to the hash-chained audit log and drown the records that matter (custody,
    # keys, exports) in telemetry. It replaces one row of liveness data, holds no PHI and
    # grants or moves nothing; what the edge forwards is audited when it is ingested.
    for attempt in range(2):
        try:
            with session_factory(service.engine).begin() as session:
                row = session.get(SiteHeartbeat, site)
                if row is None:
                    session.add(SiteHeartbeat(site_id=site, **values))
                else:
                    for name, value in values.items():
                        setattr(row, name, value)
            break
        except IntegrityError:  # two heartbeats of one site raced to insert: update it
            if attempt:
                raise
    return HeartbeatAnswer(site=site, server_time=now, receipts=_receipts(service, site))


def _readable_site(caller: Caller, site: str | None, service: Service) -> str:
    """The site whose receipts ``caller`` may read: an edge key's own, any for a steward."""
    if caller.role == EDGE_ROLE:
        if site is not None and site != caller.site_id:
            raise HTTPException(
                403,
                detail=f"the edge key {caller.name!r} reads the receipts of site "
                f"{caller.site_id!r} only",
            )
        if caller.site_id is None:
            raise HTTPException(403, detail="this edge key is bound to no site")
        return caller.site_id
    check_role(caller, "steward")
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        known = list(session.scalars(select(Site.id).order_by(Site.id)))
    if site is None or site not in known:
        named = "name the site with ?site=<site id>" if site is None else f"unknown site {site!r}"
        raise HTTPException(
            400, detail=f"{named}; the campaign's sites are: {', '.join(known) or 'none'}"
        )
    return site


@router.get(
    "/receipts",
    summary="The centre's receipts of a site's edge, per receipt day",
    response_model=ReceiptsAnswer,
    response_model_exclude_none=True,
    responses={
        400: {"description": "No site (steward and admin keys), an unknown site, or a bad day"}
    },
)
def receipts(
    caller: AnyKeyDep,
    service: ServiceDep,
    site: Annotated[
        str | None,
        Query(description="The site (an edge key's own by default; required otherwise)."),
    ] = None,
    day: Annotated[
        str | None,
        Query(description="A receipt day YYYY-MM-DD: its UIDs are listed too."),
    ] = None,
) -> ReceiptsAnswer:
    """Per receipt day, how many of the site's edge instances the centre holds, and their hash."""
    chosen = _readable_site(caller, site, service)
    if day is None:
        return ReceiptsAnswer(site=chosen, receipts=_receipts(service, chosen))
    try:
        when = parse_receipt_day(day)
    except ValueError:
        raise HTTPException(400, detail="day is not a day of the form YYYY-MM-DD") from None
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:  # one read: the UIDs are the ones counted and hashed
        account = centre_receipts(session, chosen, when)
        uids = centre_receipt_uids(session, chosen, when)
    return ReceiptsAnswer(
        site=chosen,
        receipts={key: DayReceipt(**value) for key, value in account.items()},
        sop_instance_uids=uids,
    )


class StudyKeys(BaseModel):
    """One study's keys, as the edge computed them before de-identification."""

    study_uid: str = Field(pattern=_PSEUDO_UID, description="The pseudonymized StudyInstanceUID.")
    accession_key: str | None = Field(
        default=None, pattern=_KEY, description="Keyed hash of the site's accession number."
    )
    patient_key: str | None = Field(
        default=None, pattern=_KEY, description="Keyed hash of the site's own PatientID."
    )


class StudyKeysPost(BaseModel):
    """Studies the centre acknowledged, with their keys (keyed hashes only: no PHI)."""

    studies: list[StudyKeys] = Field(min_length=1, max_length=_MAX_STUDIES)


class StudyKeysAnswer(BaseModel):
    """What the centre did with the keys (counts)."""

    site: str
    studies: int = Field(description="Distinct studies in the request.")
    updated: int = Field(description="Studies that gained a key.")
    unchanged: int = Field(description="Studies that had these keys already.")
    conflicts: int = Field(description="Studies holding another value (kept, not overwritten).")
    unknown: int = Field(description="Studies the centre does not hold for this site.")
    labels_matched: int = Field(description="Label rows that found their study.")
    labels_added: int
    rows_rechecked: int = Field(description="Patient-mismatch rows checked again.")


@router.post(
    "/study-keys",
    summary="Keys of an edge's forwarded studies, for label sheets (edge key)",
    response_model=StudyKeysAnswer,
    responses={400: {"description": "The body is not JSON"}},
)
def study_keys(body: StudyKeysPost, caller: EdgeDep, service: ServiceDep) -> StudyKeysAnswer:
    """Record the accession and site-patient keys of the key's site's studies; match labels.

    Idempotent: posting the same keys again changes nothing (``unchanged``).
    """
    site = caller.site_id
    if site is None:
        raise HTTPException(403, detail="this edge key is bound to no site: create a new one")
    result = apply_study_keys(
        service.engine,
        site,
        [
            StudyKeysEntry(entry.study_uid, entry.accession_key, entry.patient_key)
            for entry in body.studies
        ],
        actor=caller.actor,
    )
    return StudyKeysAnswer(site=site, **result.to_dict())
