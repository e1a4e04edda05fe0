"""``medai serve`` over HTTPS (uvicorn's TLS), with the tests' own CA; plain HTTP warned about."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from medai.config import Settings
from medai.tls import client_context
from tests.serving.helpers import ServeProcess
from tests.utils.certs import CertPair, TestCA
from tests.utils.dicom_net import free_port

pytestmark = pytest.mark.slow


def _get(url: str, ca: Path | None, client: CertPair | None = None) -> httpx.Response:
    context = client_context(ca) if ca is not None else ssl.create_default_context()
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with httpx.Client(verify=context, timeout=10) as http:
        return http.get(url)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_serve_over_https_answers_with_the_ca_and_refuses_without_it(
    settings: Settings, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "tls")
    server, client = ca.issue("medai-centre", server=True), ca.issue("monitoring")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "medai.cli", "serve", "--port", str(port),
         "--tls-cert", str(server.cert), "--tls-key", str(server.key),
         "--tls-ca", str(ca.cert), "--require-client-cert"],
        env={**os.environ, "MEDAI_SERVE_MODEL": "", "COLUMNS": "300"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = _get(url, ca.cert, client)
                break
            except httpx.ConnectError:
                assert process.poll() is None and time.monotonic() < deadline, "no HTTPS"
                time.sleep(0.2)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        # The server's certificate is not trusted without the CA...
        with pytest.raises(httpx.ConnectError):
            _get(url, None, client)
        # ... a client without a certificate is refused in the handshake ...
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            _get(url, ca.cert).raise_for_status()
        # ... and plain HTTP gets no answer.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).raise_for_status()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert "plaintext on a network address" not in output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_plain_http_on_a_network_address_is_warned_about(settings: Settings) -> None:
    served = ServeProcess({"MEDAI_SERVE_MODEL": ""}, "--host", "0.0.0.0")
    output = served.stop()
    assert "WARNING: HTTP on 0.0.0.0" in output and "plaintext" in output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_serve_names_a_tls_file_it_cannot_use(settings: Settings, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "tls")
    server = ca.issue("medai-centre", server=True)
    server.key.write_bytes(b"\x30\x82 a DER key, not PEM")
    run = subprocess.run(
        [sys.executable, "-m", "medai.cli", "serve", "--port", str(free_port()),
         "--tls-cert", str(server.cert), "--tls-key", str(server.key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert f"the TLS private key {server.key} is not a PEM file" in run.stderr
