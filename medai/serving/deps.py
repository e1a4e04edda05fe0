"""The typed dependencies every router uses, defined once.

A route names what it needs by type and FastAPI provides it::

    @router.get("/v1/campaign/progress")
    def campaign_progress(caller: StewardDep, engine: EngineDep) -> CampaignProgress: ...

- :data:`ServiceDep`, :data:`SettingsDep`, :data:`EngineDep`: the app's
  :class:`~medai.serving.context.Service`, its settings and its catalog engine;
- :data:`CallerDep`: the caller of any valid person's key (an ``edge`` or ``monitoring``
  key is refused 403); :data:`AnyKeyDep`: of any valid key, edge keys included (monitoring
  keys refused 403); :data:`MetricsCallerDep`: a person's key or a ``monitoring`` key
  (``/metrics`` only); :data:`ClinicianDep`, :data:`StewardDep`, :data:`AdminDep`: one
  whose key grants that role (or admin).

Every one of them checks the key through :func:`~medai.serving.auth.checked_caller`: failed
authentication is recorded and throttled per source address (429 with ``Retry-After``).

The inference service's own dependency (``InferenceDep``) sits with it in
:mod:`medai.serving.inference.routes`, so that the other routers, which import this module,
never load the model code (and torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Engine

from medai.config import Settings
from medai.serving.auth import BEARER_SCHEME, Caller, check_role, check_role_name, checked_caller
from medai.serving.context import Service
from medai.serving.keys import EDGE_ROLE, MONITORING_ROLE

__all__ = [
    "AdminDep",
    "AnyKeyDep",
    "CallerDep",
    "ClinicianDep",
    "EngineDep",
    "MetricsCallerDep",
    "ServiceDep",
    "SettingsDep",
    "StewardDep",
    "authenticate",
    "authenticate_any_key",
    "authenticate_metrics",
    "get_service",
    "require_role",
]


def get_service(request: Request) -> Service:
    """The app's :class:`Service` (``app.state.service``)."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def _settings(service: ServiceDep) -> Settings:
    return service.settings


def _engine(service: ServiceDep) -> Engine:
    return service.engine


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[Engine, Depends(_engine)]


def authenticate_any_key(
    request: Request,
    engine: EngineDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> Caller:
    """The caller of ``request``, from its bearer key (401 otherwise), edge keys included;
    403 for a ``monitoring`` key, which may read ``/metrics`` only.

    A plain (sync) dependency, so FastAPI runs its catalog query in a worker thread. A
    source throttled for failed authentications is answered 429
    (:func:`~medai.serving.auth.checked_caller`).
    """
    return _not_monitoring(checked_caller(request, engine, get_service(request).security))


def _not_monitoring(caller: Caller) -> Caller:
    if caller.role == MONITORING_ROLE:
        raise HTTPException(
            403,
            detail=f"the key {caller.name!r} is a monitoring key: it may only read /metrics",
        )
    return caller


AnyKeyDep = Annotated[Caller, Depends(authenticate_any_key)]


def authenticate(
    request: Request,
    engine: EngineDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> Caller:
    """The caller of ``request`` when their key is a person's (401 otherwise); 403 for an
    ``edge`` key, which may use the edge routes only (STOW-RS, heartbeat, receipts)."""
    caller = _not_monitoring(checked_caller(request, engine, get_service(request).security))
    if caller.role == EDGE_ROLE:
        raise HTTPException(
            403,
            detail=f"the key {caller.name!r} is a site's edge key: it may only send the "
            "site's instances (STOW-RS), its heartbeats and read its receipts",
        )
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


def authenticate_metrics(
    request: Request,
    engine: EngineDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> Caller:
    """The caller of ``request`` when their key is a person's or a ``monitoring`` key (the
    scraper's); 401 otherwise, 403 for an ``edge`` key."""
    caller = checked_caller(request, engine, get_service(request).security)
    if caller.role == EDGE_ROLE:
        raise HTTPException(
            403,
            detail=f"the key {caller.name!r} is a site's edge key: it may only send the "
            "site's instances (STOW-RS), its heartbeats and read its receipts",
        )
    return caller


MetricsCallerDep = Annotated[Caller, Depends(authenticate_metrics)]


def require_role(role: str) -> Callable[..., Caller]:
    """A dependency admitting callers whose key grants ``role``; it returns the caller.

    Raises
    ------
    ValueError
        At import time, for a role that does not exist.
    """
    check_role_name(role)

    def dependency(caller: AnyKeyDep) -> Caller:
        return check_role(caller, role)  # an edge key is granted its own role only

    dependency.__name__ = f"require_{role}"
    return dependency


ClinicianDep = Annotated[Caller, Depends(require_role("clinician"))]
StewardDep = Annotated[Caller, Depends(require_role("steward"))]
AdminDep = Annotated[Caller, Depends(require_role("admin"))]
