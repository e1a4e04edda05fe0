"""The campaign dashboard and progress API: auth, numbers equal to the catalog, a real browser."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from medai.catalog.db import create_engine_for, session_factory
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import SCHEMA_VERSION, CampaignProgress
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import generate
from medai.serving.dashboard import COOKIE
from tests.serving.browser import chromium
from tests.serving.helpers import ServeProcess, TestClient, bearer, new_key
from tests.utils.campaign import bad_inputs


@pytest.fixture
def collected(campaign: Settings, tmp_path: Path) -> Settings:
    """The example campaign with a few studies of every site and two quarantined inputs."""
    synth = generate(tmp_path / "in", studies=6, seed=3, image_size=32, ct_slices=2)
    offers = [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    bad = bad_inputs(synth.files[0].read_bytes())
    offers += [Offer(bad["burned-in-annotation"], "site-b", "folder")]
    offers += [Offer(b"not a dicom file at all", "site-c", "folder")]
    IngestPipeline.from_settings(campaign).ingest_many(offers)
    return campaign


def _truth(settings: Settings) -> CampaignProgress:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        report = compute_progress(session)
    engine.dispose()
    return report


def test_progress_api_needs_a_steward_key_and_matches_the_catalog(
    collected: Settings, client: TestClient
) -> None:
    assert client.get("/v1/campaign/progress").status_code == 401
    clinician = new_key(collected, "clinician")
    assert client.get("/v1/campaign/progress", headers=bearer(clinician)).status_code == 403
    steward = new_key(collected, "steward")
    response = client.get("/v1/campaign/progress", headers=bearer(steward))
    assert response.status_code == 200
    body = response.json()
    truth = _truth(collected)
    assert body["studies"] == truth.studies == 6
    assert body["instances"] == truth.instances
    assert body["quarantined"] == 2
    assert body["schema_version"] == SCHEMA_VERSION
    generated = dt.datetime.fromisoformat(body["generated_at"])
    assert abs((dt.datetime.now(dt.UTC) - generated).total_seconds()) < 60
    assert [s["site"] for s in body["sites"]] == [s.site for s in truth.sites]


def test_dashboard_sign_in_with_a_steward_key_only(collected: Settings, client: TestClient) -> None:
    first = client.get("/dashboard", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/dashboard/login"
    # A bearer header is not a session: the page wants the cookie from the sign-in form.
    clinician = new_key(collected, "clinician")
    refused = client.post("/dashboard/login", data={"key": clinician}, follow_redirects=False)
    assert refused.status_code == 403 and "steward key" in refused.text
    wrong = client.post("/dashboard/login", data={"key": "medai_nope"}, follow_redirects=False)
    assert wrong.status_code == 401
    steward = new_key(collected, "steward")
    signed = client.post("/dashboard/login", data={"key": steward}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    cookie = signed.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    page = client.get("/dashboard")
    assert page.status_code == 200 and "Burn-up" in page.text
    assert 'data-chart="burnup"' in page.text and "<polyline" in page.text
    # The cookie does not open the API routes that change data.
    client.cookies.set(COOKIE, steward)
    assert client.post("/dashboard/logout", follow_redirects=False).status_code == 303


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_in_chromium_shows_the_catalog_numbers(
    collected: Settings, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    steward = new_key(collected, "steward")
    server = ServeProcess()
    try:
        browser.get(server.url + "/dashboard")
        assert browser.current_url.endswith("/dashboard/login")
        browser.find_element(By.ID, "key").send_keys(steward)
        browser.find_element(By.ID, "sign-in").click()
        # The click returns before the form's POST and redirect land: wait for the page.
        WebDriverWait(browser, 30).until(lambda driver: driver.current_url.endswith("/dashboard"))
        truth = _truth(collected)

        def kpi(name: str, within: object = browser) -> str:
            return str(within.find_element(By.CSS_SELECTOR, f'[data-kpi="{name}"]').text)  # type: ignore[attr-defined]

        assert kpi("studies") == str(truth.studies)
        assert kpi("instances") == str(truth.instances)
        assert kpi("day") == str(truth.day)
        for site in truth.sites:
            row = browser.find_element(By.CSS_SELECTOR, f'tr[data-site="{site.site}"]')
            assert kpi("studies", row) == str(site.studies)
            assert kpi("instances", row) == str(site.instances)
            status = row.find_element(By.CSS_SELECTOR, "[data-status]")
            assert status.text == site.status
            # Last seen: the latest arrival, shown as an age ("12s ago"), its time beside it.
            assert site.last_seen is not None
            seen = row.find_element(By.CSS_SELECTOR, '[data-kpi="last_seen"]')
            assert seen.text.endswith(" ago"), seen.text
            shown = dt.datetime.fromisoformat(str(seen.get_attribute("data-value")))
            assert shown == site.last_seen.replace(tzinfo=site.last_seen.tzinfo or dt.UTC)
            assert kpi("outbox", row) == "no edge"
        rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-site]")
        assert [r.get_attribute("data-site") for r in rows] == [s.site for s in truth.sites]
        # Real charts: the burn-up lines and the quarantine bars are drawn.
        chart = browser.find_element(By.CSS_SELECTOR, 'svg[data-chart="burnup"]')
        assert chart.size["width"] > 300 and chart.size["height"] > 100
        assert chart.find_elements(By.CSS_SELECTOR, 'polyline[data-series="actual"]')
        bars = browser.find_element(By.CSS_SELECTOR, 'svg[data-chart="quarantine"]')
        reasons = {
            e.get_attribute("data-reason"): e.text
            for e in bars.find_elements(By.CSS_SELECTOR, "[data-reason]")
        }
        assert reasons == {k: str(v) for k, v in truth.quarantine_reasons.items()}
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        artifacts = os.environ.get("MEDAI_TEST_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(artifacts) / "dashboard.png")
    finally:
        server.stop()
