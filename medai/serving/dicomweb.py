"""STOW-RS: sites push DICOM over HTTP (PS3.18 10.5), a steward key per sending system.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take
``multipart/related; type="application/dicom"; boundary=...`` and answer the PS3.18
Store Instances Response as ``application/dicom+json``: 200 all accepted, 202 some
failed (each failed part's reason in words in a ``Warning: 299 {+service}: ...``
header), 409 none accepted, 503 nothing could be recorded (send it again); 400 for a
malformed body or a missing/unknown site, 413 for a body over ``max_request_bytes`` or
with more parts than ``max_stow_parts``, 408 for a body that stalls or does not arrive
whole within ``body_timeout``, 415 for anything but binary DICOM parts.

**The site.** Every upload names the campaign site it comes from, with the query
parameter ``?site=<site id>`` (``store_instances(..., additional_params={"site": ...})``
in dicomweb-client) or, for clients that only take a base URL and headers (Orthanc's
DICOMweb plugin), the header ``Medai-Site: <site id>``. Unknown or missing sites are
refused with 400 naming the campaign's sites. Keys are not bound to sites: one steward
key may serve a site's several sending systems, or a regional PACS sending for several.

**Edge gateways.** A site's edge gateway sends with its ``edge`` key, which is bound to one
site: the site named must be the key's (else 403, before the body is read), and the header
``Medai-Receipt-Day: YYYY-MM-DD`` (the day the edge received the instances, shared by all
of one request) is required (400 without it). Its instances are not de-identified again
(their pseudonymized UIDs are their identity): they are re-screened and quarantined with
``edge-not-deidentified`` / ``edge-identified`` when they do not look exactly like medai's
output, else stored as they are (source ``edge``) with an ``EdgeReceipt`` for that day.
Any other key is unaffected by the header.

The body is held in memory only (never spooled to disk: it holds PHI), parsed and
ingested in worker threads. Each part goes through the ingest pipeline (source
``stow-rs``) in one batch; the audit records of the batch name the caller's key
(``apikey:<name>``). An upload cut short never reaches the pipeline, so it records
nothing: sending it again is all a site has to do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from medai.catalog.db import session_factory
from medai.catalog.models import Site
from medai.collection.edge_receipts import parse_receipt_day
from medai.collection.labels import rematch_labels
from medai.collection.receivers.stow import (
    RESPONSE_MEDIA_TYPE,
    StoreResult,
    is_valid_uid,
    store_instances,
    warning_header,
)
from medai.dicom.multipart import Part, check_content_type, parse_multipart_related
from medai.errors import CampaignNotSetUp, RequestTooLarge, UnsupportedMediaType
from medai.serving.auth import Caller, check_role
from medai.serving.context import Service
from medai.serving.deps import AnyKeyDep, ServiceDep
from medai.serving.keys import EDGE_ROLE
from medai.serving.limits import read_whole_body

__all__ = ["RECEIPT_DAY_HEADER", "SITE_HEADER", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

SITE_HEADER = "Medai-Site"
RECEIPT_DAY_HEADER = "Medai-Receipt-Day"
_STOW_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "Every instance was stored (or was already held)"},
    202: {"description": "Some instances were stored, others failed (FailedSOPSequence)"},
    400: {
        "description": "Malformed multipart body, a missing or unknown site, or (edge keys) "
        "a missing or invalid Medai-Receipt-Day"
    },
    408: {
        "description": "The upload stalled, or did not arrive whole within "
        "MEDAI_BODY_TIMEOUT: nothing was recorded, send it again"
    },
    409: {"description": "No instance was accepted (FailedSOPSequence)"},
    413: {
        "description": "The body is larger than MEDAI_MAX_REQUEST_BYTES, or holds more "
        "instances than MEDAI_MAX_STOW_PARTS: nothing was recorded"
    },
    415: {"description": 'Not multipart/related; type="application/dicom"'},
    503: {"description": "Nothing could be recorded (campaign not ready, catalog down): retry"},
}


def _site_ids(service: Service) -> list[str]:
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        return list(session.scalars(select(Site.id).order_by(Site.id)))


def upload_site(
    service: ServiceDep,
    site: Annotated[
        str | None,
        Query(description="The campaign site id the instances come from, e.g. site-a."),
    ] = None,
    site_header: Annotated[
        str | None,
        Header(alias=SITE_HEADER, description="The site id, for clients that cannot add a query."),
    ] = None,
) -> str:
    """The campaign site an upload comes from (query ``site`` or header ``Medai-Site``)."""
    named = {value.strip() for value in (site, site_header) if value and value.strip()}
    known = _site_ids(service)
    if not known:
        raise CampaignNotSetUp("no campaign is set up: run `medai campaign init FILE` first")
    listed = ", ".join(known)
    if not named:
        raise HTTPException(
            400,
            detail=f"name the sending site with ?site=<site id> or the {SITE_HEADER} header; "
            f"the campaign's sites are: {listed}",
        )
    if len(named) > 1:
        raise HTTPException(400, detail=f"?site= and {SITE_HEADER} name different sites")
    (chosen,) = named
    if chosen not in known:
        raise HTTPException(
            400, detail=f"unknown site {chosen!r}; the campaign's sites are: {listed}"
        )
    return chosen


UploadSite = Annotated[str, Depends(upload_site)]


def stow_caller(caller: AnyKeyDep) -> Caller:
    """A steward (or admin) key, or a site's edge key; 403 for any other."""
    return caller if caller.role == EDGE_ROLE else check_role(caller, "steward")


