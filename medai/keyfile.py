"""Key files (the campaign key, the serving key): 256 random bits, mode 0600, never overwritten.

This sits below collection and serving so both read their keys without importing each other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

from medai.errors import KeyFileError

__all__ = [
    "CREATE_HINT",
    "KEY_BYTES",
    "create_key_file",
    "ensure_key_file",
    "key_fingerprint",
    "load_key",
]

logger = logging.getLogger(__name__)

KEY_BYTES = 32
"""Length of a key: 256 random bits, stored as 64 hex digits."""

CREATE_HINT = "create one with `medai campaign init CAMPAIGN.toml` or point MEDAI_KEY_FILE at it"
"""What to do about a missing campaign key, appended to the errors of :func:`load_key`."""

# A fingerprint hashes under its own label, so it never equals a pseudonym made with the key.
_DOMAIN_FINGERPRINT = b"medai/v1/key-fingerprint\x00"


def create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` with mode 0600.

    Parameters
    ----------
    path
        Where to write the key (64 hex digits and a newline). Parent folders are created.

    Raises
    ------
    KeyFileError
        If ``path`` already exists: a key is never overwritten, because every pseudonym
        issued so far depends on it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"pseudonymization key file {path} already exists; refusing to overwrite it "
            "(every pseudonym issued so far depends on that key)"
        ) from None
    try:
        # O_CREAT's mode is filtered by the umask; make 0600 explicit.
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.info("created pseudonymization key file %s", path)


def load_key(path: Path, *, hint: str = CREATE_HINT) -> bytes:
    """Read a key written by :func:`create_key_file`.

    Parameters
    ----------
    path
        The key file.
    hint
        What to do about a missing or broken file, appended to the error message.

    Returns
    -------
    bytes
        The 32-byte key.

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable or does not hold 64 hex digits; the message
        says what to run.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"pseudonymization key file {path} not found; {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            f"pseudonymization key file {path} cannot be read ({exc.__class__.__name__}); "
            f"check its permissions, or {hint}"
        ) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"pseudonymization key file {path} is malformed (expected {2 * KEY_BYTES} hex "
            f"digits); restore it from backup, or {hint} for a new campaign"
        )
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("pseudonymization key file %s is readable by others; chmod 600 it", path)
    return key


def ensure_key_file(path: Path) -> bool:
    """Create the key file at ``path`` unless there is one; return whether this call created it.

    Safe when several processes start at once: the one that loses the race reuses the key
    the other wrote. The key is read back either way, so a malformed file stops the caller
    instead of being replaced.

    Raises
    ------
    KeyFileError
        When the file exists but cannot be read or is malformed.
    """
    created = False
    if not path.exists():
        try:
            create_key_file(path)
            created = True
        except KeyFileError:
            if not path.exists():
                raise
    load_key(path)
    return created


def key_fingerprint(key: bytes) -> str:
    """16 hex digits that tell keys apart in the audit log without revealing them."""
    return hashlib.sha256(_DOMAIN_FINGERPRINT + key).hexdigest()[:16]
