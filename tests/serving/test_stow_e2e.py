"""STOW-RS against a real `medai serve` on loopback: dicomweb-client, curl, cut connections."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from medai.collection.accounting import verify_collection
from medai.collection.receivers.stow import FAILURE_CODES, REASON_TEXTS
from medai.config import Settings
from medai.dicom.synth import SynthResult
from tests.serving.helpers import (
    FAILED,
    REFERENCED,
    ServeProcess,
    bearer,
    failure_reasons,
    multipart,
    new_key,
    sequence_uids,
)
from tests.utils.campaign import bad_inputs
from tests.utils.tcp_proxy import CuttingProxy

pytestmark = pytest.mark.slow

LIMIT = 256 * 1024  # MEDAI_MAX_REQUEST_BYTES of the server under test


@pytest.fixture
def server(campaign: Settings) -> Iterator[ServeProcess]:
    serve = ServeProcess({"MEDAI_MAX_REQUEST_BYTES": str(LIMIT)}, "--body-idle-timeout", "3")
    yield serve
    output = serve.stop()
    # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
    assert serve.process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


@pytest.fixture
def key(campaign: Settings) -> str:
    return new_key(campaign, "steward", "site-a-pacs")


def _uids(ds: pydicom.Dataset) -> tuple[str, str]:
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _referenced(response: pydicom.Dataset) -> list[tuple[str, str]]:
    return [
        (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        for item in response.ReferencedSOPSequence
    ]


def test_dicomweb_client_stores_and_learns_of_failures(
    campaign: Settings, server: ServeProcess, key: str, synth: SynthResult
) -> None:
    datasets = [pydicom.dcmread(path) for path in synth.files]
    # A small chunk size makes the client stream the body chunked (no Content-Length).
    client = DICOMwebClient(f"{server.url}/dicomweb", headers=bearer(key), chunk_size=4096)
    result = client.store_instances(datasets, additional_params={"site": "site-a"})
    assert _referenced(result) == [_uids(d) for d in datasets]
    assert "FailedSOPSequence" not in result

    # The site named by header, for clients that take only a base URL and headers.
    by_header = DICOMwebClient(
        f"{server.url}/dicomweb", headers=bearer(key) | {"Medai-Site": "site-a"}
    )
    again = by_header.store_instances(datasets[:1])
    assert _referenced(again) == [_uids(datasets[0])]

    # Into one study: the study's UID (an identifier) is in the path, not in the log.
    study = str(datasets[0].StudyInstanceUID)
    same_study = [d for d in datasets if str(d.StudyInstanceUID) == study]
    into_study = client.store_instances(
        same_study, study_instance_uid=study, additional_params={"site": "site-a"}
    )
    assert _referenced(into_study) == [_uids(d) for d in same_study]
    server.wait_for_output('"POST /dicomweb/studies/{uid}?site=site-a HTTP/1.1" 200')
    assert study not in server.output

    burned_in = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(
            bad_inputs(synth.files[0].read_bytes())["burned-in-annotation"]
        )
    )
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances([burned_in], additional_params={"site": "site-a"})
    assert refused.value.response.status_code == 409
    failed = pydicom.Dataset.from_json(refused.value.response.json()).FailedSOPSequence
    assert [(_uids(burned_in)[1], FAILURE_CODES["burned-in-annotation"])] == [
        (item.ReferencedSOPInstanceUID, item.FailureReason) for item in failed
    ]

    unauthorised = DICOMwebClient(f"{server.url}/dicomweb")
    with pytest.raises(requests.HTTPError) as no_key:
        unauthorised.store_instances(datasets, additional_params={"site": "site-a"})
    assert no_key.value.response.status_code == 401

    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.events == {
        "stored": len(datasets),
        "duplicate": 1 + len(same_study),
        "quarantined": 1,
    }


def _curl(url: str, body: Path, *headers: str) -> tuple[int, dict[str, list[str]], str]:
    """POST ``body`` with curl; returns the status, the headers (lower-case) and the body."""
    args = ["curl", "-sS", "-X", "POST", "--data-binary", f"@{body}", "-D", "-"]
    for header in headers:
        args += ["-H", header]
    run = subprocess.run([*args, url], capture_output=True, timeout=60, check=True)
    head, _, text = run.stdout.decode("latin-1").partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return status, found, text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_a_hand_built_body(
    campaign: Settings, server: ServeProcess, key: str, synth: SynthResult, tmp_path: Path
) -> None:
    files = [path.read_bytes() for path in synth.files]
    bad = bad_inputs(files[0])
    body, content_type = multipart([*files, bad["not-dicom"], bad["truncated"]], quoted=False)
    request = tmp_path / "request"
    request.write_bytes(body)
    url = f"{server.url}/dicomweb/studies?site=site-a"
    auth = f"Authorization: Bearer {key}"

    status, headers, text = _curl(url, request, f"Content-Type: {content_type}", auth)
    assert status == 202, text
    assert headers["content-type"] == ["application/dicom+json"]
    response = json.loads(text)
    assert len(sequence_uids(response, REFERENCED)) == len(files)
    assert failure_reasons(response) == [FAILURE_CODES["not-dicom"], FAILURE_CODES["truncated"]]
    assert sorted(headers["warning"]) == [
        f"299 {server.url}/dicomweb: part 5 not accepted (not-dicom): {REASON_TEXTS['not-dicom']}",
        f"299 {server.url}/dicomweb: part 6 not accepted (truncated): {REASON_TEXTS['truncated']}",
    ]
    shown = text + repr(headers)
    assert not [value for value in synth.phi_values if value in shown]

    assert _curl(url, request, "Content-Type: application/json", auth)[0] == 415
    assert _curl(url, request, f"Content-Type: {content_type}")[0] == 401
    huge = tmp_path / "huge"
    huge.write_bytes(body + b"\x00" * LIMIT)
    too_large, _, detail = _curl(url, huge, f"Content-Type: {content_type}", auth)
    assert too_large == 413 and "limit" in json.loads(detail)["detail"]
    chunked, _, _ = _curl(
        url, huge, f"Content-Type: {content_type}", auth, "Transfer-Encoding: chunked"
    )
    assert chunked == 413

    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.events == {"stored": len(files), "quarantined": 2}


def test_cut_uploads_and_responses_then_resend(
    campaign: Settings, server: ServeProcess, key: str, synth: SynthResult
) -> None:
    files = [path.read_bytes() for path in synth.files]
    body, content_type = multipart(files)
    headers = bearer(key) | {"Content-Type": content_type}
    path = "/dicomweb/studies?site=site-a"

    # The link drops half-way through the upload: the pipeline never sees the request.
    with CuttingProxy(server.port, cut_after=len(body) // 2) as proxy:
        with pytest.raises(requests.ConnectionError):
            requests.post(
                f"http://127.0.0.1:{proxy.port}{path}", data=body, headers=headers, timeout=60
            )
    server.wait_for_output("upload was cut short; nothing from it was recorded")
    report = verify_collection(campaign)
    assert report.ok and report.inputs == 0

    # A client that stops sending half-way (a stalled link) is given up after the idle
    # timeout: 408, and again nothing is recorded.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: medai\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        stalled.sendall(head.encode() + body[: len(body) // 2])
        reply = b""
        while chunk := stalled.recv(65536):  # until the server closes the connection
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"send it again" in reply
    server.wait_for_output("stalled for 3 s; nothing from it was recorded")
    assert verify_collection(campaign).inputs == 0

    # The upload of the first two arrives, but the response is lost on the way back.
    first, _ = multipart(files[:2])
    with CuttingProxy(server.port, cut_after=20, direction="downstream") as proxy:
        with pytest.raises(requests.ConnectionError):
            requests.post(
                f"http://127.0.0.1:{proxy.port}{path}", data=first, headers=headers, timeout=60
            )
        assert proxy.cut_connections == 1
    server.wait_for_output("2 stored")

    # The site sends everything again: each instance is stored exactly once.
    resent = requests.post(server.url + path, data=body, headers=headers, timeout=60)
    assert resent.status_code == 200, resent.text
    assert len(sequence_uids(resent.json(), REFERENCED)) == len(files)
    assert FAILED not in resent.json()
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == len(files)
    assert report.events == {"stored": len(files), "duplicate": 2}