StowCallerDep = Annotated[Caller, Depends(stow_caller)]
ReceiptDayHeader = Annotated[
    str | None,
    Header(
        alias=RECEIPT_DAY_HEADER,
        description="Edge keys only (required): the UTC day YYYY-MM-DD the edge received "
        "the request's instances.",
    ),
]


def edge_receipt_day(caller: Caller, site: str, header: str | None) -> dt.date | None:
    """The receipt day of an edge key's upload (None for any other key); 403/400 otherwise.

    Checked before the body is read: an edge key may send its own site's instances only.
    """
    if caller.role != EDGE_ROLE:
        return None
    if caller.site_id != site:
        raise HTTPException(
            403,
            detail=f"the edge key {caller.name!r} speaks for site {caller.site_id!r}, not "
            f"{site!r}: an edge sends its own site's instances only",
        )
    if header is None or not header.strip():
        raise HTTPException(
            400,
            detail=f"an edge upload names the day its instances were received with the "
            f"{RECEIPT_DAY_HEADER}: YYYY-MM-DD header",
        )
    try:
        return parse_receipt_day(header.strip())
    except ValueError:
        raise HTTPException(
            400, detail=f"{RECEIPT_DAY_HEADER} is not a day of the form YYYY-MM-DD"
        ) from None


@router.post(
    "/studies",
    summary="STOW-RS: store instances of any studies",
    response_class=Response,
    responses=_STOW_RESPONSES,
)
async def store_studies(
    request: Request,
    caller: StowCallerDep,
    site: UploadSite,
    service: ServiceDep,
    receipt_day: ReceiptDayHeader = None,
) -> Response:
    day = edge_receipt_day(caller, site, receipt_day)
    return await _stow(request, caller, site, service, study=None, receipt_day=day)


@router.post(
    "/studies/{study}",
    summary="STOW-RS: store instances of one study (others fail with 0xA900)",
    response_class=Response,
    responses=_STOW_RESPONSES,
)
async def store_study(
    request: Request,
    study: Annotated[str, Path(description="The StudyInstanceUID every instance must have")],
    caller: StowCallerDep,
    site: UploadSite,
    service: ServiceDep,
    receipt_day: ReceiptDayHeader = None,
) -> Response:
    day = edge_receipt_day(caller, site, receipt_day)
    if not is_valid_uid(study):
        raise HTTPException(400, detail="the study in the URL is not a valid UID")
    return await _stow(request, caller, site, service, study=study, receipt_day=day)


async def _stow(
    request: Request,
    caller: Caller,
    site: str,
    service: Service,
    *,
    study: str | None,
    receipt_day: dt.date | None = None,
) -> Response:
    content_type = request.headers.get("content-type")
    if not content_type:
        raise UnsupportedMediaType(
            'send Content-Type: multipart/related; type="application/dicom"; ...'
        )
    check_content_type(content_type)  # refuse before reading a body we cannot take

    # Nothing is offered to the pipeline unless the body arrives whole: an upload cut short
    # or stalled records nothing, and the sender has to send it all again.
    max_bytes = service.settings.max_request_bytes
    body = await read_whole_body(
        request,
        max_bytes=max_bytes,
        idle_timeout=service.settings.body_idle_timeout,
        total_timeout=service.settings.body_timeout,
        too_large=RequestTooLarge(max_bytes),
        what="STOW-RS upload",
    )
    # Too many parts is refused (413) before any part is offered: nothing is recorded.
    parts = await run_in_threadpool(
        parse_multipart_related, content_type, body, max_parts=service.settings.max_stow_parts
    )
    del body  # the parts hold their own copies: do not keep the PHI twice

    result = await run_in_threadpool(_ingest, service, caller, site, parts, study, receipt_day)
    logger.info(
        "STOW-RS from %s by %s: %d stored, %d duplicate, %d failed",
        site,
        caller.actor,
        result.stored,
        result.duplicate,
        result.failed,
    )
    response = Response(
        json.dumps(result.body), status_code=result.status, media_type=RESPONSE_MEDIA_TYPE
    )
    # PS3.18: the warn-agent is {+service}, the base URL of this DICOMweb service.
    service_url = str(request.base_url).rstrip("/") + router.prefix
    for text in result.warnings:
        response.headers.append("Warning", warning_header(service_url, text))
    if result.status == 503:
        response.headers["Retry-After"] = "30"
    return response


def _ingest(
    service: Service,
    caller: Caller,
    site: str,
    parts: list[Part],
    study: str | None,
    receipt_day: dt.date | None,
) -> StoreResult:
    # Not set up (CampaignError, KeyFileError: 503) and UnknownSite (400) are answered
    # by medai.serving.errors.
    pipeline = service.pipeline(caller.actor)
    result = store_instances(
        pipeline, parts, site, study_instance_uid=study, edge_receipt_day=receipt_day
    )
    try:
        # Label-sheet rows imported before these images can find their studies now.
        with session_factory(pipeline.engine).begin() as session:
            rematch_labels(session, actor=caller.actor)
    except SQLAlchemyError as exc:  # the instances are in custody; the next run re-matches
        logger.warning("label re-match after STOW-RS failed: %s", type(exc).__name__)
    return result
