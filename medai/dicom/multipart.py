"""multipart/related bodies of DICOMweb (RFC 2046, RFC 2387): Content-Type, framing, DICOM parts.

One parser for every part of medai that reads DICOMweb multipart: STOW-RS requests
(:mod:`medai.collection.receivers.stow`, and ``POST /v1/predict``) and WADO-RS answers
(:mod:`medai.collection.receivers.dicomweb_archive`).

:func:`split_multipart` cuts a body into its parts and tells the two ways a body can
be wrong apart, because its callers answer them differently: a body that ends before
its closing delimiter (or before a part's declared ``Content-Length``) raises
:class:`~medai.errors.IncompleteResponse` (a download cut short, worth fetching again);
anything else that is not well-formed raises :class:`~medai.errors.MalformedMultipart`.
Parts are found by offsets and each part's content is copied once out of the body; the
work is linear in the body's length, however many parts it holds.

:func:`parse_multipart_related` adds what STOW-RS requires of a request on top:
``application/dicom`` parts only, in binary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from medai.errors import (
    IncompleteResponse,
    MalformedMultipart,
    TooManyParts,
    UnsupportedMediaType,
)

__all__ = [
    "DICOM_MEDIA_TYPE",
    "MAX_BOUNDARY_CHARS",
    "MAX_PART_HEADER_BYTES",
    "Part",
    "check_content_type",
    "parse_content_type",
    "parse_multipart_related",
    "split_multipart",
]

DICOM_MEDIA_TYPE: Final = "application/dicom"
MAX_PART_HEADER_BYTES: Final = 16 * 1024  # one part's header fields: a few short lines

# RFC 2046 5.1.1 allows 1 to 70 characters from bchars, not ending in a space. Real
# senders exceed the length (Orthanc's DICOMweb plugin joins two UUIDs: 73), so the
# length is capped at MAX_BOUNDARY_CHARS instead: still bounded, still the same bchars.
MAX_BOUNDARY_CHARS: Final = 200
_BOUNDARY: Final = re.compile(
    rf"[0-9A-Za-z'()+_,\-./:=? ]{{0,{MAX_BOUNDARY_CHARS - 1}}}[0-9A-Za-z'()+_,\-./:=?]"
)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CRLF: Final = b"\r\n"
_PADDING: Final = b" \t"  # RFC 2046 transport padding after a delimiter


@dataclass(frozen=True)
class Part:
    """One body part: its header fields (names lower-cased) and its content."""

    headers: dict[str, str]
    data: bytes


# -- Content-Type ---------------------------------------------------------------------------


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into its lower-cased media type and its parameters.

    Parameter names are lower-cased; values may be tokens or quoted strings (with
    backslash escapes). A value such as ``application/dicom`` that is not a valid token
    is accepted unquoted, as many clients send it.

    Raises
    ------
    MalformedMultipart
        When a parameter has no ``=`` or a quoted string is not closed.
    """
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MalformedMultipart(
                f"the Content-Type parameter {rest[i:].strip()!r} has no value"
            )
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise MalformedMultipart(
                        f"the Content-Type parameter {name!r} has an unterminated quoted value"
                    )
                if rest[i] == "\\" and i + 1 < n:
                    chars.append(rest[i + 1])
                    i += 2
                elif rest[i] == '"':
                    i += 1
                    break
                else:
                    chars.append(rest[i])
                    i += 1
            params[name] = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            params[name] = rest[i:end].strip()
            i = end
    return media_type.strip().lower(), params


def _is_dicom_type(value: str) -> bool:
    # A transfer-syntax parameter (PS3.18 8.7.3.5.2) may follow the media type.
    media_type, _ = parse_content_type(value)
    return media_type == DICOM_MEDIA_TYPE


