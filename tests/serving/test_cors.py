"""CORS of /dicomweb for a browser viewer on another origin (MEDAI_CORS_ORIGINS), in process."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.serving.app import create_app
from tests.serving.browser import chromium
from tests.serving.helpers import ServeProcess, TestClient, bearer, new_key
from tests.serving.test_qido import ingest

VIEWER = "https://viewer.hospital.example"
OTHER = "https://evil.example"
ALLOW_ORIGIN = "access-control-allow-origin"


def preflight(origin: str, method: str = "GET") -> dict[str, str]:
    """What a browser sends before a cross-origin request carrying a bearer key."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,accept",
    }


@pytest.fixture
def cors_client(
    campaign: Settings, synth: SynthResult
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The collection browsable with CORS for VIEWER, and a steward key's headers."""
    ingest(campaign, synth)
    # The campaign's settings, validated again with the origin as the environment gives it.
    settings = Settings(**(campaign.model_dump() | {"cors_origins": VIEWER}))
    headers = bearer(new_key(settings, "steward", "steward-cors"))
    with TestClient(create_app(settings)) as client:
        yield client, headers


def test_a_preflight_from_the_listed_origin_is_answered_before_the_key_check(
    cors_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, _headers = cors_client
    for path in ("/dicomweb/studies", "/dicomweb/studies/1.2.3/series"):
        response = client.options(path, headers=preflight(VIEWER))  # no Authorization
        assert response.status_code == 200, response.text
        assert response.headers[ALLOW_ORIGIN] == VIEWER
        methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
        assert methods == {"GET", "POST", "OPTIONS"}
        allowed = {
            h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
        }
        assert {"authorization", "accept", "content-type"} <= allowed
        assert "access-control-allow-credentials" not in response.headers
        assert "origin" in response.headers["vary"].lower()
    # A method not listed is refused by the preflight.
    refused = client.options("/dicomweb/studies", headers=preflight(VIEWER, "DELETE"))
    assert refused.status_code == 400 and "access-control-allow-methods" in refused.headers


def test_a_keyed_search_from_the_listed_origin_is_readable_with_its_warning(
    cors_client: tuple[TestClient, dict[str, str]], synth: SynthResult
) -> None:
    client, headers = cors_client
    # limit=1 of three studies: QIDO-RS says in a Warning header that more results exist.
    response = client.get("/dicomweb/studies?limit=1", headers=headers | {"Origin": VIEWER})
    assert response.status_code == 200, response.text
    assert len(response.json()) == 1 < synth.studies
    assert response.headers[ALLOW_ORIGIN] == VIEWER
    assert "additional results" in response.headers["warning"]
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"warning", "content-type"} <= exposed
    assert "access-control-allow-credentials" not in response.headers
    # Without a key the answer is still 401, but readable by the viewer (it says what to do).
    unkeyed = client.get("/dicomweb/studies", headers={"Origin": VIEWER})
    assert unkeyed.status_code == 401 and unkeyed.headers[ALLOW_ORIGIN] == VIEWER


def test_another_origin_gets_no_allow_origin(
    cors_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = cors_client
    refused = client.options("/dicomweb/studies", headers=preflight(OTHER))
    assert refused.status_code == 400
    assert ALLOW_ORIGIN not in refused.headers
    response = client.get("/dicomweb/studies?limit=1", headers=headers | {"Origin": OTHER})
    assert response.status_code == 200  # the server answers; the browser won't let OTHER read
    assert ALLOW_ORIGIN not in response.headers  # (Starlette still adds its expose list)
    # A same-scheme look-alike of the listed origin is another origin too.
    lookalike = client.options("/dicomweb/studies", headers=preflight(VIEWER + ":8443"))
    assert ALLOW_ORIGIN not in lookalike.headers


def test_routes_outside_dicomweb_get_no_cors(
    cors_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = cors_client
    for path in ("/v1/predict", "/v1/campaign/progress", "/healthz"):
        response = client.options(path, headers=preflight(VIEWER, "POST"))
        assert ALLOW_ORIGIN not in response.headers, path
    health = client.get("/healthz", headers={"Origin": VIEWER})
    assert health.status_code == 200 and ALLOW_ORIGIN not in health.headers


def test_without_the_setting_no_cors_headers(campaign: Settings, synth: SynthResult) -> None:
    ingest(campaign, synth)
    assert campaign.cors_origins == ()
    headers = bearer(new_key(campaign, "steward", "steward-no-cors"))
    with TestClient(create_app(campaign)) as client:
        response = client.get("/dicomweb/studies?limit=1", headers=headers | {"Origin": VIEWER})
        assert response.status_code == 200
        assert not any(name.startswith("access-control-") for name in response.headers)
        pre = client.options("/dicomweb/studies", headers=preflight(VIEWER))
        # Not answered as a preflight: the route has no OPTIONS, and no CORS header is added.
        assert pre.status_code in (401, 405)
        assert not any(name.startswith("access-control-") for name in pre.headers)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("*", "wildcards are refused"),
        (f"{VIEWER},*", "wildcards are refused"),
        ("https://*.hospital.example", "wildcards are refused"),
        (f"{VIEWER}/ohif", "no path"),
        (f"{VIEWER}/", "no path"),
        (f"{VIEWER}?a=b", "no path"),
        ("viewer.hospital.example", "scheme://host"),
        ("ftp://viewer.hospital.example", "scheme://host"),
        ("https://user@viewer.hospital.example", "scheme://host"),
        ("https://viewer.hospital.example:99999", "not a URL origin"),
    ],
)
def test_settings_refuse_what_is_not_an_exact_origin(
    value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(cors_origins=tuple(value.split(",")))
    monkeypatch.setenv("MEDAI_CORS_ORIGINS", value)  # the same from the environment
    with pytest.raises(ValidationError, match=says):
        Settings()


def test_settings_read_origins_as_browsers_send_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MEDAI_CORS_ORIGINS", " HTTPS://Viewer.Hospital.example:443 , http://localhost:3000,"
    )
    settings = Settings()
    assert settings.cors_origins == (VIEWER, "http://localhost:3000")
    assert Settings(cors_origins=()).cors_origins == ()
    monkeypatch.setenv("MEDAI_CORS_ORIGINS", "")  # `MEDAI_CORS_ORIGINS=` in medai.env
    assert Settings().cors_origins == ()
    # They reach a `medai serve --workers N` process whole.
    monkeypatch.setenv("MEDAI_CORS_ORIGINS", settings.as_environment()["MEDAI_CORS_ORIGINS"])
    assert Settings().cors_origins == settings.cors_origins


# What a viewer page does: a keyed QIDO-RS search, reading the answer and its Warning.
_FETCH = """
const [url, key, done] = arguments;
fetch(url, {headers: {Authorization: "Bearer " + key, Accept: "application/dicom+json"}})
  .then(async (r) => done({status: r.status, warning: r.headers.get("Warning"),
                           studies: (await r.json()).length}))
  .catch((e) => done({error: String(e)}));
"""


@contextmanager
def viewer_page(root: Path) -> Iterator[int]:
    """An empty page served on a loopback port of its own: the viewer's origin."""
    (root / "index.html").write_text("<!doctype html><title>viewer</title>", encoding="utf-8")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def test_chromium_on_the_viewer_origin_reads_dicomweb_and_others_cannot(
    campaign: Settings, synth: SynthResult, tmp_path: Path
) -> None:
    from selenium.webdriver.remote.webdriver import WebDriver

    ingest(campaign, synth)
    key = new_key(campaign, "steward", "steward-chromium")
    with viewer_page(tmp_path) as port, chromium() as browser:
        assert isinstance(browser, WebDriver)
        browser.set_script_timeout(30)
        # localhost:port is the viewer's origin; 127.0.0.1:port is another one.
        server = ServeProcess({"MEDAI_CORS_ORIGINS": f"http://localhost:{port}"})
        try:
            search = server.url + "/dicomweb/studies?limit=1"
            browser.get(f"http://localhost:{port}/index.html")
            read: dict[str, Any] = browser.execute_async_script(_FETCH, search, key)
            assert read.get("status") == 200, read
            assert read["studies"] == 1 and "additional results" in read["warning"]
            browser.get(f"http://127.0.0.1:{port}/index.html")
            refused: dict[str, Any] = browser.execute_async_script(_FETCH, search, key)
            assert "error" in refused and "status" not in refused, refused  # "Failed to fetch"
        finally:
            server.stop()
