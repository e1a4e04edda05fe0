"""WADO-RS: retrieve the de-identified collection's instances, metadata and frames (PS3.18 10.4).

- ``GET /dicomweb/studies/{study}``, ``.../series/{series}``, ``.../instances/{instance}``:
  ``multipart/related; type="application/dicom"``, each instance as stored (its transfer
  syntax), streamed from the object store file by file, never a whole study in memory;
- ``.../metadata`` (study, series or instance): ``application/dicom+json``, a JSON array
  of the instances' datasets without bulk data: pixel data (and any other large binary
  value) is a ``BulkDataURI`` to ``.../instances/{instance}/bulkdata/{tag}``;
- ``.../instances/{instance}/frames/{1,2,...}``: ``multipart/related;
  type="application/octet-stream"``, one part per frame (compressed frames as encoded when
  the client accepts ``transfer-syntax=*``, else decoded to Explicit VR Little Endian);
- ``.../instances/{instance}/rendered`` and ``.../frames/{n}/rendered``: the frame as
  ``image/jpeg`` (the default) or ``image/png``, as the Accept header asks;
- ``.../instances/{instance}/bulkdata/{tag}``: one top-level binary value.

Steward (or admin) keys only (:data:`~medai.serving.dicomweb_access.BrowserDep`).
Each call appends one audit record (``dicomweb.retrieve``:
the level, what was retrieved and how many instances), whatever the number of instances.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import UID

from medai.catalog.wado import StoredInstance, locate_instances
from medai.collection.receivers.stow import is_valid_uid
from medai.dicom.frames import (
    PIXEL_DATA,
    RenderFormat,
    frame_bytes,
    metadata_json,
    parse_frame_list,
    render_frame,
)
from medai.errors import DicomwebNotFound, DicomwebQueryError, NotAcceptable
from medai.serving.auth import Caller
from medai.serving.context import Service
from medai.serving.deps import ServiceDep
from medai.serving.dicomweb_access import (
    PREFIX,
    BrowserDep,
    MediaRange,
    audit_call,
    parse_accept,
    reader,
)
from medai.store import ObjectStore

__all__ = ["router"]

router = APIRouter(prefix=PREFIX, tags=["dicomweb"], default_response_class=Response)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTETS = "application/octet-stream"
_CHUNK = 1024 * 1024
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed UID, frame list or tag in the URL"},
    404: {"description": "No such study, series, instance, frame or bulk data element"},
    406: {"description": "Accept names nothing this resource can be sent as"},
}
_MULTIPART: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "multipart/related, one part per instance (or frame)",
        "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
    },
    **_ERRORS,
}
_METADATA: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The instances' DICOM JSON, bulk data as BulkDataURIs",
        "content": {DICOM_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}},
    },
    **_ERRORS,
}
StudyUid = Annotated[str, Path(description="A StudyInstanceUID (pseudonymized)")]
SeriesUid = Annotated[str, Path(description="A SeriesInstanceUID (pseudonymized)")]
InstanceUid = Annotated[str, Path(description="A SOPInstanceUID (pseudonymized)")]


def _check_uids(*uids: str | None) -> None:
    if not all(uid is None or is_valid_uid(uid) for uid in uids):
        raise DicomwebQueryError("a UID in the URL is not a valid UID (digits and dots)")


def _multipart_accept(ranges: Sequence[MediaRange], part_type: str) -> MediaRange:
    """The Accept entry that admits multipart parts of ``part_type``; 406 without one."""
    for entry in ranges:
        if entry.quality <= 0:
            continue
        if entry.media_type == "*/*":
            return entry
        if entry.media_type == "multipart/related":
            wanted = entry.params.get("type", part_type).lower()
            if wanted in (part_type, "*/*", "*"):
                return entry
        if entry.media_type == part_type:  # PS3.18 allows the single-part form in Accept
            return entry
    raise NotAcceptable(
        f'this resource is sent as multipart/related; type="{part_type}": accept that'
    )


def _locate(
    service: Service, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    _check_uids(study, series, instance)
    with reader(service.engine)() as session:
        return locate_instances(session, study, series, instance)


def _level(series: str | None, instance: str | None) -> str:
    return "instance" if instance else ("series" if series else "study")


def _audit(
    service: Service,
    caller: Caller,
    study: str,
    series: str | None,
    instance: str | None,
    what: str,
    count: int,
) -> None:
    audit_call(
        service.engine,
        caller,
        "dicomweb.retrieve",
        study,
        {"level": _level(series, instance), "what": what, "instances": count},
    )


def _path(service: Service, item: StoredInstance) -> str:
    path = ObjectStore(service.settings.resolved_store_dir).path(item.store_key)
    if not path.is_file():
        # The catalog holds it but the store does not: an operator has to restore it.
        raise DicomwebNotFound(
            "the instance is catalogued but its file is missing from the store: "
            "operators, run `medai collection verify`"
        )
    return str(path)


def _stream_files(paths: list[str], boundary: str, content_type: str) -> Iterator[bytes]:
    """The multipart body of ``paths``, read in 1 MiB chunks (iterated in a worker thread)."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
    for path in paths:
        yield head
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _retrieve_instances(
    request: Request,
    service: Service,
    caller: Caller,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> StreamingResponse:
    accepted = _multipart_accept(parse_accept(request.headers.get("accept")), DICOM)
    wanted = accepted.params.get("transfer-syntax", "*")
    items = _locate(service, study, series, instance)
    if wanted != "*" and any(item.transfer_syntax_uid != wanted for item in items):
        raise NotAcceptable(
            "instances are sent in the transfer syntax they are stored in: accept "
            'multipart/related; type="application/dicom"; transfer-syntax=* (or no '
            "transfer-syntax)"
        )
    paths = [_path(service, item) for item in items]
    _audit(service, caller, study, series, instance, "instances", len(items))
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        _stream_files(paths, boundary, DICOM),
        media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
    )


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study", responses=_MULTIPART)
def retrieve_study(
    request: Request, study: StudyUid, caller: BrowserDep, service: ServiceDep
) -> StreamingResponse:
    return _retrieve_instances(request, service, caller, study)


