"""The UIDs medai makes for the objects it writes (SRs of findings): under the organisation's root.

A DICOM UID must be globally unique, so it is built under a root its maker owns (PS3.5
9.1): ``MEDAI_ORG_UID_ROOT`` (:attr:`medai.config.Settings.org_uid_root`), an
organisation's registered root. Without one, ``2.25.<n>`` where ``n`` is the decimal value
of a UUID (ISO/IEC 9834-8, PS3.5 B.2): valid without any registration. Never pydicom's
``generate_uid()`` default, whose root ``1.2.826.0.1.3680043.8.498`` is pydicom's and
shared by every program that calls it.

:func:`new_uid` is random (a new object); :func:`derived_uid` is a pure function of its
parts (the same model version is always the same device UID). Both fit in 64 characters
and have no component with a leading zero.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Final

__all__ = ["MAX_ROOT_LENGTH", "UUID_ROOT", "derived_uid", "new_uid"]

UUID_ROOT: Final = "2.25"
"""The root of UUID-derived UIDs (ISO/IEC 9834-8)."""
MAX_ROOT_LENGTH: Final = 40
"""The longest organisation root: it leaves 23 digits (over 76 bits) for the suffix."""
_MAX_UID: Final = 64
# 39 digits hold any 128-bit value; more digits would add no entropy, only length.
_MAX_SUFFIX_DIGITS: Final = 39


def _check_root(root: str) -> None:
    components = root.split(".")
    if (
        len(root) > MAX_ROOT_LENGTH
        or not all(c.isdigit() and c.isascii() for c in components)
        or any(len(c) > 1 and c.startswith("0") for c in components)
    ):
        raise ValueError(
            f"{root!r} is not a DICOM UID root of at most {MAX_ROOT_LENGTH} characters "
            "(digits and dots, no leading zeros): fix MEDAI_ORG_UID_ROOT"
        )


def _suffix_digits(root: str) -> int:
    return min(_MAX_SUFFIX_DIGITS, _MAX_UID - len(root) - 1)


def new_uid(root: str | None = None) -> str:
    """A new random UID: under ``root``, or ``2.25.<random UUID>`` when ``root`` is None.

    Raises
    ------
    ValueError
        ``root`` is not a UID root of at most :data:`MAX_ROOT_LENGTH` characters.
    """
    if root is None or root == UUID_ROOT:  # under 2.25 only a UUID's integer may follow
        return f"{UUID_ROOT}.{uuid.uuid4().int}"
    _check_root(root)
    # int formatting never writes a leading zero; 0 itself is a valid component.
    return f"{root}.{secrets.randbelow(10 ** _suffix_digits(root))}"


def derived_uid(root: str | None, *parts: str) -> str:
    """The UID that ``parts`` always give (the same parts, the same UID), under ``root``.

    Without a root, ``2.25.`` and an RFC 9562 version-8 UUID made of the parts' SHA-256.

    Raises
    ------
    ValueError
        ``root`` is not a UID root of at most :data:`MAX_ROOT_LENGTH` characters.
    """
    # NUL between the parts: ("ab", "c") and ("a", "bc") are different objects.
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    if root is None or root == UUID_ROOT:
        raw = bytearray(digest[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: a custom (here: hashed) UUID
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
        return f"{UUID_ROOT}.{int.from_bytes(raw, 'big')}"
    _check_root(root)
    return f"{root}.{int.from_bytes(digest, 'big') % 10 ** _suffix_digits(root)}"
