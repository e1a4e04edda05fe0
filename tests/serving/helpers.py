"""Helpers of the serving tests: API keys, multipart bodies, a real `medai serve` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from typing import Any

from medai.catalog.db import create_engine_for, upgrade
from medai.config import Settings
from medai.serving.keys import create_key
from tests.utils.dicom_net import free_port

with warnings.catch_warnings():
    # starlette 1.x prefers the httpx2 package for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient as TestClient

BOUNDARY = "medai-test-7f3a"


def new_key(settings: Settings, role: str, name: str | None = None) -> str:
    """Create an API key with ``role`` in the test catalog; returns the secret.

    An ``edge`` key is site-a's (the campaign must be set up).
    """
    engine = create_engine_for(settings.resolved_database_url)
    site = "site-a" if role == "edge" else None
    try:
        upgrade(engine)
        return create_key(
            engine, name=name or f"{role}-key", role=role, site_id=site, actor="test"
        ).key
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def multipart(
    parts: Sequence[bytes],
    *,
    boundary: str = BOUNDARY,
    part_type: str | None = "application/dicom",
    quoted: bool = True,
) -> tuple[bytes, str]:
    """A STOW-RS body built by hand (RFC 2046) and its Content-Type."""
    chunks = []
    for data in parts:
        chunks.append(f"--{boundary}\r\n".encode())
        if part_type is not None:
            chunks.append(f"Content-Type: {part_type}\r\n".encode())
        chunks.append(b"\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    shown = f'"{boundary}"' if quoted else boundary
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={shown}'


def sequence_uids(body: dict[str, Any], tag: str) -> list[tuple[str | None, str | None]]:
    """(SOP class, SOP instance) of each item of a response sequence (DICOM JSON)."""
    items = body.get(tag, {}).get("Value", [])
    return [
        (
            (item["00081150"].get("Value") or [None])[0],
            (item["00081155"].get("Value") or [None])[0],
        )
        for item in items
    ]


def failure_reasons(body: dict[str, Any]) -> list[int]:
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


REFERENCED = "00081199"
FAILED = "00081198"


class ServeProcess:
    """``medai serve`` on a free loopback port, its output collected by a thread."""

    def __init__(self, extra_env: dict[str, str] | None = None, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Wide lines, so rich does not wrap a log message the test waits for.
        env = os.environ.copy() | {"MEDAI_LOG_LEVEL": "INFO", "COLUMNS": "300"} | (extra_env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medai.cli", "serve", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 60
        while not self._healthy():
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, "medai serve did not answer /healthz"
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return bool(json.load(response) == {"status": "ok"})
        except (OSError, urllib.error.URLError):
            return False

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"{text!r} never appeared in:\n{self.output}"
            time.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM, as a service manager stops it; returns the whole output."""
        self.process.terminate()
        self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return self.output
