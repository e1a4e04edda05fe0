"""API-key authentication and role checks, as FastAPI dependencies for every router.

Requests send ``Authorization: Bearer <key>``. No key, an unknown key or a revoked one
is answered 401 with ``WWW-Authenticate: Bearer``; a valid key whose role does not
grant the route is answered 403. Roles: ``clinician``, ``steward``, ``admin``; an admin
key is granted every role (:func:`medai.serving.keys.role_grants`).

Usage in a router::

    Steward = Annotated[Caller, Depends(require_role("steward"))]

    @router.post("/things")
    def create_thing(caller: Steward) -> ...:
        append_audit(session, actor=caller.actor, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from medai.serving.context import ServiceDep
from medai.serving.keys import ROLES, authenticate_key, role_grants

__all__ = ["Caller", "authenticate", "require_role"]

_CHALLENGE = 'Bearer realm="medai"'
# Declares the bearer scheme in the OpenAPI document of every route that checks a key
# (and gives the API browser its "Authorize" button); the header is parsed below.
_BEARER_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`medai keys create`): clinician for inference, steward for "
    "collection, admin for everything.",
)


@dataclass(frozen=True)
class Caller:
    """Who sent the request: the API key's name and role."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        """The actor of audit records made for this caller (``apikey:<name>``)."""
        return f"apikey:{self.name}"


def _unauthorized(detail: str, *, invalid: bool) -> HTTPException:
    # RFC 6750 3: a presented but bad token says error="invalid_token".
    challenge = _CHALLENGE + (', error="invalid_token"' if invalid else "")
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": challenge})


def authenticate(
    request: Request,
    service: ServiceDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER_SCHEME)] = None,
) -> Caller:
    """The caller of ``request``, from its bearer key; raises 401 (or 503) otherwise.

    A plain (sync) dependency, so FastAPI runs its catalog query in a worker thread.
    """
    scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' "
            "(an admin creates keys with `medai keys create`)",
            invalid=False,
        )
    try:
        info = authenticate_key(service.engine, key)
    except SQLAlchemyError:
        raise HTTPException(
            503, detail="the catalog is unreachable, so keys cannot be checked; retry later"
        ) from None
    if info is None:
        raise _unauthorized(
            "unknown API key: check that it was copied whole, or ask an admin for a new one",
            invalid=True,
        )
    if info.revoked:
        raise _unauthorized(
            f"the API key {info.name!r} was revoked: ask an admin for a new one", invalid=True
        )
    return Caller(info.name, info.role)


def require_role(role: str) -> Callable[..., Caller]:
    """A dependency admitting callers whose key grants ``role``; it returns the caller.

    Raises
    ------
    ValueError
        At import time, for a role that does not exist.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")

    def dependency(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if not role_grants(caller.role, role):
            raise HTTPException(
                403,
                detail=f"this needs a {role} (or admin) key; the key {caller.name!r} has "
                f"the {caller.role} role: use a {role} key",
            )
        return caller

    dependency.__name__ = f"require_{role}"
    return dependency
