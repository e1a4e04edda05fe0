"""Domain errors to HTTP answers, in one place: every error is JSON ``{"detail": "..."}``.

:func:`install_error_handlers` registers, on the app:

- :class:`~medai.errors.MedaiError` and every subclass: the status of :data:`STATUS`
  (looked up along the class's MRO, so a new subclass answers as its parent does) and the
  error's own message, which says what to do and never quotes a value from a file;
- the catalog being unreachable (a refused or dropped database connection, a pool that
  has no connection to give): 503 with ``Retry-After``, whichever route met it;
- anything else: 500, logged by type only (exception text from DICOM libraries may quote
  file values).

An error answered before the request's body was received whole also closes the
connection (:func:`body_received`, which :class:`medai.serving.limits.BodyLimitMiddleware`
keeps up to date): the rest of the body cannot be skipped cheaply, and reading it would
defeat the limit that refused it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import Receive, Scope, Send

from medai.errors import (
    ApiKeyError,
    AuditChainBroken,
    BackupError,
    BadAuditAnchor,
    BatcherStopped,
    CampaignError,
    DemoFailed,
    DicomwebNotFound,
    DicomwebQueryError,
    EdgeError,
    ExportFailed,
    IncompleteResponse,
    KeyFileError,
    LabelSheetError,
    MalformedMultipart,
    MedaiError,
    ModelConfigError,
    ModelUnavailable,
    NotAcceptable,
    NotAudited,
    NothingToImport,
    PromotionRefused,
    PullError,
    QuarantineActionRefused,
    QuarantineEntryNotFound,
    Rejected,
    RequestTooLarge,
    ResumeRefused,
    SeriesRefused,
    SnapshotError,
    SnapshotExists,
    SnapshotNotFound,
    SnapshotTampered,
    StoreCorrupt,
    TlsError,
    TooManyParts,
    UnknownSite,
    UnreadableStudy,
    UnsupportedMediaType,
    WeightsError,
)

__all__ = [
    "BODY_RECEIVED",
    "CATALOG_UNREACHABLE",
    "CLOSE_CONNECTION",
    "STATUS",
    "body_received",
    "domain_error_response",
    "error_response",
    "install_error_handlers",
    "send_error",
    "status_for",
]

logger = logging.getLogger(__name__)
_V = TypeVar("_V")

# Answers that leave part of the body unread end the connection.
CLOSE_CONNECTION = {"Connection": "close"}
# Scope key: False while the request's body has not all arrived (see body_received).
BODY_RECEIVED = "medai.body_received"
CATALOG_UNREACHABLE = "the catalog database is unreachable; retry later (operators: check it is up)"

# The status of each domain error (a subclass not listed takes its nearest listed parent's).
STATUS: Mapping[type[MedaiError], int] = {
    # What the client sent cannot be taken.
    MalformedMultipart: 400,
    DicomwebQueryError: 400,
    DicomwebNotFound: 404,
    NotAcceptable: 406,
    UnknownSite: 400,
    ApiKeyError: 400,
    BadAuditAnchor: 400,
    NothingToImport: 400,
    EdgeError: 400,
    SnapshotError: 400,
    SnapshotNotFound: 404,
    QuarantineEntryNotFound: 404,
    SnapshotExists: 409,
    QuarantineActionRefused: 409,
    PromotionRefused: 409,
    ResumeRefused: 409,
    RequestTooLarge: 413,
    TooManyParts: 413,
    UnsupportedMediaType: 415,
    Rejected: 422,
    UnreadableStudy: 422,
    LabelSheetError: 422,
    ModelConfigError: 422,
    SeriesRefused: 422,
    # The server holds something broken: its operator has to act.
    StoreCorrupt: 500,
    BackupError: 500,
    AuditChainBroken: 500,
    SnapshotTampered: 500,
    WeightsError: 500,
    ExportFailed: 500,
    TlsError: 500,
    DemoFailed: 500,
    # A peer archive failed us.
    PullError: 502,
    IncompleteResponse: 502,
    # Not ready, or stopping: the same request may succeed later.
    CampaignError: 503,
    KeyFileError: 503,
    ModelUnavailable: 503,
    BatcherStopped: 503,
    NotAudited: 503,
}
_RETRY_AFTER: Mapping[type[MedaiError], str] = {
    ModelUnavailable: "10",  # the model loads in the background
    BatcherStopped: "5",  # another worker (or this one restarted) takes it
    NotAudited: "5",
}
# How the message reads in an answer, where the error's own text needs a lead-in.
_DETAIL: Mapping[type[MedaiError], str] = {
    CampaignError: "the service is not ready: {}",
    KeyFileError: "the service is not ready: {}",
    BatcherStopped: "{}; retry",
}
_INTERNAL = "internal error (logged on the server); retry, or tell the operator"


def _nearest(table: Mapping[type[MedaiError], _V], kind: type[BaseException]) -> _V | None:
    for cls in kind.__mro__:
        if cls in table:
            return table[cls]
    return None


def status_for(kind: type[MedaiError]) -> int:
    """The HTTP status answered for an error of class ``kind`` (500 for one not mapped)."""
    return _nearest(STATUS, kind) or 500


def body_received(scope: Scope) -> bool:
    """Whether the request's body arrived whole (True for a request without a body)."""
    return bool(scope.get(BODY_RECEIVED, True))


