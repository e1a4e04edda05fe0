"""The dashboard's quarantine: list, view, release and purge, for stewards signed in.

- ``GET /dashboard/quarantine``: the entries, filtered (``site``, ``reason``, ``since``,
  ``until``, ``status``) and paged (``page``);
- ``GET /dashboard/quarantine/{entry_id}``: one entry, its header without identifying
  values (:mod:`medai.collection.quarantine_view`);
- ``POST /dashboard/quarantine/action``: ``action=release`` or ``action=purge`` of the
  posted ``id`` fields; a purge is asked once more (``confirm=yes``) before it deletes.

These pages take the dashboard's session cookie (:mod:`medai.serving.sessions`, issued at
``/dashboard/login``): without a valid steward session a page redirects to the sign-in.
The POST changes data, so it is guarded three times against cross-site requests: the
cookie is ``SameSite=Strict``; the form must carry the session's CSRF token (a keyed hash
of the session token, which a page of another site can neither read nor compute), checked
in constant time; and an ``Origin`` header, when sent, must be this service's own. Every
action is audited under the steward's key (``apikey:<name>``) by
:mod:`medai.collection.quarantine_actions`.

This router imports no other router (the ``routers-independent`` contract): the cookie's
name and the steward's session check come from :mod:`medai.serving.sessions`, as the
dashboard's do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Annotated, Final
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from medai.audit import actors
from medai.catalog.db import session_factory
from medai.catalog.models import QuarantineEntry, Site
from medai.collection.quarantine import Quarantine
from medai.collection.quarantine_actions import (
    MAX_PER_PAGE,
    QuarantineFilter,
    discard_entries,
    list_entries,
    release_entries,
    select_entries,
    show_entry,
)
from medai.serving.auth import Caller
from medai.serving.context import Service
from medai.serving.deps import ServiceDep
from medai.serving.i18n import LANG_COOKIE, Translator, negotiate
from medai.serving.quarantine_page import (
    render_confirm,
    render_entry,
    render_list,
    render_results,
)
from medai.serving.sessions import SESSION_COOKIE

__all__ = ["SESSION_COOKIE", "csrf_token", "router"]

router = APIRouter(tags=["campaign"])
_CSRF_DOMAIN: Final = b"medai/v1/dashboard-csrf\x00"
_BODY_LIMIT: Final = 64 * 1024
_PER_PAGE: Final = 50
_HEADERS: Final = {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}


def csrf_token(session_token: str) -> str:
    """The CSRF token of a dashboard session: a hash of its (HttpOnly) session token."""
    return hashlib.sha256(_CSRF_DOMAIN + session_token.encode()).hexdigest()


def _translator(request: Request) -> Translator:
    language, _ = negotiate(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("accept-language"),
    )
    return Translator(language)


def _steward(request: Request, service: Service) -> tuple[Caller, str] | None:
    """The steward signed in by cookie and their session token, or None (worker thread)."""
    token = request.cookies.get(SESSION_COOKIE)
    info = service.dashboard_sessions.steward(service.engine, token)
    if info is None or token is None:
        return None
    return Caller(info.name, info.role), token


def _sign_in() -> Response:
    return RedirectResponse("/dashboard/login", status_code=303)


def _html(t: Translator, text: str, status_code: int = 200) -> HTMLResponse:
    response = HTMLResponse(text, status_code=status_code, headers=dict(_HEADERS))
    response.headers["Content-Language"] = t.language
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


def _filter(
    site: str | None, reason: str | None, since: str | None, until: str | None, status: str
) -> QuarantineFilter | None:
    """The filter of the page's query, or None when a day or the status is malformed."""
    days: list[dt.date | None] = []
    for value in (since, until):
        try:
            days.append(dt.date.fromisoformat(value) if value else None)
        except ValueError:
            return None
    if status not in ("held", "closed", "all"):
        return None
    return QuarantineFilter(site or None, reason or None, days[0], days[1], status)  # type: ignore[arg-type]


def _choices(service: Service) -> tuple[list[str], list[str]]:
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        sites = list(session.scalars(select(Site.id).order_by(Site.id)))
        reasons = list(
            session.scalars(
                select(QuarantineEntry.reason_code).distinct().order_by(QuarantineEntry.reason_code)
            )
        )
    return sites, reasons


