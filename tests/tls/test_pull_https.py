"""`medai collect pull --ca-file`: an https:// archive's certificate checked against a CA."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medai.cli import app
from medai.config import Settings
from medai.tls import server_context
from tests.utils.campaign import init_example_campaign
from tests.utils.certs import TestCA


class _EmptyArchive(http.server.BaseHTTPRequestHandler):
    """A DICOMweb archive with no study: every QIDO-RS search answers []."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path.split("?")[0])
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS archive on loopback, its certificate signed by a test CA: (URL, CA file)."""
    ca = TestCA(tmp_path / "tls")
    pair = ca.issue("archive", server=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyArchive)
    context = server_context(pair.cert, pair.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web", ca.cert
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pull_trusts_the_ca_file_and_stops_at_once_without_it(
    settings: Settings, archive: tuple[str, Path], tmp_path: Path
) -> None:
    init_example_campaign(settings)
    url, ca = archive
    pull = ["collect", "pull", "--site", "site-a", "--url", url, "--since", "2026-10-01"]
    runner = CliRunner()
    _EmptyArchive.requests.clear()
    result = runner.invoke(app, [*pull, "--max-attempts", "5"])
    assert result.exit_code != 0
    assert "cannot verify the TLS certificate" in result.output and "--ca-file" in result.output
    assert _EmptyArchive.requests == []  # refused in the handshake, not retried

    result = runner.invoke(app, [*pull, "--ca-file", str(ca), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["studies_found"] == 0
    assert _EmptyArchive.requests == ["/dicom-web/studies"]

    missing = tmp_path / "no-ca.pem"
    result = runner.invoke(app, [*pull, "--ca-file", str(missing)])
    assert result.exit_code != 0 and f"the CA file {missing} does not exist" in result.output
