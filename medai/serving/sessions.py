"""Dashboard sessions: a signed, expiring token in the browser's cookie instead of the key.

A steward signs in to the dashboard once with a key; the browser then holds a *session
token* that names the key by its catalog id and is worth nothing anywhere else: not a
bearer key for the API, and not a way to recover the key (it holds neither the key nor
its hash). A token is stateless, so every ``medai serve`` worker process accepts the
tokens of the others::

    v1.<key id>.<expires, Unix seconds>.<nonce>.<key tag>.<mac>

- ``mac``: HMAC-SHA256 under the *session secret* over everything before it, checked
  first and in constant time, so a forged or altered token is refused without a query.
- ``expires``: issue time plus ``dashboard_session_hours``; a token that claims to live
  longer than the current setting allows is refused too, so shortening the setting
  shortens the sessions already given out.
- ``key tag``: a keyed hash of the key's name and shown prefix, so a token never opens
  another key that later got the same id (a catalog created anew under the same home).

Each check then looks the key up: a revoked key's sessions stop at its next request.

The session secret is a file of 64 hex digits, mode 0600, ``<home>/dashboard-session.key``,
created on first use (written whole to a temporary file, then hard-linked into place, so
workers starting together agree on one secret and none reads a half-written file).
Deleting it signs every dashboard user out (a new one is made on the next sign-in).

Signing out deletes the browser's cookie, but the token is not recorded anywhere: a copy
taken from the browser stays valid until it expires, unless the key is revoked.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

from medai.errors import KeyFileError
from medai.serving.keys import KeyInfo, key_by_id, role_grants

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from medai.config import Settings

__all__ = ["SECRET_FILE_NAME", "SESSION_COOKIE", "DashboardSessions", "load_or_create_secret"]

# The browser cookie that holds a session token; every dashboard page reads it from here.
SESSION_COOKIE: Final = "medai_dashboard_session"

logger = logging.getLogger(__name__)

SECRET_FILE_NAME: Final = "dashboard-session.key"
_SECRET_BYTES: Final = 32
_VERSION: Final = "v1"
# Domain labels: the one secret never gives the same MAC for two purposes.
_DOMAIN_MAC: Final = b"medai/v1/dashboard-session\x00"
_DOMAIN_TAG: Final = b"medai/v1/dashboard-session-key\x00"
_B64: Final = r"[A-Za-z0-9_-]"
_TOKEN: Final = re.compile(
    rf"v1\.(?P<id>[1-9][0-9]{{0,17}})\.(?P<expires>[1-9][0-9]{{0,11}})\.{_B64}{{22}}"
    rf"\.(?P<tag>{_B64}{{22}})\.(?P<mac>{_B64}{{43}})"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _read_secret(path: Path) -> bytes:
    try:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError):
        secret = b""
    except OSError as exc:
        raise KeyFileError(
            f"the dashboard session secret {path} cannot be read ({exc.__class__.__name__}); "
            "check its permissions"
        ) from None
    if len(secret) != _SECRET_BYTES:
        raise KeyFileError(
            f"the dashboard session secret {path} is malformed; delete it (a new one is "
            "made on the next sign-in, and dashboard users sign in again)"
        )
    return secret


def load_or_create_secret(path: Path) -> bytes:
    """The session secret at ``path``, created (mode 0600) when there is none yet.

    Safe when several processes call it at once: each writes a whole candidate to a
    temporary file and hard-links it into place; a link never replaces a file, so the
    first one wins and the others read the winner's.

    Raises
    ------
    medai.errors.KeyFileError
        When the file exists but cannot be read or is malformed.
    """
    if not path.exists():
        try:
            _create_secret(path)
        except OSError as exc:
            raise KeyFileError(
                f"the dashboard session secret {path} cannot be created "
                f"({exc.__class__.__name__}); check that the home folder is writable"
            ) from None
    return _read_secret(path)


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600 whatever the umask.
    fd, candidate = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(_SECRET_BYTES) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(candidate, path)
            logger.info("created the dashboard session secret %s", path)
        except FileExistsError:
            pass  # another worker created it first: theirs is the one
    finally:
        os.unlink(candidate)


class DashboardSessions:
    """Issue and check the dashboard's session tokens (one per app; thread-safe).

    Parameters
    ----------
    secret_file
        Where the session secret is kept; read (or created) on first use, so an app
        starts even before its home is writable, and fails only at sign-in.
    lifetime
        How long a token is valid after it is issued.
    """

    def __init__(self, secret_file: Path, lifetime: dt.timedelta) -> None:
        self.secret_file = secret_file
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._secret: bytes | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> DashboardSessions:
        """Sessions with ``<home>/dashboard-session.key`` and ``dashboard_session_hours``."""
        return cls(
            settings.resolved_home / SECRET_FILE_NAME,
            dt.timedelta(hours=settings.dashboard_session_hours),
        )

    @property
    def max_age(self) -> int:
        """The cookie's Max-Age: the lifetime in whole seconds."""
        return int(self.lifetime.total_seconds())

    def _key(self) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = load_or_create_secret(self.secret_file)
            return self._secret

    def _tag(self, key: KeyInfo) -> str:
        message = _DOMAIN_TAG + f"{key.id}\x00{key.name}\x00{key.prefix}".encode()
        return _b64(hmac.new(self._key(), message, hashlib.sha256).digest()[:16])

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key(), _DOMAIN_MAC + body.encode(), hashlib.sha256).digest())

    def issue(self, key: KeyInfo, *, now: dt.datetime | None = None) -> str:
        """A new token for ``key`` (already checked by the caller), valid for the lifetime.

        Raises
        ------
        medai.errors.KeyFileError
            When the session secret cannot be read or created.
        """
        expires = int(((now or dt.datetime.now(dt.UTC)) + self.lifetime).timestamp())
        nonce = _b64(secrets.token_bytes(16))
        body = f"{_VERSION}.{key.id}.{expires}.{nonce}.{self._tag(key)}"
        return f"{body}.{self._mac(body)}"

    def check(
        self, engine: Engine, token: str, *, now: dt.datetime | None = None
    ) -> KeyInfo | None:
        """The key a valid, unexpired token names, when it is not revoked; else None.

        Call it from a worker thread: it queries the catalog (whose errors propagate),
        but only for a token whose MAC and expiry hold.
        """
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        body, _, mac = token.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        remaining = int(match["expires"]) - (now or dt.datetime.now(dt.UTC)).timestamp()
        if not 0 < remaining <= self.lifetime.total_seconds():
            return None
        key = key_by_id(engine, int(match["id"]))
        if key is None or key.revoked or not hmac.compare_digest(match["tag"], self._tag(key)):
            return None
        return key

    def steward(self, engine: Engine, token: str | None) -> KeyInfo | None:
        """:meth:`check`, for a key whose role grants the steward's (the dashboard's users)."""
        if not token:
            return None
        info = self.check(engine, token)
        if info is None or not role_grants(info.role, "steward"):
            return None
        return info
