"""QIDO-RS: search the de-identified collection for studies, series and instances (PS3.18 10.6).

``GET /dicomweb/studies``, ``/dicomweb/series``, ``/dicomweb/instances``,
``/dicomweb/studies/{study}/series``, ``/dicomweb/studies/{study}/instances`` and
``/dicomweb/studies/{study}/series/{series}/instances`` answer ``application/dicom+json``:
a JSON array of datasets, each with a ``RetrieveURL`` for WADO-RS. Steward (or admin)
keys only; every search is audited once (``dicomweb.search``: level, result count, the
attributes matched on, never their values).

Matching (:mod:`medai.catalog.qido`): StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID
and SOPClassUID (lists), PatientID (the pseudonym; ``*``/``?`` wildcards), StudyDate (a day
or a range ``YYYYMMDD-YYYYMMDD``, open at either end), ModalitiesInStudy, Modality,
SeriesNumber; ``limit`` (at most 1000, default 100), ``offset``, ``includefield``
(``all`` or keywords/tags). Attributes de-identification removes (PatientName,
AccessionNumber, descriptions) match nothing when given a value, and the answer carries a
``Warning: 299`` header saying so. Anything malformed is answered 400 with what to fix.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from medai.catalog.qido import Level, QidoQuery, parse_query, search
from medai.collection.receivers.stow import is_valid_uid, warning_header
from medai.errors import DicomwebQueryError, NotAcceptable
from medai.serving.auth import Caller
from medai.serving.context import Service
from medai.serving.deps import ServiceDep
from medai.serving.dicomweb_access import PREFIX, BrowserDep, audit_call, parse_accept, reader

__all__ = ["DICOM_JSON", "router"]

router = APIRouter(prefix=PREFIX, tags=["dicomweb"], default_response_class=Response)

DICOM_JSON = "application/dicom+json"
_ACCEPTED = (DICOM_JSON, "application/json")
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The matches (a JSON array, empty when nothing matches)",
        "content": {DICOM_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}},
    },
    400: {"description": "A malformed query: unknown attribute, bad value, bad limit/offset"},
    406: {"description": "Accept names no JSON media type"},
}
StudyUid = Annotated[str, Path(description="A StudyInstanceUID (pseudonymized)")]
SeriesUid = Annotated[str, Path(description="A SeriesInstanceUID (pseudonymized)")]


def _check_uids(*uids: str) -> None:
    if not all(is_valid_uid(uid) for uid in uids):
        raise DicomwebQueryError("a UID in the URL is not a valid UID (digits and dots)")


def _retrieve_url(base: str, item: dict[str, Any], level: Level) -> str:
    def uid(tag: str) -> str:
        return str(item[tag]["Value"][0])

    url = f"{base}/studies/{uid('0020000D')}"
    if level in ("series", "instance"):
        url += f"/series/{uid('0020000E')}"
    if level == "instance":
        url += f"/instances/{uid('00080018')}"
    return url


def _answer(
    request: Request,
    service: Service,
    caller: Caller,
    level: Level,
    fixed: dict[str, str],
) -> Response:
    """Parse, search, audit and answer one QIDO-RS request (in a worker thread)."""
    if not any(
        r.matches(DICOM_JSON) or r.matches("application/json")
        for r in parse_accept(request.headers.get("accept"))
    ):
        raise NotAcceptable(f"QIDO-RS answers {DICOM_JSON}: accept it (or */*)")
    query: QidoQuery = parse_query(level, request.query_params.multi_items(), fixed=fixed)
    with reader(service.engine)() as session:
        page = search(session, query)
    results = page.results
    base = str(request.base_url).rstrip("/") + PREFIX
    for item in results:
        item["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, item, level)]}
    audit_call(
        service.engine,
        caller,
        "dicomweb.search",
        fixed.get("StudyInstanceUID"),
        {
            "level": level,
            "results": len(results),
            "matched_on": sorted(
                {k for k, v in request.query_params.multi_items() if v}
                - {"limit", "offset", "includefield", "fuzzymatching"}
            )[:32],
            "offset": query.offset,
        },
    )
    response = Response(json.dumps(results), media_type=DICOM_JSON)
    if page.more:  # PS3.18 10.6.3.2: tell the client a further page exists
        response.headers.append(
            "Warning",
            warning_header(
                base,
                f"There are additional results that can be requested: offset="
                f"{query.offset + len(results)}",
            ),
        )
    for keyword in query.never_kept:
        response.headers.append(
            "Warning",
            warning_header(
                base, f"{keyword} is removed by de-identification: no instance matches it"
            ),
        )
    return response


@router.get("/studies", summary="QIDO-RS: search studies", responses=_RESPONSES)
def search_studies(request: Request, caller: BrowserDep, service: ServiceDep) -> Response:
    return _answer(request, service, caller, "study", {})


@router.get("/series", summary="QIDO-RS: search series of all studies", responses=_RESPONSES)
def search_all_series(request: Request, caller: BrowserDep, service: ServiceDep) -> Response:
    return _answer(request, service, caller, "series", {})


@router.get("/instances", summary="QIDO-RS: search instances of all studies", responses=_RESPONSES)
def search_all_instances(request: Request, caller: BrowserDep, service: ServiceDep) -> Response:
    return _answer(request, service, caller, "instance", {})


@router.get(
    "/studies/{study}/series", summary="QIDO-RS: search a study's series", responses=_RESPONSES
)
def search_series(
    request: Request, study: StudyUid, caller: BrowserDep, service: ServiceDep
) -> Response:
    _check_uids(study)
    return _answer(request, service, caller, "series", {"StudyInstanceUID": study})


@router.get(
    "/studies/{study}/instances",
    summary="QIDO-RS: search a study's instances",
    responses=_RESPONSES,
)
def search_study_instances(
    request: Request, study: StudyUid, caller: BrowserDep, service: ServiceDep
) -> Response:
    _check_uids(study)
    return _answer(request, service, caller, "instance", {"StudyInstanceUID": study})


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: search a series' instances",
    responses=_RESPONSES,
)
def search_series_instances(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    caller: BrowserDep,
    service: ServiceDep,
) -> Response:
    _check_uids(study, series)
    return _answer(
        request,
        service,
        caller,
        "instance",
        {"StudyInstanceUID": study, "SeriesInstanceUID": series},
    )
