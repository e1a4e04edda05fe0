"""The API browser (Swagger UI) works with no network but the service: no CDN anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.docs import ASSETS_PATH
from tests.serving.browser import chromium
from tests.serving.helpers import ServeProcess, TestClient, bearer, new_key

# Every host but the loopback is unreachable: names resolve to nothing, and any request
# that still tries goes to a proxy port where nothing listens (chromium never proxies the
# loopback).
OFFLINE = (
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
)


def test_the_swagger_files_come_from_the_service(campaign: Settings) -> None:
    key = new_key(campaign, "clinician")
    with TestClient(create_app(campaign.model_copy(update={"serve_model": ""}))) as client:
        page = client.get("/docs", headers=bearer(key)).text
        for name, media_type in [
            ("swagger-ui-bundle.js", "text/javascript"),
            ("swagger-ui.css", "text/css"),
            ("favicon.png", "image/png"),
        ]:
            assert f'"{ASSETS_PATH}/{name}"' in page
            asset = client.get(f"{ASSETS_PATH}/{name}")  # open: public code, no data
            assert asset.status_code == 200, name
            assert asset.headers["content-type"].startswith(media_type)
            assert len(asset.content) > 1000
        assert "cdn" not in page.lower() and "https://" not in page
        # Swagger UI 5: it reads FastAPI's OpenAPI 3.1 (Swagger UI 4 refuses it).
        bundle = client.get(f"{ASSETS_PATH}/swagger-ui-bundle.js").text
        assert '"5.' in bundle
        # Only the listed files: nothing else of the package or the disk.
        for name in ("redoc.standalone.js", "..%2f__init__.py", "core.py", "%2e%2e"):
            assert client.get(f"{ASSETS_PATH}/{name}").status_code == 404, name
        assert client.get(f"{ASSETS_PATH}/../core.py").status_code == 404


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    with chromium(arguments=OFFLINE, network_log=True) as driver:
        yield driver


def _requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_api_browser_renders_in_chromium_without_any_other_host(
    campaign: Settings, offline_browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = offline_browser
    steward = new_key(campaign, "steward")
    server = ServeProcess({"MEDAI_SERVE_MODEL": ""})
    try:
        # The network is really blocked: a page that loads Swagger UI from a CDN gets none.
        browser.get(
            "data:text/html,<script src='https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
            "swagger-ui-bundle.js'></script><script>document.title=typeof SwaggerUIBundle"
            "</script>"
        )
        WebDriverWait(browser, 30).until(lambda driver: driver.title)
        assert browser.title == "undefined"
        browser.get_log("performance")  # forget that page's requests

        browser.get(server.url + "/dashboard/login")
        browser.find_element(By.ID, "key").send_keys(steward)
        browser.find_element(By.ID, "sign-in").click()
        WebDriverWait(browser, 30).until(lambda driver: driver.current_url.endswith("/dashboard"))
        browser.get(server.url + "/dashboard/docs")
        # Swagger UI ran: it fetched the document and listed every operation.
        WebDriverWait(browser, 60).until(
            lambda driver: driver.find_elements(By.CSS_SELECTOR, ".opblock")
        )
        spec = browser.execute_script("return fetch('/dashboard/openapi.json').then(r => r.json())")
        operations = sum(
            1
            for path in spec["paths"].values()
            for method in path
            if method in ("get", "post", "put", "delete", "patch")
        )
        blocks = browser.find_elements(By.CSS_SELECTOR, ".opblock")
        assert len(blocks) == operations > 10
        paths = {b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text for b in blocks}
        assert "/v1/predict" in {p.replace("\u200b", "") for p in paths}
        assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("medai")
        # Nothing was asked of another host.
        requested = _requested_urls(browser)
        assert any(url.endswith("/swagger-ui-bundle.js") for url in requested)
        assert [u for u in requested if not u.startswith((server.url, "data:"))] == []
    finally:
        server.stop()
