"""Bounded work per STOW-RS request: a part limit, a total deadline, deflate bombs.

A request of 20,000 tiny parts (1.4 MB) made 40,000 quarantine files and 20,000 audit
rows; a body trickled a byte every few seconds was never cut off; a 307 KB deflate bomb
took ``medai serve`` from 136 MB to 1.33 GB. Each is refused or quarantined now, with
nothing recorded that the sender cannot simply send again.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, IngestEvent
from medai.collection.accounting import verify_collection
from medai.collection.receivers.stow import FAILURE_CODES
from medai.config import Settings
from medai.serving.app import create_app
from tests.serving.helpers import (
    FAILED,
    ServeProcess,
    TestClient,
    bearer,
    failure_reasons,
    multipart,
    new_key,
)
from tests.utils.bombs import deflate_bomb, peak_rss_bytes, quarantined_bytes

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
STOW = "/dicomweb/studies?site=site-a"
MB = 1024 * 1024
CEILING = 512 * MB


def _count(settings: Settings, model: type[Any]) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        count = session.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return count


@SQLITE
def test_too_many_parts_is_413_before_any_part_is_looked_at(campaign: Settings) -> None:
    key = new_key(campaign, "steward")
    audit_rows = _count(campaign, AuditRecord)
    tiny = b"\x08\x00\x16\x00UI\x02\x001\x00" + bytes(6)  # looks like a data set; is not
    body, content_type = multipart([tiny] * 20_000)
    assert len(body) < 1.5 * MB
    headers = bearer(key) | {"Content-Type": content_type}
    with TestClient(create_app(campaign)) as client:
        started = time.perf_counter()
        refused = client.post(STOW, content=body, headers=headers)
        assert time.perf_counter() - started < 10
        assert refused.status_code == 413
        assert "more than 1000 parts" in refused.json()["detail"]
        assert "MEDAI_MAX_STOW_PARTS" in refused.json()["detail"]
    assert _count(campaign, IngestEvent) == 0
    assert _count(campaign, AuditRecord) == audit_rows
    assert quarantined_bytes(campaign.resolved_quarantine_dir) == []

    # At the limit, the request is taken (its parts quarantined as not DICOM).
    limited = campaign.model_copy(update={"max_stow_parts": 3})
    with TestClient(create_app(limited)) as client:
        body, content_type = multipart([tiny, tiny + b"x", tiny + b"y"])
        at_limit = client.post(
            STOW, content=body, headers=bearer(key) | {"Content-Type": content_type}
        )
        assert at_limit.status_code == 409
        assert len(failure_reasons(at_limit.json())) == 3
        body, content_type = multipart([tiny] * 4)
        over = client.post(STOW, content=body, headers=bearer(key) | {"Content-Type": content_type})
        assert over.status_code == 413
    assert verify_collection(campaign).events == {"quarantined": 3}


@pytest.fixture
def server(campaign: Settings) -> Iterator[ServeProcess]:
    # Collection only: the inference part loads torch, which alone takes hundreds of MB.
    serve = ServeProcess({"MEDAI_SERVE_MODEL": "", "MEDAI_BODY_TIMEOUT": "2"})
    yield serve
    output = serve.stop()
    assert serve.process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output


@pytest.mark.slow
@SQLITE
def test_a_trickled_body_is_cut_off_at_the_deadline(
    campaign: Settings, server: ServeProcess
) -> None:
    key = new_key(campaign, "steward")
    body, content_type = multipart([b"\x08\x00" + bytes(64)])
    head = (
        f"POST {STOW} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        # A byte every 0.25 s: never idle for MEDAI_BODY_IDLE_TIMEOUT (60 s), yet never done.
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server gave up and closed the connection
                break
            sock.settimeout(0.25)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(10)
        while chunk := sock.recv(65536):  # the answer closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"MEDAI_BODY_TIMEOUT" in answer
    assert time.monotonic() - started < 10
    assert verify_collection(campaign).inputs == 0


@pytest.mark.slow
@SQLITE
def test_a_deflate_bomb_is_quarantined_and_serve_stays_under_512_mb(
    campaign: Settings, server: ServeProcess
) -> None:
    key = new_key(campaign, "steward")
    bomb = deflate_bomb(300 * MB)
    body, content_type = multipart([bomb])
    request = urllib.request.Request(
        server.url + STOW, data=body, headers=bearer(key) | {"Content-Type": content_type}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=120)
    assert refused.value.code == 409
    answer = json.loads(refused.value.read())
    assert failure_reasons(answer) == [FAILURE_CODES["too-large"]]
    assert answer[FAILED]["Value"][0]["00081155"]["Value"]  # its UID, read without inflating
    assert "(too-large)" in str(refused.value.headers.get_all("Warning"))
    peak = peak_rss_bytes(server.process.pid)
    assert peak < CEILING, f"peak RSS {peak / MB:.0f} MB"
    assert quarantined_bytes(campaign.resolved_quarantine_dir) == [len(bomb)]
