"""The demo's link (medai.demo.link): what passes when it is up, degraded and down."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from medai.demo.link import Link


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the size of its body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (the handler's name)
        size = int(self.headers["Content-Length"])
        self.rfile.read(size)
        body = str(size).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def link() -> Iterator[Link]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Link(server.server_address[1]) as relay:
            yield relay
    finally:
        server.shutdown()
        server.server_close()


def _post(link: Link, path: str, size: int) -> httpx.Response:
    with httpx.Client(base_url=link.url, timeout=5) as client:
        return client.post(path, content=b"x" * size)


def test_an_up_link_passes_uploads_and_heartbeats(link: Link) -> None:
    assert _post(link, "/dicomweb/studies", 200_000).text == "200000"
    assert _post(link, "/v1/edge/heartbeat", 300).text == "300"
    assert link.resets == 0


def test_a_degraded_link_cuts_uploads_mid_way_but_passes_heartbeats(link: Link) -> None:
    link.set_state("uploads-cut")
    with pytest.raises(httpx.TransportError):
        _post(link, "/dicomweb/studies?site=site-c", 200_000)
    assert _post(link, "/v1/edge/heartbeat", 300).text == "300"
    assert link.resets == 1
    link.set_state("up")  # restored: the same upload goes through
    assert _post(link, "/dicomweb/studies?site=site-c", 200_000).text == "200000"


def test_a_link_down_passes_nothing_until_restored(link: Link) -> None:
    link.set_state("down")
    for path in ("/v1/edge/heartbeat", "/dicomweb/studies"):
        with pytest.raises(httpx.TransportError):
            _post(link, path, 300)
    assert link.resets == 2
    link.set_state("up")
    assert _post(link, "/v1/edge/heartbeat", 300).text == "300"
