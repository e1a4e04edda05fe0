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
  cookie (never the routes that change data, so a cross-site form cannot use it).
  ``POST /dashboard/logout`` deletes it.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from medai.catalog.db import session_factory
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import CampaignProgress
from medai.serving.auth import Caller
from medai.serving.context import Service
from medai.serving.dashboard_page import render_dashboard, render_login
from medai.serving.deps import ServiceDep, StewardDep
from medai.serving.keys import authenticate_key, role_grants

__all__ = ["COOKIE", "cookie_caller", "router"]

router = APIRouter(tags=["campaign"])
COOKIE = "medai_dashboard_session"
# Where earlier versions kept the key itself: deleted from the browser at sign-in and out.
_OLD_KEY_COOKIE = "medai_dashboard_key"
_COOKIE_PATH = "/dashboard"
_LOGIN_BODY_LIMIT = 4096


def _progress(service: Service, today: dt.date | None = None) -> CampaignProgress:
    # A campaign not set up and a catalog out of reach are answered by medai.serving.errors.
    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        return compute_progress(session, today=today)


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


def cookie_caller(request: Request, service: Service) -> Caller | None:
    """The steward signed in with the dashboard cookie, or None.

    Call it from a worker thread: a token whose signature and expiry hold is checked
    against the catalog, so a revoked key is refused at once.
    """
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    info = service.dashboard_sessions.check(service.engine, token)
    if info is None or not role_grants(info.role, "steward"):
        return None
    return Caller(info.name, info.role)


@router.get("/dashboard", response_class=HTMLResponse, summary="The campaign dashboard")
def dashboard(request: Request, service: ServiceDep) -> Response:
    """The dashboard page; without a valid steward cookie, a redirect to the sign-in page."""
    caller = cookie_caller(request, service)
    if caller is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    return HTMLResponse(
        render_dashboard(_progress(service)),
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


@router.get("/dashboard/login", response_class=HTMLResponse, summary="Dashboard sign-in")
def login_page() -> HTMLResponse:
    """The form asking for a steward key (the page itself holds no data)."""
    return HTMLResponse(render_login(), headers={"X-Frame-Options": "DENY"})


@router.post(
    "/dashboard/login",
    response_class=HTMLResponse,
    summary="Dashboard sign-in",
    responses={
        303: {"description": "Signed in: on to the dashboard, with the cookie"},
        400: {"description": "The sign-in page again: that is not an API key"},
        401: {"description": "The sign-in page again: an unknown or revoked key"},
        403: {"description": "The sign-in page again: not a steward (or admin) key"},
    },
)
async def login(request: Request, service: ServiceDep) -> Response:
    """Check the posted key (form field ``key``); on success set the cookie and go on."""
    body = await request.body()
    if len(body) > _LOGIN_BODY_LIMIT:
        return HTMLResponse(render_login("That is not an API key."), status_code=400)
    key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0].strip()
    info = await run_in_threadpool(authenticate_key, service.engine, key) if key else None
    if info is None or info.revoked:
        return HTMLResponse(
            render_login("Unknown or revoked key: check that it was copied whole."),
            status_code=401,
        )
    if not role_grants(info.role, "steward"):
        return HTMLResponse(
            render_login(f"The key {info.name!r} has the {info.role} role: use a steward key."),
            status_code=403,
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
