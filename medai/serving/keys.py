"""API keys of the web service: create, list, revoke, and check a presented key.

A key is ``medai_`` followed by 43 URL-safe characters (:func:`secrets.token_urlsafe`,
256 random bits). The catalog keeps only its sha256 (``api_keys.key_hash``) and its
first characters (``prefix``, to tell keys apart in listings); the key itself is shown
once, when it is created. A presented key is looked up by its hash (one indexed query;
the hash of a 256-bit random token cannot be brute-forced, so no salt is needed) and
the stored hash is compared again in constant time.

Roles: ``clinician`` (inference), ``steward`` (data collection: STOW-RS, progress),
``admin``, which is granted everything the other two are (see :func:`role_grants`), and
``edge``: the key of one site's edge gateway (``api_keys.site_id``), which may only STOW
that site's de-identified instances, post heartbeats and read that site's receipts; it is
granted nothing else, and admin is not granted it (an admin is not a site's gateway).
``researcher``: may browse the de-identified collection (QIDO-RS, WADO-RS) and nothing
else: it cannot upload, see progress or the dashboard, or run inference.
``monitoring``: a metrics scraper's key, which may read ``/metrics`` and nothing else (a
stolen one tells request counts, not data).
Creating and revoking a key appends an audit record (``apikey.create``,
``apikey.revoke``) naming the key, its role and prefix, never the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import session_factory
from medai.catalog.models import ApiKey, Site, utcnow
from medai.errors import ApiKeyError

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "EDGE_ROLE",
    "KEY_PREFIX",
    "KEY_SHOWN_PREFIX",
    "LAST_USED_RESOLUTION",
    "MONITORING_ROLE",
    "ROLES",
    "CreatedKey",
    "KeyInfo",
    "authenticate_key",
    "create_key",
    "hash_key",
    "key_by_id",
    "list_keys",
    "revoke_key",
    "role_grants",
]

KEY_PREFIX: Final = "medai_"
ROLES: Final = ("clinician", "steward", "researcher", "admin", "edge", "monitoring")
# The role of a site's edge gateway: bound to one site (api_keys.site_id).
EDGE_ROLE: Final = "edge"
# The role of a metrics scraper: it may read /metrics and nothing else.
MONITORING_ROLE: Final = "monitoring"
# What each role may do beyond its own name: admin may do everything a person may do;
# an edge key is granted its own role only, and no other role is granted it.
_IMPLIED: Final[dict[str, frozenset[str]]] = {
    "clinician": frozenset({"clinician"}),
    "steward": frozenset({"steward"}),
    "researcher": frozenset({"researcher"}),
    "admin": frozenset({"clinician", "steward", "researcher", "admin"}),
    EDGE_ROLE: frozenset({EDGE_ROLE}),
    MONITORING_ROLE: frozenset({MONITORING_ROLE}),
}
# last_used_at is written at most this often per key: a write transaction per request
# would serialize every request on SQLite's single writer.
LAST_USED_RESOLUTION: Final = dt.timedelta(minutes=1)
_SHOWN_PREFIX: Final = len(KEY_PREFIX) + 6
KEY_SHOWN_PREFIX: Final = _SHOWN_PREFIX
"""How many first characters of a key listings and audit records show."""
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class KeyInfo:
    """What the catalog knows of a key (never the key itself)."""

    id: int
    name: str
    role: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    site_id: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def actor(self) -> str:
        """How audit records name this key's holder."""
        return actors.api_key(self.name)

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            role=row.role,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
            site_id=row.site_id,
        )


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``key`` is the secret, shown once and stored nowhere."""

    info: KeyInfo
    key: str


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def role_grants(role: str, wanted: str) -> bool:
    """Whether a key with ``role`` may do what ``wanted`` may (admin may do everything)."""
    return wanted in _IMPLIED.get(role, frozenset())


def create_key(
    engine: Engine,
    *,
    name: str,
    role: str,
    site_id: str | None = None,
    actor: str | None = None,
) -> CreatedKey:
    """Create a key with ``role`` under the unique ``name``; return it with the secret.

    Parameters
    ----------
    engine
        The migrated catalog.
    name
        1 to 64 characters: letters, digits and ``. _ @ -``, starting with a letter or
        digit (e.g. ``site-a-pacs``); names the key in listings and audit records.
    role
        One of :data:`ROLES`.
    site_id
        The campaign site an ``edge`` key speaks for: required for that role (the site
        must exist), refused for every other.
    actor
        Who is recorded in the audit log; :func:`medai.audit.actors.operator` by default.

    Raises
    ------
    ApiKeyError
        For an invalid name or role, a name already taken (revoked keys keep theirs), an
        edge key without an existing site, or a site given for another role.
    """
    if role not in ROLES:
        raise ApiKeyError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if role == EDGE_ROLE and not site_id:
        raise ApiKeyError("an edge key speaks for one site: name it with --site SITE")
    if role != EDGE_ROLE and site_id is not None:
        raise ApiKeyError(
            f"only edge keys are bound to a site; a {role} key is not (leave --site out)"
        )
    if not _NAME.fullmatch(name):
        raise ApiKeyError(
            f"invalid key name {name!r}: use 1 to 64 letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        role=role,
        key_hash=hash_key(key),
        prefix=key[:_SHOWN_PREFIX],
        site_id=site_id,
    )
    try:
        with audited_transaction(engine) as session:
            if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
                raise ApiKeyError(
                    f"an API key named {name!r} exists already: choose another name "
                    "(`medai keys list` shows them)"
                )
            if site_id is not None and session.get(Site, site_id) is None:
                known = ", ".join(session.scalars(select(Site.id).order_by(Site.id)))
                raise ApiKeyError(
                    f"unknown site {site_id!r}; the campaign's sites are: {known or 'none'} "
                    "(`medai campaign init FILE` sets them up)"
                )
            session.add(row)
            session.flush()
            append_audit(
                session,
                actor=actor or actors.operator(),
                action="apikey.create",
                subject=name,
                details={"role": role, "prefix": row.prefix}
                | ({"site": site_id} if site_id is not None else {}),
            )
    except IntegrityError:  # created concurrently under the same name
        raise ApiKeyError(
            f"an API key named {name!r} exists already: choose another name"
        ) from None
    return CreatedKey(KeyInfo.of(row), key)


def list_keys(engine: Engine) -> list[KeyInfo]:
    """Every key, revoked ones included, oldest first."""
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
        return [KeyInfo.of(row) for row in rows]


def key_by_id(engine: Engine, key_id: int) -> KeyInfo | None:
    """The record of the key with catalog id ``key_id`` (revoked or not), or None.

    For a caller that checked the key itself earlier (a dashboard session names its key
    by id); a presented key is checked with :func:`authenticate_key`.
    """
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        row = session.get(ApiKey, key_id)
        return None if row is None else KeyInfo.of(row)


def revoke_key(engine: Engine, name: str, *, actor: str | None = None) -> tuple[KeyInfo, bool]:
    """Revoke the key named ``name``: it is refused from the next request on.

    Returns
    -------
    (KeyInfo, bool)
        The key, and whether this call revoked it (False: it was revoked already, and
        nothing was changed or audited).

    Raises
    ------
    ApiKeyError
        When no key has this name.
    """
    with audited_transaction(engine) as session:
        row = session.scalars(select(ApiKey).where(ApiKey.name == name)).first()
        if row is None:
            known = ", ".join(session.scalars(select(ApiKey.name).order_by(ApiKey.name)))
            raise ApiKeyError(f"no API key named {name!r}; the keys are: {known or 'none'}")
        if row.revoked_at is not None:
            return KeyInfo.of(row), False
        row.revoked_at = utcnow()
        session.flush()
        append_audit(
            session,
            actor=actor or actors.operator(),
            action="apikey.revoke",
            subject=name,
            details={"role": row.role, "prefix": row.prefix},
        )
        return KeyInfo.of(row), True


def authenticate_key(engine: Engine, key: str) -> KeyInfo | None:
    """The key's record if ``key`` is one medai issued (revoked or not), else None.

    Notes ``last_used_at`` at most once per :data:`LAST_USED_RESOLUTION` per key.
    """
    if not key.startswith(KEY_PREFIX) or len(key) > 256:
        return None
    digest = hash_key(key)
    reader = session_factory(engine.execution_options(sqlite_begin="DEFERRED"))
    with reader() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        info = KeyInfo.of(row)
    now = utcnow()
    if not info.revoked and (
        info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION
    ):
        stale = now - LAST_USED_RESOLUTION
        with session_factory(engine).begin() as session:
            # Conditional, so concurrent requests that all saw an old value write once.
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == info.id)
                .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= stale))
                .values(last_used_at=now)
            )
    return info