@router.get(
    "/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series", responses=_MULTIPART
)
def retrieve_series(
    request: Request, study: StudyUid, series: SeriesUid, caller: BrowserDep, service: ServiceDep
) -> StreamingResponse:
    return _retrieve_instances(request, service, caller, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: retrieve an instance",
    responses=_MULTIPART,
)
def retrieve_instance(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    instance: InstanceUid,
    caller: BrowserDep,
    service: ServiceDep,
) -> StreamingResponse:
    return _retrieve_instances(request, service, caller, study, series, instance)


def _bulk_uri(base: str, item: StoredInstance, tag: int) -> str:
    return (
        f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/"
        f"{item.sop_instance_uid}/bulkdata/{tag:08X}"
    )


def _stream_metadata(base: str, service: Service, items: list[StoredInstance]) -> Iterator[bytes]:
    """A JSON array of the instances' metadata, one instance read at a time."""
    yield b"["
    for index, item in enumerate(items):
        dataset = metadata_json(
            ObjectStore(service.settings.resolved_store_dir).path(item.store_key),
            partial(_bulk_uri, base, item),
        )
        yield (b"," if index else b"") + json.dumps(dataset).encode("utf-8")
    yield b"]"


def _metadata(
    request: Request,
    service: Service,
    caller: Caller,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> StreamingResponse:
    ranges = parse_accept(request.headers.get("accept"))
    if not any(r.matches(DICOM_JSON) or r.matches("application/json") for r in ranges):
        raise NotAcceptable(f"metadata is sent as {DICOM_JSON}: accept it (or */*)")
    items = _locate(service, study, series, instance)
    for item in items:
        _path(service, item)  # a missing file is a 404 now, not a cut-off body later
    _audit(service, caller, study, series, instance, "metadata", len(items))
    base = str(request.base_url).rstrip("/") + PREFIX
    return StreamingResponse(_stream_metadata(base, service, items), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata", responses=_METADATA)
def study_metadata(
    request: Request, study: StudyUid, caller: BrowserDep, service: ServiceDep
) -> StreamingResponse:
    return _metadata(request, service, caller, study)


@router.get(
    "/studies/{study}/series/{series}/metadata",
    summary="WADO-RS: a series' metadata",
    responses=_METADATA,
)
def series_metadata(
    request: Request, study: StudyUid, series: SeriesUid, caller: BrowserDep, service: ServiceDep
) -> StreamingResponse:
    return _metadata(request, service, caller, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: an instance's metadata",
    responses=_METADATA,
)
def instance_metadata(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    instance: InstanceUid,
    caller: BrowserDep,
    service: ServiceDep,
) -> StreamingResponse:
    return _metadata(request, service, caller, study, series, instance)


def _one(service: Service, study: str, series: str, instance: str) -> tuple[StoredInstance, str]:
    (item,) = _locate(service, study, series, instance)
    return item, _path(service, item)


def _parts(parts: list[tuple[bytes, str]], boundary: str) -> bytes:
    body = bytearray()
    for data, content_type in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    return bytes(body)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="WADO-RS: frames of an instance (bulk pixel data)",
    responses=_MULTIPART,
)
def retrieve_frames(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    instance: InstanceUid,
    frames: Annotated[str, Path(description="1-based frame numbers: 1 or 1,2,3")],
    caller: BrowserDep,
    service: ServiceDep,
) -> Response:
    accepted = _multipart_accept(parse_accept(request.headers.get("accept")), OCTETS)
    item, path = _one(service, study, series, instance)
    numbers = parse_frame_list(frames, item.number_of_frames)
    wanted = accepted.params.get("transfer-syntax")
    native = wanted == "*" or wanted == item.transfer_syntax_uid
    ds = pydicom.dcmread(path)
    parts = []
    for number in numbers:
        data, syntax = frame_bytes(ds, number, native=native)
        parts.append((data, f"{OCTETS}; transfer-syntax={syntax}"))
    _audit(service, caller, study, series, instance, "frames", 1)
    boundary = secrets.token_hex(16)
    return Response(
        _parts(parts, boundary),
        media_type=f'multipart/related; type="{OCTETS}"; boundary={boundary}',
    )


def _render_type(request: Request) -> RenderFormat:
    for entry in parse_accept(request.headers.get("accept")):
        for media_type in ("image/jpeg", "image/png"):
            if entry.matches(media_type):
                return media_type
    raise NotAcceptable("rendered frames are sent as image/jpeg or image/png: accept one")


def _rendered(
    request: Request,
    service: Service,
    caller: Caller,
    ids: tuple[str, str, str],
    frame: int,
) -> Response:
    media_type = _render_type(request)
    item, path = _one(service, *ids)
    image = render_frame(pydicom.dcmread(path), frame, media_type)
    _audit(service, caller, ids[0], ids[1], ids[2], "rendered", 1)
    return Response(image, media_type=media_type)


_RENDERED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The frame as an 8-bit image",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **_ERRORS,
}


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="WADO-RS: an instance's first frame, rendered",
    responses=_RENDERED,
)
def instance_rendered(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    instance: InstanceUid,
    caller: BrowserDep,
    service: ServiceDep,
) -> Response:
    return _rendered(request, service, caller, (study, series, instance), 1)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
    summary="WADO-RS: one frame, rendered",
    responses=_RENDERED,
)
def frame_rendered(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    instance: InstanceUid,
    frame: Annotated[str, Path(description="A 1-based frame number")],
    caller: BrowserDep,
    service: ServiceDep,
) -> Response:
    if not re.fullmatch(r"[0-9]{1,9}", frame):
        raise DicomwebQueryError("a rendered frame is one 1-based frame number")
    return _rendered(request, service, caller, (study, series, instance), int(frame))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
    summary="WADO-RS: one bulk data value of an instance (a BulkDataURI of its metadata)",
    responses=_MULTIPART,
)
def retrieve_bulkdata(
    request: Request,
    study: StudyUid,
    series: SeriesUid,
    instance: InstanceUid,
    tag: Annotated[str, Path(description="The element's tag, 8 hex digits (7FE00010)")],
    caller: BrowserDep,
    service: ServiceDep,
) -> Response:
    _multipart_accept(parse_accept(request.headers.get("accept")), OCTETS)
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise DicomwebQueryError("the bulk data tag is 8 hex digits, e.g. 7FE00010")
    item, path = _one(service, study, series, instance)
    number = int(tag, 16)
    ds = pydicom.dcmread(path)
    if number not in ds or ds[number].VR not in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        raise DicomwebNotFound(f"the instance has no bulk data element {tag.upper()}")
    value = ds[number].value
    data = value if isinstance(value, bytes) else bytes(value or b"")
    syntax = str(UID(ds.file_meta.TransferSyntaxUID)) if number == PIXEL_DATA else None
    content_type = OCTETS + (f"; transfer-syntax={syntax}" if syntax else "")
    _audit(service, caller, study, series, instance, "bulkdata", 1)
    boundary = secrets.token_hex(16)
    return Response(
        _parts([(data, content_type)], boundary),
        media_type=f'multipart/related; type="{OCTETS}"; boundary={boundary}',
    )