@router.get(
    "/dashboard/quarantine",
    response_class=HTMLResponse,
    summary="The quarantine (dashboard page)",
    responses={303: {"description": "Not signed in: on to the sign-in page"}},
)
def quarantine_list(
    request: Request,
    service: ServiceDep,
    site: str | None = None,
    reason: str | None = None,
    since: str | None = None,
    until: str | None = None,
    status: str = "held",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    """Quarantine entries, newest first, filtered and paged; release and purge buttons."""
    t = _translator(request)
    signed_in = _steward(request, service)
    if signed_in is None:
        return _sign_in()
    where = _filter(site, reason, since, until, status)
    if where is None:
        message = t._("A day is written YYYY-MM-DD; the status is held, closed or all.")
        return _html(t, message, 400)
    found = list_entries(service.engine, where, page=max(1, page), per_page=_PER_PAGE)
    sites, reasons = _choices(service)
    page_html = render_list(
        t, found, where, sites=sites, reasons=reasons, csrf=csrf_token(signed_in[1])
    )
    return _html(t, page_html)


@router.get(
    "/dashboard/quarantine/{entry_id}",
    response_class=HTMLResponse,
    summary="One quarantine entry, its header without identifying values (dashboard page)",
    responses={303: {"description": "Not signed in: on to the sign-in page"}},
)
def quarantine_entry(
    request: Request,
    service: ServiceDep,
    entry_id: Annotated[int, Path(ge=1, le=2**62)],
) -> Response:
    """The entry's facts and header; release and purge buttons while it is held."""
    t = _translator(request)
    signed_in = _steward(request, service)
    if signed_in is None:
        return _sign_in()
    quarantine = Quarantine(service.settings.resolved_quarantine_dir)
    actor = actors.api_key(signed_in[0].name)
    view = show_entry(service.engine, quarantine, entry_id, actor=actor)
    return _html(t, render_entry(t, view, csrf=csrf_token(signed_in[1])))


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by every browser on a same-origin POST; the token decides
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


@router.post(
    "/dashboard/quarantine/action",
    response_class=HTMLResponse,
    summary="Release or purge quarantine entries (dashboard form)",
    responses={
        303: {"description": "Not signed in: on to the sign-in page"},
        400: {"description": "Not a form of this page: no entry, a bad action or CSRF token"},
        404: {"description": "No such entry"},
        409: {"description": "The action cannot be done (see the message)"},
    },
)
async def quarantine_action(request: Request, service: ServiceDep) -> Response:
    """``action=release|purge`` of the posted ``id`` fields (a purge asks once more)."""
    t = _translator(request)
    signed_in = await run_in_threadpool(_steward, request, service)
    if signed_in is None:
        return _sign_in()
    caller, session_token = signed_in
    body = await request.body()
    try:
        form = parse_qs(
            body[:_BODY_LIMIT].decode("utf-8", "replace"), max_num_fields=MAX_PER_PAGE + 8
        )
    except ValueError:  # more fields than a page of entries has
        form = {}
    expected = csrf_token(session_token)
    posted = form.get("csrf", [""])[0]
    if (
        len(body) > _BODY_LIMIT
        or not _same_origin(request)
        or not hmac.compare_digest(posted.encode(), expected.encode())
    ):
        return _html(t, t._("This form is not from this dashboard page: reload it."), 400)
    action = form.get("action", [""])[0]
    try:
        ids = sorted({int(value) for value in form.get("id", [])})
    except ValueError:
        ids = []
    if action not in ("release", "purge") or not ids:
        return _html(t, t._("Choose at least one entry, then release or purge."), 400)
    chosen = await run_in_threadpool(select_entries, service.engine, ids=ids)
    actor = actors.api_key(caller.name)
    if action == "purge":
        if form.get("confirm", [""])[0] != "yes":
            return _html(t, render_confirm(t, chosen, csrf=expected))
        quarantine = Quarantine(service.settings.resolved_quarantine_dir)
        results = await run_in_threadpool(
            discard_entries, service.engine, quarantine, chosen, actor=actor
        )
    else:
        pipeline = await run_in_threadpool(service.pipeline, actor)
        results = await run_in_threadpool(
            lambda: release_entries(service.settings, chosen, actor=actor, pipeline=pipeline)
        )
    return _html(t, render_results(t, action, results))