def check_content_type(content_type: str) -> tuple[str, str | None]:
    """Check a STOW-RS request's Content-Type before its body is read.

    Returns
    -------
    (boundary, declared_type)
        ``declared_type`` is the ``type`` parameter, or None when the request has none.

    Raises
    ------
    UnsupportedMediaType
        When the request is not ``multipart/related`` or its ``type`` is not
        ``application/dicom``.
    MalformedMultipart
        When the boundary parameter is missing or invalid.
    """
    media_type, params = parse_content_type(content_type)
    if media_type != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="{DICOM_MEDIA_TYPE}", not {media_type!r}'
        )
    declared = params.get("type")
    if declared is not None and not _is_dicom_type(declared):
        raise UnsupportedMediaType(
            f'only type="{DICOM_MEDIA_TYPE}" parts are accepted (DICOM Part 10 files), '
            f"not {declared!r}; send the instances as binary DICOM"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise MalformedMultipart(
            "the Content-Type has no boundary parameter; send "
            'multipart/related; type="application/dicom"; boundary=...'
        )
    if not _BOUNDARY.fullmatch(boundary):
        raise MalformedMultipart(
            f"the multipart boundary is not valid: use 1 to {MAX_BOUNDARY_CHARS} characters "
            "from RFC 2046's set (letters, digits, '()+_,-./:=? and inner spaces)"
        )
    return boundary, declared


# -- framing --------------------------------------------------------------------------------


def split_multipart(body: bytes, boundary: str, *, max_parts: int | None = None) -> list[Part]:
    """The parts of a multipart body, in order (none when it holds only its close delimiter).

    A preamble before the first delimiter and an epilogue after the last are ignored. A
    part whose header fields carry a ``Content-Length`` (as WADO-RS servers send it) must
    be exactly that long; otherwise the part ends at the next delimiter.

    Parameters
    ----------
    body
        The whole body.
    boundary
        The ``boundary`` parameter of its Content-Type (not checked against RFC 2046
        here: servers are read tolerantly; see :func:`check_content_type` for requests).
    max_parts
        The most parts accepted; None for no limit.

    Raises
    ------
    TooManyParts
        As soon as the body holds a part more than ``max_parts``, before that part is
        copied (so a body of many tiny parts costs no more than ``max_parts`` of them).
    IncompleteResponse
        When the body ends before its closing delimiter ``--boundary--``, inside a part's
        header fields, or before the end a part's ``Content-Length`` declares.
    MalformedMultipart
        When the body does not contain the boundary, a delimiter is not on a line of its
        own, a part's header block is malformed or longer than
        :data:`MAX_PART_HEADER_BYTES`, or a ``Content-Length`` does not match the part.
    """
    try:
        dash = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedMultipart("the multipart boundary is not ASCII") from None
    delimiter = _CRLF + dash
    position = _first_delimiter(body, dash)
    parts: list[Part] = []
    while True:
        after = position + len(dash)
        if body.startswith(b"--", after):
            return parts  # the close delimiter; an epilogue after it is ignored
        start = _end_of_delimiter_line(body, after)
        number = len(parts) + 1
        if max_parts is not None and number > max_parts:
            raise TooManyParts(max_parts)
        headers, content_start = _header_fields(body, start, delimiter, number)
        end = _content_end(body, content_start, delimiter, headers, number)
        parts.append(Part(headers, body[content_start:end]))
        position = end + len(_CRLF)


def _first_delimiter(body: bytes, dash: bytes) -> int:
    """Where the first delimiter (``--boundary`` at the start of a line) starts."""
    if body.startswith(dash) and _is_delimiter(body, 0, len(dash)):
        return 0
    if dash.startswith(body):
        raise IncompleteResponse("the body ends before its first boundary")
    # A preamble (ignored) ends with the CRLF that belongs to the first delimiter.
    found = _find_delimiter(body, _CRLF + dash, 0)
    if found >= 0:
        return found + len(_CRLF)
    if any(body.endswith((_CRLF + dash)[:k]) for k in range(1, len(dash) + 2)):
        raise IncompleteResponse("the body ends inside its first boundary")
    if dash in body:
        raise MalformedMultipart(
            "the boundary never stands on a line of its own: multipart lines "
            "must end with CRLF line breaks"
        )
    raise MalformedMultipart("the body does not contain the boundary given in the Content-Type")


def _is_delimiter(body: bytes, at: int, length: int) -> bool:
    """Whether the ``length`` bytes at ``at`` are a delimiter: what follows says so.

    ``--`` (the close delimiter), CRLF or transport padding make one; so does the body
    ending there or one byte short of the next two, which the caller finds cut.
    """
    after = body[at + length : at + length + 2]
    return after in (b"--", _CRLF, b"", b"-", b"\r") or after[:1] in (b" ", b"\t")


def _find_delimiter(body: bytes, needle: bytes, start: int) -> int:
    """The next ``needle`` that really is a delimiter, or -1."""
    while True:
        found = body.find(needle, start)
        if found < 0 or _is_delimiter(body, found, len(needle)):
            return found
        start = found + 1


def _end_of_delimiter_line(body: bytes, after: int) -> int:
    """Where the part after a delimiter starts: past its padding and CRLF."""
    line_end = body.find(_CRLF, after)
    if line_end < 0:
        rest = body[after:]
        if rest in (b"-", b"") or not rest.rstrip(b"\r").strip(_PADDING):
            raise IncompleteResponse("the body ends inside a boundary delimiter")
        raise MalformedMultipart("a boundary delimiter is not followed by a line break (CRLF)")
    if body[after:line_end].strip(_PADDING):
        raise MalformedMultipart("a boundary delimiter is not followed by a line break (CRLF)")
    return line_end + len(_CRLF)


def _header_fields(
    body: bytes, start: int, delimiter: bytes, number: int
) -> tuple[dict[str, str], int]:
    """The part's header fields (names lower-cased) and where its content starts."""
    if len(body) < start + len(_CRLF):
        raise IncompleteResponse(f"the body ends at the start of part {number}")
    if body.startswith(_CRLF, start):
        return {}, start + len(_CRLF)  # no header fields at all
    window = min(len(body), start + MAX_PART_HEADER_BYTES)
    header_end = body.find(_CRLF + _CRLF, start, window)
    # A delimiter inside what would be the header block: the part has no blank line.
    next_delimiter = body.find(delimiter, start, window if header_end < 0 else header_end)
    if header_end < 0 or next_delimiter >= 0:
        if next_delimiter < 0 and window == len(body):
            raise IncompleteResponse(f"the body ends inside part {number}'s header fields")
        raise MalformedMultipart(
            f"part {number} has no blank line (CRLF CRLF) ending its header fields"
        )
    headers: dict[str, str] = {}
    last: str | None = None
    for line in body[start:header_end].split(_CRLF):
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and last is not None:
            headers[last] += " " + text.strip()  # obsolete line folding
            continue
        name, colon, value = text.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise MalformedMultipart(f"part {number} has a malformed header field line")
        last = name.lower()
        headers[last] = value.strip()
    return headers, header_end + 2 * len(_CRLF)


def _content_end(
    body: bytes, start: int, delimiter: bytes, headers: dict[str, str], number: int
) -> int:
    """Where the part's content ends: the CRLF of the delimiter that follows it."""
    declared = headers.get("content-length", "").strip()
    if not declared.isdigit():  # none, or not a number: the delimiter decides
        end = _find_delimiter(body, delimiter, start)
        if end < 0:
            raise IncompleteResponse(
                f"the body ends inside part {number}, before the closing boundary"
            )
        return end
    end = start + int(declared)
    if len(body) < end + len(delimiter) + 2:
        if body.find(delimiter + b"--", start) >= 0:
            # The body is whole (it has its close delimiter), so the length lies.
            raise MalformedMultipart(f"part {number}'s Content-Length runs past its content")
        raise IncompleteResponse(f"the body ends inside part {number}, before its declared length")
    if not body.startswith(delimiter, end) or not _is_delimiter(body, end, len(delimiter)):
        raise MalformedMultipart(f"part {number}'s Content-Length does not match its content")
    return end


# -- STOW-RS request bodies -----------------------------------------------------------------


def parse_multipart_related(
    content_type: str, body: bytes, *, max_parts: int | None = None
) -> list[Part]:
    """The DICOM parts of a STOW-RS request body.

    Parameters
    ----------
    content_type
        The request's Content-Type header, e.g.
        ``multipart/related; type="application/dicom"; boundary=abc``.
    body
        The whole request body.
    max_parts
        The most parts (instances) one request may hold; None for no limit.

    Returns
    -------
    list of Part
        In request order; at least one.

    Raises
    ------
    TooManyParts
        When the body holds more than ``max_parts`` parts (nothing of it is used).
    UnsupportedMediaType
        When the request is not ``multipart/related``, its ``type`` is not
        ``application/dicom``, or a part says it is something else. Without a ``type``
        parameter every part must carry ``Content-Type: application/dicom`` itself.
    MalformedMultipart
        When the boundary is missing or invalid, the body does not start with it or
        lacks the final ``--boundary--`` (e.g. an upload cut short), a part's header
        block is malformed, or there are no parts.
    """
    boundary, declared = check_content_type(content_type)
    try:
        parts = split_multipart(body, boundary, max_parts=max_parts)
    except IncompleteResponse:
        # The HTTP layer read the whole body: it is the upload that was cut.
        raise MalformedMultipart(
            "the body ends without the closing boundary (--boundary--): the upload "
            "was probably cut short; send it again"
        ) from None
    if not parts:
        raise MalformedMultipart("the request holds no parts: send at least one DICOM instance")
    for number, part in enumerate(parts, 1):
        part_type = part.headers.get("content-type")
        if part_type is None and declared is None:
            raise UnsupportedMediaType(
                f"part {number} has no Content-Type and the request names no type: add "
                f'type="{DICOM_MEDIA_TYPE}" to the request\'s Content-Type'
            )
        if part_type is not None and not _is_dicom_type(part_type):
            raise UnsupportedMediaType(
                f"part {number} is {parse_content_type(part_type)[0]!r}; only "
                f"{DICOM_MEDIA_TYPE} parts are accepted"
            )
        encoding = part.headers.get("content-transfer-encoding", "binary").strip().lower()
        if encoding not in {"binary", "8bit", "7bit"}:
            raise MalformedMultipart(
                f"part {number} uses Content-Transfer-Encoding {encoding!r}; send it as binary"
            )
    return parts
