"""The multipart/related parser of STOW-RS (RFC 2046, RFC 2387), without a server."""

from __future__ import annotations

import pytest

from medai.collection.receivers.stow import (
    is_valid_uid,
    parse_content_type,
    parse_multipart_related,
)
from medai.errors import MalformedMultipart, UnsupportedMediaType
from tests.serving.helpers import multipart

DICOM = 'multipart/related; type="application/dicom"; boundary='


def test_content_type_parameters() -> None:
    assert parse_content_type('Multipart/Related; TYPE="application/dicom"; boundary="a b"') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "a b"},
    )
    # Unquoted values with a slash, as many clients send them; escapes in quoted strings.
    assert parse_content_type(r'multipart/related;type=application/dicom;boundary="x\"y"') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": 'x"y'},
    )
    with pytest.raises(MalformedMultipart):
        parse_content_type('multipart/related; boundary="open')
    with pytest.raises(MalformedMultipart):
        parse_content_type("multipart/related; boundary")


@pytest.mark.parametrize("quoted", [True, False])
def test_parts_come_back_byte_exact(quoted: bool) -> None:
    # Content that looks like a delimiter but is not one, CRLFs and dashes at the edges.
    payloads = [b"\r\n--medai-test-7f3aX not a delimiter\r\n", b"", b"--", b"\x00" * 300]
    body, content_type = multipart(payloads, quoted=quoted)
    parts = parse_multipart_related(content_type, body)
    assert [part.data for part in parts] == payloads
    assert all(part.headers == {"content-type": "application/dicom"} for part in parts)


def test_preamble_epilogue_padding_folding_and_untyped_parts() -> None:
    body = (
        b"This is a preamble, ignored.\r\n"
        b"--b1  \t\r\n"  # transport padding after the delimiter
        b"content-TYPE: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-ID: <1>\r\n"
        b"\r\n"
        b"first\r\n"
        b"--b1\r\n"
        b"\r\n"  # no header fields: the request's type applies
        b"second\r\n"
        b"--b1--\r\nan epilogue, ignored"
    )
    parts = parse_multipart_related(DICOM + "b1", body)
    assert [part.data for part in parts] == [b"first", b"second"]
    assert parts[0].headers["content-type"].startswith("application/dicom;")
    assert parts[0].headers["content-id"] == "<1>"
    assert parts[1].headers == {}


def test_a_request_without_type_needs_typed_parts() -> None:
    body, _ = multipart([b"one"], boundary="b2")
    assert [p.data for p in parse_multipart_related("multipart/related; boundary=b2", body)] == [
        b"one"
    ]
    untyped, _ = multipart([b"one"], boundary="b2", part_type=None)
    with pytest.raises(UnsupportedMediaType, match="no Content-Type"):
        parse_multipart_related("multipart/related; boundary=b2", untyped)


@pytest.mark.parametrize(
    ("content_type", "part_type", "message"),
    [
        ("application/dicom", "application/dicom", "not 'application/dicom'"),
        ("multipart/form-data; boundary=b", "application/dicom", "multipart/form-data"),
        ('multipart/related; type="application/dicom+json"; boundary=b', None, r"dicom\+json"),
        (DICOM + "b", "image/jpeg", "part 1 is 'image/jpeg'"),
    ],
)
def test_wrong_media_types(content_type: str, part_type: str | None, message: str) -> None:
    body, _ = multipart([b"x"], boundary="b", part_type=part_type)
    with pytest.raises(UnsupportedMediaType, match=message):
        parse_multipart_related(content_type, body)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ('multipart/related; type="application/dicom"', b"", "no boundary"),
        (DICOM + '"' + "x" * 71 + '"', b"", "not valid"),
        (DICOM + "b", b"no delimiter at all", "does not contain the boundary"),
        (DICOM + "b", b"--b\r\n\r\nhalf an upload", "cut short"),
        (DICOM + "b", b"--b--\r\n", "no parts"),
        (DICOM + "b", b"--b\n\ndata\n--b--", "CRLF"),  # bare LF, not CRLF
        (DICOM + "b", b"--b\r\nContent-Type application/dicom\r\n\r\nx\r\n--b--", "malformed"),
        (DICOM + "b", b"--b\r\nContent-Type: x" + b"x" * 20000 + b"\r\n--b--", "blank line"),
        (
            DICOM + "b",
            b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\neA==\r\n--b--",
            "binary",
        ),
    ],
)
def test_malformed_bodies(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(MalformedMultipart, match=message):
        parse_multipart_related(content_type, body)


def test_uid_syntax() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.1")
    assert is_valid_uid("2.25." + "9" * 39)
    for bad in ("", "1..2", "01.2", "1.2.", "DOE^JOHN", "1.2 ", "1." + "2" * 63):
        assert not is_valid_uid(bad), bad
