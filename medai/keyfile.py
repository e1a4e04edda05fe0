"""Key files (campaign, serving): 256 random bits, 0600, never overwritten; passphrase escrow.

This sits below collection and serving so both read their keys without importing each other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from medai.errors import KeyEscrowError, KeyFileError

__all__ = [
    "CREATE_HINT",
    "KEY_BYTES",
    "create_key_file",
    "ensure_key_file",
    "escrow_key",
    "key_fingerprint",
    "load_key",
    "open_escrow",
    "read_escrow_header",
    "restore_key_file",
]

logger = logging.getLogger(__name__)

KEY_BYTES = 32
"""Length of a key: 256 random bits, stored as 64 hex digits."""

CREATE_HINT = "create one with `medai campaign init CAMPAIGN.toml` or point MEDAI_KEY_FILE at it"
"""What to do about a missing campaign key, appended to the errors of :func:`load_key`."""

# A fingerprint hashes under its own label, so it never equals a pseudonym made with the key.
_DOMAIN_FINGERPRINT = b"medai/v1/key-fingerprint\x00"


def _write_new(path: Path, key_hex: str) -> None:
    """Write ``key_hex`` to a new file at ``path`` (0600); never replaces an existing one."""
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
        os.write(fd, (key_hex + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


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
    _write_new(path, secrets.token_hex(KEY_BYTES))
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


# -- escrow: the key encrypted under a passphrase, to restore a lost key file ---------------

ESCROW_FORMAT = "medai-key-escrow"
ESCROW_VERSION = 1
# scrypt at 2**15 x 8 takes 32 MiB and about 0.1 s: cheap once, costly for a guesser.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_HEADER_FIELDS = (
    "format",
    "version",
    "kdf",
    "n",
    "r",
    "p",
    "salt",
    "nonce",
    "fingerprint",
    "campaign",
)


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _header_bytes(document: dict[str, Any]) -> bytes:
    # Every field but the ciphertext is authenticated: an edited fingerprint fails the tag.
    header = {k: document[k] for k in _HEADER_FIELDS}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def escrow_key(key: bytes, passphrase: str, *, campaign: str) -> bytes:
    """The escrow document of ``key``: JSON, the key under scrypt + AES-256-GCM.

    It names the campaign and the key's fingerprint in clear (both are in the audit log
    already), so an import can be checked against the catalog before anything is written.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    document: dict[str, Any] = {
        "format": ESCROW_FORMAT,
        "version": ESCROW_VERSION,
        "kdf": "scrypt",
        "n": _SCRYPT_N,
        "r": _SCRYPT_R,
        "p": _SCRYPT_P,
        "salt": base64.b64encode(salt).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "fingerprint": key_fingerprint(key),
        "campaign": campaign,
    }
    cipher = AESGCM(_derive(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))
    sealed = cipher.encrypt(nonce, key, _header_bytes(document))
    document["ciphertext"] = base64.b64encode(sealed).decode("ascii")
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def read_escrow_header(data: bytes) -> dict[str, Any]:
    """The escrow document's fields, checked for shape (nothing is decrypted).

    Raises
    ------
    KeyEscrowError
        If ``data`` is not a medai key escrow of a version this medai reads.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or document.get("format") != ESCROW_FORMAT:
        raise KeyEscrowError(
            "this is not a medai key escrow file (made by `medai campaign key export`)"
        )
    if document.get("version") != ESCROW_VERSION:
        raise KeyEscrowError(
            f"key escrow version {document.get('version')!r} is not one this medai reads "
            f"({ESCROW_VERSION}); use the medai that exported it"
        )
    missing = [k for k in (*_HEADER_FIELDS, "ciphertext") if k not in document]
    if missing or document["kdf"] != "scrypt":
        raise KeyEscrowError(
            f"the key escrow file is incomplete ({', '.join(missing) or 'kdf'}); "
            "use an unaltered copy of it"
        )
    return document


def open_escrow(data: bytes, passphrase: str) -> bytes:
    """The key sealed in an escrow document made by :func:`escrow_key`.

    Raises
    ------
    KeyEscrowError
        If the document is malformed, or the passphrase is wrong or the file was altered
        (AES-GCM cannot tell those apart, and says so).
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    document = read_escrow_header(data)
    try:
        salt = base64.b64decode(document["salt"], validate=True)
        nonce = base64.b64decode(document["nonce"], validate=True)
        sealed = base64.b64decode(document["ciphertext"], validate=True)
        n, r, p = int(document["n"]), int(document["r"]), int(document["p"])
        if not (2**14 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            # Bounds keep a crafted file from asking scrypt for gigabytes.
            raise ValueError("scrypt parameters out of range")
        cipher = AESGCM(_derive(passphrase, salt, n, r, p))
        key = cipher.decrypt(nonce, sealed, _header_bytes(document))
    except InvalidTag:
        raise KeyEscrowError(
            "the passphrase is wrong, or the key escrow file was altered: nothing was restored"
        ) from None
    except (ValueError, TypeError, binascii.Error):
        raise KeyEscrowError(
            "the key escrow file is damaged (a field does not decode); use an unaltered copy"
        ) from None
    if len(key) != KEY_BYTES or key_fingerprint(key) != document["fingerprint"]:
        raise KeyEscrowError("the key escrow file holds no valid key; use an unaltered copy")
    return key


def restore_key_file(path: Path, key: bytes) -> bool:
    """Write ``key`` to ``path`` (0600) unless that file already holds it; return whether written.

    Raises
    ------
    KeyFileError
        If ``path`` holds another key (it is never overwritten) or cannot be read.
    """
    path = Path(path)
    if path.exists():
        if load_key(path) == key:
            return False
        raise KeyFileError(
            f"pseudonymization key file {path} already holds another key; refusing to "
            "overwrite it: move it aside first if it is not this campaign's"
        )
    _write_new(path, key.hex())
    logger.info("restored pseudonymization key file %s", path)
    return True
