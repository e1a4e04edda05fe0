"""API-key authentication and role checks: who is calling, and may they.

Requests send ``Authorization: Bearer <key>``. No key, an unknown key or a revoked one
is answered 401 with ``WWW-Authenticate: Bearer``; a valid key whose role does not
grant the route is answered 403. Roles: ``clinician``, ``steward``, ``admin``, ``edge``
and ``monitoring``; an admin key is granted every role but ``edge`` and ``monitoring``
(:func:`medai.serving.keys.role_grants`), an edge key nothing but its own routes, and a
monitoring key nothing but ``/metrics``.

Failed authentication is watched (:func:`checked_caller`, :mod:`medai.ops.security`): a
malformed, unknown or revoked key is recorded in the audit chain with the source address
(repeats folded, one record a minute per source and reason), and a source with more than
``MEDAI_AUTH_FAILURES_PER_MINUTE`` failures in a minute is answered 429 with
``Retry-After`` for a minute, even with a right key.

Routes do not call this module: they take the typed dependencies of
:mod:`medai.serving.deps` (``caller: ClinicianDep``), which do. A catalog that cannot
be reached while a key is checked is answered 503 by :mod:`medai.serving.errors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer

from medai.audit import actors
from medai.serving.keys import KEY_PREFIX, KEY_SHOWN_PREFIX, ROLES, authenticate_key, role_grants

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from medai.ops.security import SecurityMonitor

__all__ = [
    "BEARER_SCHEME",
    "Caller",
    "Unauthorized",
    "caller_for",
    "check_role",
    "check_role_name",
    "checked_caller",
    "client_address",
    "too_many_failures",
]

_CHALLENGE = 'Bearer realm="medai"'
# Declares the bearer scheme in the OpenAPI document of every route that checks a key
# (and gives the API browser its "Authorize" button); the header is parsed below.
BEARER_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`medai keys create`): clinician for inference, steward for "
    "collection, admin for everything.",
)


@dataclass(frozen=True)
class Caller:
    """Who sent the request: the API key's name and role (and an edge key's site)."""

    name: str
    role: str
    # The site an ``edge`` key speaks for; None for every other role.
    site_id: str | None = None

    @property
    def actor(self) -> str:
        """The actor of audit records made for this caller (``apikey:<name>``)."""
        return actors.api_key(self.name)


class Unauthorized(HTTPException):
    """A 401 answer, with why the key was refused (for the security events).

    ``reason``: ``missing`` (no key sent: not a security event), ``malformed`` (not a
    bearer header, or a key medai could not have issued), ``unknown`` or ``revoked``;
    ``prefix``: the first characters of a key that looks like one of medai's (never the
    key); ``key_name``: the revoked key's name.
    """

    def __init__(
        self,
        detail: str,
        *,
        reason: str,
        prefix: str | None = None,
        key_name: str | None = None,
    ) -> None:
        # RFC 6750 3: a presented but bad token says error="invalid_token".
        invalid = reason != "missing"
        challenge = _CHALLENGE + (', error="invalid_token"' if invalid else "")
        super().__init__(401, detail=detail, headers={"WWW-Authenticate": challenge})
        self.reason, self.prefix, self.key_name = reason, prefix, key_name


_UNKNOWN = "unknown API key: check that it was copied whole, or ask an admin for a new one"


def caller_for(engine: Engine, authorization: str) -> Caller:
    """The caller named by an ``Authorization`` header's bearer key; 401 otherwise.

    Call it from a worker thread: it queries the catalog (whose errors propagate).

    Raises
    ------
    Unauthorized
        No key, a malformed, unknown or revoked one (``reason`` says which).
    """
    header = authorization.strip()
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if not header or (scheme.lower() == "bearer" and not key):
        raise Unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' "
            "(an admin creates keys with `medai keys create`)",
            reason="missing",
        )
    if scheme.lower() != "bearer":
        raise Unauthorized(
            "malformed Authorization header: send 'Authorization: Bearer <key>' "
            "(an admin creates keys with `medai keys create`)",
            reason="malformed",
        )
    if not key.startswith(KEY_PREFIX) or len(key) > 256:
        raise Unauthorized(_UNKNOWN, reason="malformed")
    prefix = key[:KEY_SHOWN_PREFIX]
    info = authenticate_key(engine, key)
    if info is None:
        raise Unauthorized(_UNKNOWN, reason="unknown", prefix=prefix)
    if info.revoked:
        raise Unauthorized(
            f"the API key {info.name!r} was revoked: ask an admin for a new one",
            reason="revoked",
            prefix=info.prefix,
            key_name=info.name,
        )
    return Caller(info.name, info.role, info.site_id)


def client_address(request: Request) -> str:
    """The caller's address: the peer's, or behind a proxy the one uvicorn took from
    ``X-Forwarded-For`` (``MEDAI_FORWARDED_ALLOW_IPS`` names the proxies believed)."""
    return request.client.host if request.client and request.client.host else "unknown"


def too_many_failures(wait: float) -> HTTPException:
    """The 429 answer of a source throttled for failed authentications."""
    seconds = max(1, math.ceil(wait))
    return HTTPException(
        429,
        detail=f"too many failed authentications from this address: try again in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


def checked_caller(request: Request, engine: Engine, monitor: SecurityMonitor) -> Caller:
    """:func:`caller_for` the request's key, throttled per source and its failures recorded.

    A source throttled by ``monitor`` (too many failed authentications in a minute,
    ``MEDAI_AUTH_FAILURES_PER_MINUTE``) is answered 429 with ``Retry-After`` before its key
    is looked at, a right key included. A refused key (malformed, unknown or revoked, not a
    missing one) is recorded as a security event with the source address and counted
    toward the throttle. Call it from a worker thread.
    """
    source = client_address(request)
    wait = monitor.retry_after(source)
    if wait is not None:
        raise too_many_failures(wait)
    try:
        return caller_for(engine, request.headers.get("authorization", ""))
    except Unauthorized as exc:
        if exc.reason != "missing":
            monitor.auth_failed(
                engine, source, exc.reason, prefix=exc.prefix, key_name=exc.key_name
            )
        raise


def check_role_name(role: str) -> str:
    """``role`` when it is one of :data:`~medai.serving.keys.ROLES`; ValueError otherwise."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return role


def check_role(caller: Caller, role: str) -> Caller:
    """``caller`` when their key grants ``role``; 403 otherwise."""
    if not role_grants(caller.role, role):
        raise HTTPException(
            403,
            detail=f"this needs a {role} (or admin) key; the key {caller.name!r} has "
            f"the {caller.role} role: use a {role} key",
        )
    return caller
