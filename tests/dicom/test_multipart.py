"""The one multipart/related parser of STOW-RS requests and WADO-RS answers, on its own."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from medai.dicom.multipart import (
    MAX_PART_HEADER_BYTES,
    check_content_type,
    parse_content_type,
    parse_multipart_related,
    split_multipart,
)
from medai.errors import IncompleteResponse, MalformedMultipart, UnsupportedMediaType

BOUNDARY = "b0undary-42"
DICOM = 'multipart/related; type="application/dicom"; boundary='
PAYLOAD = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4


def body_of(
    parts: Sequence[bytes],
    *,
    boundary: str = BOUNDARY,
    part_type: str | None = "application/dicom",
    length: bool = False,
) -> bytes:
    """A multipart body built by hand (RFC 2046), optionally with Content-Length per part."""
    chunks = []
    for data in parts:
        chunks.append(f"--{boundary}\r\n".encode())
        if part_type is not None:
            chunks.append(f"Content-Type: {part_type}\r\n".encode())
        if length:
            chunks.append(f"Content-Length: {len(data)}\r\n".encode())
        chunks.append(b"\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


# -- Content-Type -----------------------------------------------------------------------------


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
    with pytest.raises(MalformedMultipart, match="unterminated"):
        parse_content_type('multipart/related; boundary="open')
    with pytest.raises(MalformedMultipart, match="has no value"):
        parse_content_type("multipart/related; boundary")


def test_a_stow_content_type_is_checked_before_the_body() -> None:
    assert check_content_type(DICOM + '"a b"') == ("a b", "application/dicom")
    assert check_content_type("multipart/related; boundary=x") == ("x", None)
    with pytest.raises(UnsupportedMediaType, match="multipart/form-data"):
        check_content_type("multipart/form-data; boundary=x")
    with pytest.raises(UnsupportedMediaType, match=r"dicom\+json"):
        check_content_type('multipart/related; type="application/dicom+json"; boundary=x')
    with pytest.raises(MalformedMultipart, match="no boundary"):
        check_content_type('multipart/related; type="application/dicom"')
    with pytest.raises(MalformedMultipart, match="not valid"):
        check_content_type(DICOM + '"' + "x" * 201 + '"')
    with pytest.raises(MalformedMultipart, match="not valid"):
        check_content_type(DICOM + '"ends in a space "')


# Orthanc's DICOMweb plugin joins two UUIDs: 73 characters, past RFC 2046's 70.
ORTHANC_BOUNDARY = "2f4a6a0e-8f3b-4c1d-9e2a-5b7c8d9e0f1a-7c3e9b1d-2a4f-4e6b-8d0c-1f3a5b7d9e2c"


def test_orthanc_s_73_character_boundary_is_accepted() -> None:
    assert len(ORTHANC_BOUNDARY) == 73
    content_type = f"multipart/related; type=application/dicom; boundary={ORTHANC_BOUNDARY}"
    body = body_of([PAYLOAD, PAYLOAD[::-1]], boundary=ORTHANC_BOUNDARY)
    parts = parse_multipart_related(content_type, body)
    assert [part.data for part in parts] == [PAYLOAD, PAYLOAD[::-1]]
    # Still bounded: a boundary is a short token, not an arbitrarily long string.
    assert check_content_type(DICOM + "x" * 200)[0] == "x" * 200


# -- framing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [False, True])
def test_parts_come_back_byte_exact(length: bool) -> None:
    # Content that looks like a delimiter but is not one, CRLFs and dashes at the edges.
    payloads = [b"\r\n--b0undary-42X not a delimiter\r\n", b"", b"--", b"\x00" * 300, PAYLOAD]
    parts = split_multipart(body_of(payloads, length=length), BOUNDARY)
    assert [part.data for part in parts] == payloads
    expected = {"content-type": "application/dicom"}
    assert [part.headers for part in parts] == [
        expected | ({"content-length": str(len(p))} if length else {}) for p in payloads
    ]


def test_preamble_epilogue_padding_folding_and_parts_without_headers() -> None:
    body = (
        b"This is a preamble, ignored.\r\n"
        b"--b1  \t\r\n"  # transport padding after the delimiter
        b"content-TYPE: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-ID: <1>\r\n"
        b"\r\n"
        b"first\r\n"
        b"--b1\r\n"
        b"\r\n"  # no header fields at all
        b"second\r\n"
        b"--b1--\r\nan epilogue, ignored"
    )
    parts = split_multipart(body, "b1")
    assert [part.data for part in parts] == [b"first", b"second"]
    assert parts[0].headers["content-type"].startswith("application/dicom;")
    assert parts[0].headers["content-id"] == "<1>"
    assert parts[1].headers == {}
    assert split_multipart(b"--b1--\r\n", "b1") == []  # a close delimiter alone: no parts


def test_a_declared_length_lets_the_content_hold_the_delimiter() -> None:
    inside = b"head\r\n--" + BOUNDARY.encode() + b"\r\ntail"
    assert split_multipart(body_of([inside], length=True), BOUNDARY)[0].data == inside
    # Without it, the part ends there, and "tail" starts a part with no header block.
    with pytest.raises(MalformedMultipart, match="part 2 has no blank line"):
        split_multipart(body_of([inside]), BOUNDARY)


@pytest.mark.parametrize("length", [False, True])
@pytest.mark.parametrize("preamble", [b"", b"a preamble\r\n"])
def test_a_body_cut_anywhere_is_incomplete_never_parts(length: bool, preamble: bytes) -> None:
    body = preamble + body_of([PAYLOAD, b"second"], length=length)
    # Every cut short of the close delimiter's "--" (the CRLF after it is optional); a
    # cut inside the preamble leaves no trace of a multipart body, so it is not tried.
    for cut in range(len(preamble) + 1 if preamble else 0, len(body) - 2):
        with pytest.raises(IncompleteResponse):
            split_multipart(body[:cut], BOUNDARY)
    assert len(split_multipart(body[: len(body) - 2], BOUNDARY)) == 2


@pytest.mark.parametrize(
    ("declared", "message"),
    [(len(PAYLOAD) - 1, "does not match"), (len(PAYLOAD) + 1, "does not match")]
    + [(len(PAYLOAD) + 50, "runs past"), (10**30, "runs past")],
)
def test_a_lying_content_length_is_malformed(declared: int, message: str) -> None:
    body = body_of([PAYLOAD], length=True).replace(
        f"Content-Length: {len(PAYLOAD)}".encode(), f"Content-Length: {declared}".encode()
    )
    with pytest.raises(MalformedMultipart, match=message):
        split_multipart(body, BOUNDARY)


def test_a_length_that_is_not_a_number_is_ignored() -> None:
    body = body_of([PAYLOAD]).replace(b"\r\n\r\n", b"\r\nContent-Length: many\r\n\r\n", 1)
    assert split_multipart(body, BOUNDARY)[0].data == PAYLOAD


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no delimiter at all", "does not contain the boundary"),
        (b"--b\n\ndata\n--b--", "CRLF"),  # bare LF, not CRLF
        (b"--b junk\r\n\r\nx\r\n--b--", "not followed by a line break"),
        (b"--b\r\nContent-Type application/dicom\r\n\r\nx\r\n--b--", "malformed header"),
        (b"--b\r\nContent-Type: x\r\n--b\r\n\r\nx\r\n--b--", "blank line"),  # no header end
        (b"--b\r\nX: " + b"x" * MAX_PART_HEADER_BYTES + b"\r\n\r\nx\r\n--b--", "blank line"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MalformedMultipart, match=message):
        split_multipart(body, "b")


def test_a_non_ascii_boundary_is_malformed() -> None:
    with pytest.raises(MalformedMultipart, match="ASCII"):
        split_multipart(b"--b\xe9\r\n\r\nx\r\n--b\xe9--", "bé")


def test_a_hundred_thousand_parts_cost_linear_time() -> None:
    def seconds(count: int) -> float:
        body = b"".join(b"--b\r\n\r\nx\r\n" for _ in range(count)) + b"--b--"
        started = time.perf_counter()
        parts = split_multipart(body, "b")
        elapsed = time.perf_counter() - started
        assert len(parts) == count and parts[-1].data == b"x"
        return elapsed

    # The best of three runs each, so that a pause of the shared machine is not read as cost.
    small = min(seconds(10_000) for _ in range(3))
    large = min(seconds(100_000) for _ in range(3))
    # Ten times the parts: about ten times the time; a quadratic parser would take 100.
    assert large < 40 * max(small, 0.001), (small, large)


def test_many_look_alike_delimiters_cost_linear_time() -> None:
    content = (b"\r\n--bX" * 200_000)[2:]
    started = time.perf_counter()
    parts = split_multipart(b"--b\r\n\r\n" + content + b"\r\n--b--", "b")
    assert parts[0].data == content
    assert time.perf_counter() - started < 10  # a few hundred milliseconds when linear


# -- STOW-RS request bodies -------------------------------------------------------------------


def test_a_stow_body_gives_its_dicom_parts() -> None:
    body = body_of([PAYLOAD, b"second"])
    assert [p.data for p in parse_multipart_related(DICOM + BOUNDARY, body)] == [
        PAYLOAD,
        b"second",
    ]
    # Without the request's type, each part must say it is DICOM itself.
    untyped = "multipart/related; boundary=" + BOUNDARY
    assert len(parse_multipart_related(untyped, body)) == 2
    with pytest.raises(UnsupportedMediaType, match="part 1 has no Content-Type"):
        parse_multipart_related(untyped, body_of([b"x"], part_type=None))
    assert parse_multipart_related(DICOM + BOUNDARY, body_of([b"x"], part_type=None))[0].data


@pytest.mark.parametrize(
    ("content_type", "part_type", "message"),
    [
        ("application/dicom", "application/dicom", "not 'application/dicom'"),
        ("multipart/form-data; boundary=b", "application/dicom", "multipart/form-data"),
        ('multipart/related; type="application/dicom+json"; boundary=b', None, r"dicom\+json"),
        (DICOM + "b", "image/jpeg", "part 1 is 'image/jpeg'"),
    ],
)
def test_a_stow_body_of_other_media_types_is_unsupported(
    content_type: str, part_type: str | None, message: str
) -> None:
    body = body_of([b"x"], boundary="b", part_type=part_type)
    with pytest.raises(UnsupportedMediaType, match=message):
        parse_multipart_related(content_type, body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "cut short"),
        (b"--b\r\n\r\nhalf an upload", "cut short"),  # a cut upload is the sender's to resend
        (b"--b--\r\n", "no parts"),
        (b"no delimiter at all", "does not contain the boundary"),
        (b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\neA==\r\n--b--", "binary"),
    ],
)
def test_malformed_stow_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MalformedMultipart, match=message):
        parse_multipart_related(DICOM + "b", body)
