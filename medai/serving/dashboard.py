"""Campaign progress for people and machines: the dashboard pages and the progress API.

- ``GET /v1/campaign/progress``: the export document
  (:class:`~medai.collection.campaign.report.CampaignProgress`, JSON Schema in
  ``collection/progress.schema.json``) for the city's monitoring system; steward key as
  ``Authorization: Bearer``.
- ``GET /dashboard``: the HTML dashboard for data stewards. A browser cannot send a
  bearer header by itself, so ``/dashboard/login`` takes the steward key once and gives
  the browser a session token (:mod:`medai.serving.sessions`: signed, expiring after
  ``dashboard_session_hours``, never the key) in an HttpOnly, SameSite=Strict cookie
  scoped to ``/dashboard``, Secure when the page was served over HTTPS (behind a TLS
  proxy: ``forwarded_allow_ips``). Only these read-only dashboard pages accept that
  cookie (never the routes that change data, so a cross-site form cannot use it), and
  the quarantine's form (:mod:`medai.serving.quarantine_routes`), which also needs the
  session's CSRF token and a same-origin ``Origin``.
  ``POST /dashboard/logout`` deletes it.

The dashboard and its sign-in page speak English or Vietnamese (:mod:`medai.serving.i18n`):
``?lang=vi|en`` (kept in the ``medai_lang`` cookie for the visit), else the browser's
``Accept-Language``, else English. The answers say ``Content-Language`` and vary on the
headers that chose it.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from medai.catalog.db import session_factory
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import CampaignProgress
from medai.ops.security import SecuritySummary, security_status
from medai.serving.auth import Caller, client_address
from medai.serving.context import Service
from medai.serving.dashboard_page import render_dashboard, render_login
from medai.serving.deps import ServiceDep, StewardDep
from medai.serving.i18n import LANG_COOKIE, Translator, load_catalogues, negotiate
from medai.serving.keys import (
    KEY_PREFIX,
    KEY_SHOWN_PREFIX,
    KeyInfo,
    authenticate_key,
    role_grants,
)
from medai.serving.sessions import SESSION_COOKIE

__all__ = ["COOKIE", "cookie_caller", "router"]

router = APIRouter(tags=["campaign"])
COOKIE = SESSION_COOKIE
# Where earlier versions kept the key itself: deleted from the browser at sign-in and out.
_OLD_KEY_COOKIE = "medai_dashboard_key"
_COOKIE_PATH = "/dashboard"
_LOGIN_BODY_LIMIT = 4096
load_catalogues()  # the pages' words, read as the service starts


def _progress(service: Service, today: dt.date | None = None) -> CampaignProgress:
    # A campaign not set up and a catalog out of reach are answered by medai.serving.errors.
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        return compute_progress(session, today=today, quiet_hours=service.settings.site_quiet_hours)


def _security(service: Service) -> dict[str, SecuritySummary]:
    # The security panel: the events of the last 24 hours and 7 days, from the audit chain.
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        return security_status(session, service.settings)


@router.get(
    "/v1/campaign/progress",
    response_model=CampaignProgress,
    summary="Campaign progress and KPIs (the monitoring export)",
)
def campaign_progress(caller: StewardDep, service: ServiceDep) -> CampaignProgress:
    """Progress per site and for the campaign, with a timestamp (``generated_at``).

    The same document as ``medai campaign export --format json``; its JSON Schema is
    ``collection/progress.schema.json``. Field names are stable within a
    ``schema_version``.
    """
    return _progress(service)


def _translator(request: Request) -> tuple[Translator, bool]:
    """The request's language, and whether ``?lang=`` asked for it (then it is kept)."""
    language, explicit = negotiate(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("accept-language"),
    )
    return Translator(language), explicit


def _in_language(response: Response, t: Translator, keep: bool, request: Request) -> Response:
    """``response`` marked with its language; the choice of ``?lang=`` kept in a cookie."""
    response.headers["Content-Language"] = t.language
    response.headers["Vary"] = "Accept-Language, Cookie"
    if keep:
        response.set_cookie(
            LANG_COOKIE,
            t.language,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path=_COOKIE_PATH,
        )
    return response


def cookie_caller(request: Request, service: Service) -> Caller | None:
    """The steward signed in with the dashboard cookie, or None.

    Call it from a worker thread: a token whose signature and expiry hold is checked
    against the catalog, so a revoked key is refused at once.
    """
    info = service.dashboard_sessions.steward(service.engine, request.cookies.get(COOKIE))
    return None if info is None else Caller(info.name, info.role)


