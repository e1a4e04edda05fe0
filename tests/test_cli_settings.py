"""Settings the command line reads: MEDAI_LOG_LEVEL and MEDAI_PULL_TOKEN, through Settings."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from medai.cli import app
from medai.config import get_settings
from tests.utils.campaign import EXAMPLE_CAMPAIGN


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()
    logging.getLogger().setLevel(logging.WARNING)


def _medai(*args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args))


class _EmptyArchive(BaseHTTPRequestHandler):
    """A DICOMweb archive with no studies that remembers each request's Authorization."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def archive() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyArchive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _EmptyArchive.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


def test_the_pull_token_comes_from_the_settings_and_the_option_wins(
    home: Path, archive: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _medai("campaign", "init", str(EXAMPLE_CAMPAIGN)).exit_code == 0
    pull = ["collect", "pull", "--site", "site-a", "--url", archive, "--since", "2026-10-01"]
    monkeypatch.setenv("MEDAI_PULL_TOKEN", "from-the-environment")
    quiet = _medai(*pull, "--json")
    assert quiet.exit_code == 0, quiet.output
    assert "from-the-environment" not in quiet.output
    explicit = _medai(*pull, "--token", "from-the-option")
    assert explicit.exit_code == 0, explicit.output
    assert set(_EmptyArchive.seen) == {"Bearer from-the-environment", "Bearer from-the-option"}
    assert _EmptyArchive.seen[0] == "Bearer from-the-environment"


def test_the_log_level_is_a_setting(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAI_LOG_LEVEL", "info")
    assert _medai("snapshot", "list").exit_code == 2  # no campaign: the level is set first
    assert logging.getLogger().level == logging.INFO
    assert _medai("-v", "snapshot", "list").exit_code == 2
    assert logging.getLogger().level == logging.DEBUG

    monkeypatch.setenv("MEDAI_LOG_LEVEL", "loud")
    refused = _medai("snapshot", "list")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "invalid settings" in refused.output and "log_level" in refused.output