def error_response(
    scope: Scope, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON answer ``{"detail": detail}``; it closes the connection if the body is unread."""
    sent = dict(headers or {})
    if not body_received(scope):
        sent |= CLOSE_CONNECTION
    return JSONResponse({"detail": detail}, status_code=status, headers=sent)


def domain_error_response(scope: Scope, exc: MedaiError) -> JSONResponse:
    """The answer to ``exc``: the status of :data:`STATUS`, its message, a Retry-After."""
    kind = type(exc)
    status = status_for(kind)
    where = f"{scope.get('method', '?')} {_route(scope)}"
    if _nearest(STATUS, kind) is None:
        logger.error("unmapped %s handling %s", kind.__name__, where)
        return error_response(scope, 500, _INTERNAL)
    if status >= 500:  # 503: not ready yet; the others need the operator
        level = logging.INFO if status == 503 else logging.WARNING
        logger.log(level, "%s handling %s: %s", kind.__name__, where, exc)
    template = _nearest(_DETAIL, kind) or "{}"
    retry = _nearest(_RETRY_AFTER, kind)
    return error_response(
        scope, status, template.format(exc), {"Retry-After": retry} if retry else None
    )


async def send_error(scope: Scope, receive: Receive, send: Send, exc: MedaiError) -> None:
    """Answer ``exc`` from ASGI middleware, outside the app's exception handlers."""
    await domain_error_response(scope, exc)(scope, receive, send)


def _route(scope: Scope) -> str:
    # The route template, never the path: paths may carry UIDs.
    return str(getattr(scope.get("route"), "path", "?"))


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, MedaiError):  # registered for MedaiError only
        return await internal_error(request, exc)
    return domain_error_response(request.scope, exc)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    unreachable = isinstance(exc, OperationalError | InterfaceError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if not unreachable:  # a query the schema refused: a defect, not an outage
        return await internal_error(request, exc)
    logger.warning(
        "the catalog is unreachable (%s) handling %s %s",
        type(exc).__name__,
        request.method,
        _route(request.scope),
    )
    return error_response(request.scope, 503, CATALOG_UNREACHABLE, {"Retry-After": "30"})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 for an error no handler expected; only its type is logged (with a debug traceback)."""
    logger.error(
        "unexpected %s handling %s %s", type(exc).__name__, request.method, _route(request.scope)
    )
    logger.debug("traceback", exc_info=exc)
    return error_response(request.scope, 500, _INTERNAL)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers of this module on ``app`` (the app factory calls it once)."""
    app.add_exception_handler(MedaiError, _domain_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(Exception, internal_error)
