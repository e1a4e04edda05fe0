"""API-key authentication and role checks: who is calling, and may they.

Requests send ``Authorization: Bearer <key>``. No key, an unknown key or a revoked one
is answered 401 with ``WWW-Authenticate: Bearer``; a valid key whose role does not
grant the route is answered 403. Roles: ``clinician``, ``steward``, ``admin`` and
``edge``; an admin key is granted every role but ``edge``
(:func:`medai.serving.keys.role_grants`), and an edge key nothing but its own routes.

Routes do not call this module: they take the typed dependencies of
:mod:`medai.serving.deps` (``caller: ClinicianDep``), which do. A catalog that cannot
be reached while a key is checked is answered 503 by :mod:`medai.serving.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException
from fastapi.security import HTTPBearer

from medai.audit import actors
from medai.serving.keys import ROLES, authenticate_key, role_grants

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["BEARER_SCHEME", "Caller", "caller_for", "check_role", "check_role_name"]

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


def _unauthorized(detail: str, *, invalid: bool) -> HTTPException:
    # RFC 6750 3: a presented but bad token says error="invalid_token".
    challenge = _CHALLENGE + (', error="invalid_token"' if invalid else "")
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": challenge})


def caller_for(engine: Engine, authorization: str) -> Caller:
    """The caller named by an ``Authorization`` header's bearer key; 401 otherwise.

    Call it from a worker thread: it queries the catalog (whose errors propagate).
    """
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' "
            "(an admin creates keys with `medai keys create`)",
            invalid=False,
        )
    info = authenticate_key(engine, key)
    if info is None:
        raise _unauthorized(
            "unknown API key: check that it was copied whole, or ask an admin for a new one",
            invalid=True,
        )
    if info.revoked:
        raise _unauthorized(
            f"the API key {info.name!r} was revoked: ask an admin for a new one", invalid=True
        )
    return Caller(info.name, info.role, info.site_id)


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