def _monitoring(request: Request) -> dict[str, Any] | None:
    # The served model's drift and feedback panel, when the app serves one: read through
    # app.state, so this router imports nothing of the monitoring router.
    monitor = getattr(request.app.state, "monitor", None)
    inference = getattr(request.app.state, "inference", None)
    model = None if inference is None else inference.model
    if monitor is None or model is None:
        return None
    report: dict[str, Any] = monitor.report(model.name, model.version, model.run_id)
    return report


@router.get("/dashboard", response_class=HTMLResponse, summary="The campaign dashboard")
def dashboard(request: Request, service: ServiceDep) -> Response:
    """The dashboard page; without a valid steward cookie, a redirect to the sign-in page.

    ``?lang=vi|en`` picks the language (and keeps it), else ``Accept-Language``.
    """
    t, keep = _translator(request)
    caller = cookie_caller(request, service)
    if caller is None:
        return _in_language(RedirectResponse("/dashboard/login", status_code=303), t, keep, request)
    page = HTMLResponse(
        render_dashboard(_progress(service), t, _security(service), _monitoring(request)),
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )
    return _in_language(page, t, keep, request)


@router.get("/dashboard/login", response_class=HTMLResponse, summary="Dashboard sign-in")
def login_page(request: Request) -> Response:
    """The form asking for a steward key (the page itself holds no data)."""
    t, keep = _translator(request)
    page = HTMLResponse(render_login(t), headers={"X-Frame-Options": "DENY"})
    return _in_language(page, t, keep, request)


@router.post(
    "/dashboard/login",
    response_class=HTMLResponse,
    summary="Dashboard sign-in",
    responses={
        303: {"description": "Signed in: on to the dashboard, with the cookie"},
        400: {"description": "The sign-in page again: that is not an API key"},
        401: {"description": "The sign-in page again: an unknown or revoked key"},
        403: {"description": "The sign-in page again: not a steward (or admin) key"},
        429: {
            "description": "The sign-in page again: too many failed authentications from "
            "this address (MEDAI_AUTH_FAILURES_PER_MINUTE); see Retry-After"
        },
    },
)
async def login(request: Request, service: ServiceDep) -> Response:
    """Check the posted key (form field ``key``); on success set the cookie and go on."""
    t, keep = _translator(request)

    def refused(message: str, status_code: int) -> Response:
        page = HTMLResponse(render_login(t, message), status_code=status_code)
        return _in_language(page, t, keep, request)

    source = client_address(request)
    wait = service.security.retry_after(source)
    if wait is not None:  # throttled for failed authentications, a right key included
        page = refused(t._("Too many failed sign-ins from this address: try again later."), 429)
        page.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return page
    body = await request.body()
    if len(body) > _LOGIN_BODY_LIMIT:
        return refused(t._("That is not an API key."), 400)
    key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0].strip()
    info = await run_in_threadpool(authenticate_key, service.engine, key) if key else None
    if info is None or info.revoked:
        if key:  # a refused key is a security event (recorded, counted, throttled)
            reason = _refusal(key, info)
            await run_in_threadpool(
                service.security.auth_failed,
                service.engine,
                source,
                reason,
                prefix=key[:KEY_SHOWN_PREFIX] if reason != "malformed" else None,
                key_name=info.name if info is not None else None,
            )
        return refused(t._("Unknown or revoked key: check that it was copied whole."), 401)
    if not role_grants(info.role, "steward"):
        return refused(
            t._(
                "The key %(name)s has the %(role)s role: use a steward key.",
                name=repr(info.name),
                role=info.role,
            ),
            403,
        )
    sessions = service.dashboard_sessions
    token = await run_in_threadpool(sessions.issue, info)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=sessions.max_age,
        httponly=True,
        samesite="strict",
        # A Secure cookie is never sent back over plain HTTP (a local `medai serve`).
        secure=request.url.scheme == "https",
        path=_COOKIE_PATH,
    )
    response.delete_cookie(_OLD_KEY_COOKIE, path=_COOKIE_PATH)
    return response


def _refusal(key: str, info: KeyInfo | None) -> str:
    """Why a key posted to the sign-in form was refused: revoked, unknown or malformed."""
    if info is not None:
        return "revoked"
    return "unknown" if key.startswith(KEY_PREFIX) and len(key) <= 256 else "malformed"


@router.post(
    "/dashboard/logout",
    response_class=HTMLResponse,
    summary="Dashboard sign-out",
    responses={303: {"description": "Signed out: on to the sign-in page"}},
)
def logout() -> Response:
    """Delete the dashboard cookie.

    The session token is stateless: a copy taken from the browser before sign-out stays
    valid until it expires (``dashboard_session_hours``), unless the key is revoked.
    """
    response = RedirectResponse("/dashboard/login", status_code=303)
    for cookie in (COOKIE, _OLD_KEY_COOKIE):
        response.delete_cookie(cookie, path=_COOKIE_PATH, httponly=True, samesite="strict")
    return response
