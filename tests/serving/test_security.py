"""A burst of wrong keys against a real `medai serve`: recorded without flooding the chain,
throttled per source (429, a right key included, while another source still works), shown
by `medai security status`, in /metrics (read with a monitoring key) and on the dashboard
(in Chromium)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.keys import revoke_key
from tests.serving.browser import chromium
from tests.serving.helpers import ServeProcess, TestClient, bearer, new_key

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
WRONG = "medai_" + "W" * 43
LIMIT = 20
ATTACKER = "127.0.0.2"


def _audit_count(settings: Settings) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)
    finally:
        engine.dispose()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def server(campaign: Settings) -> Iterator[ServeProcess]:
    process = ServeProcess({"MEDAI_AUTH_FAILURES_PER_MINUTE": str(LIMIT)})
    try:
        yield process
    finally:
        process.stop()


@SQLITE
def test_a_burst_of_wrong_keys_is_throttled_recorded_and_shown(
    campaign: Settings, server: ServeProcess
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monitoring = new_key(campaign, "monitoring", "prometheus")
    steward = new_key(campaign, "steward")
    before = _audit_count(campaign)
    # The attacker connects from another loopback address than everyone else.
    attacker_side = httpx.HTTPTransport(local_address=ATTACKER)
    with httpx.Client(base_url=server.url, transport=attacker_side, timeout=10) as attacker:
        statuses = [
            attacker.get("/v1/campaign/progress", headers=bearer(WRONG)).status_code
            for _ in range(500)
        ]
        assert statuses[: LIMIT + 1] == [401] * (LIMIT + 1)
        assert set(statuses[LIMIT + 1 :]) == {429}
        # The throttled source is refused even with a right key, until the minute passes.
        right = attacker.get("/v1/campaign/progress", headers=bearer(steward))
        assert right.status_code == 429
        assert 1 <= int(right.headers["Retry-After"]) <= 60
        assert "too many failed authentications" in right.json()["detail"]
    # The chain holds a handful of records for the 500 attempts, not 500.
    assert _audit_count(campaign) - before <= 3

    # Another source still works, and a monitoring key reads /metrics (and nothing else).
    with httpx.Client(base_url=server.url, timeout=10) as scraper:
        assert scraper.get("/v1/campaign/progress", headers=bearer(steward)).status_code == 200
        metrics = scraper.get("/metrics", headers=bearer(monitoring))
        assert metrics.status_code == 200
        refused = scraper.get("/v1/campaign/progress", headers=bearer(monitoring))
        assert refused.status_code == 403
    text = metrics.text
    assert _metric(text, 'medai_security_events_total{kind="auth-failed"}') == LIMIT + 1
    assert _metric(text, 'medai_security_events_total{kind="rate-limited"}') == 1
    assert _metric(text, "medai_auth_failures_total") == LIMIT + 1
    assert _metric(text, "medai_auth_throttled_requests_total") == 500 - (LIMIT + 1) + 1
    assert _metric(text, "medai_auth_rate_limited_sources") == 1
    assert _metric(text, "medai_backup_age_seconds") == float("inf")

    status = subprocess.run(
        [sys.executable, "-m", "medai.cli", "security", "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    day = json.loads(status.stdout)["24h"]
    assert day["events"]["auth-failed"] == LIMIT + 1 and day["events"]["rate-limited"] == 1
    assert day["top_sources"][0]["source"] == ATTACKER
    assert "rate-limited" in day["alerts"]

    # The dashboard's security panel in Chromium, in Vietnamese.
    with chromium() as browser:
        browser.get(server.url + "/dashboard/login?lang=vi")
        browser.find_element(By.ID, "key").send_keys(steward)
        browser.find_element(By.ID, "sign-in").click()
        # The sign-in posts and redirects: wait for the dashboard (a loaded machine is slow).
        WebDriverWait(browser, 30).until(lambda driver: driver.current_url.endswith("/dashboard"))
        panel = browser.find_element(By.CSS_SELECTOR, '[data-panel="security"]')
        assert panel.find_element(By.TAG_NAME, "h2").text == "Bảo mật"
        row = panel.find_element(By.CSS_SELECTOR, 'tr[data-kind="auth-failed"]')
        day_cell = row.find_element(By.CSS_SELECTOR, '[data-window="24h"]')
        assert day_cell.get_attribute("data-value") == str(LIMIT + 1)
        assert day_cell.text == str(LIMIT + 1)
        assert "Xác thực thất bại" in row.text
        source = panel.find_element(By.CSS_SELECTOR, f'tr[data-source="{ATTACKER}"]')
        assert source.find_element(By.CSS_SELECTOR, "[data-value]").text == str(LIMIT + 2)
        alert = panel.find_element(By.CSS_SELECTOR, '[data-alert="rate-limited"]')
        assert "bị hạn chế" in alert.text
        backup = panel.find_element(By.CSS_SELECTOR, '[data-kpi="backup"]')
        assert backup.get_attribute("data-status") == "missing"


def test_a_revoked_key_is_recorded_with_its_name(campaign: Settings) -> None:
    key = new_key(campaign, "steward", "old-laptop")
    engine = create_engine_for(campaign.resolved_database_url)
    try:
        revoke_key(engine, "old-laptop", actor="test")
        with TestClient(create_app(campaign)) as client:
            for _ in range(3):
                response = client.get("/v1/campaign/progress", headers=bearer(key))
                assert response.status_code == 401 and "revoked" in response.json()["detail"]
            admin = new_key(campaign, "admin")
            metrics = client.get("/metrics", headers=bearer(admin)).text
        with session_factory(engine)() as session:
            records = list(
                session.scalars(
                    select(AuditRecord).where(AuditRecord.action == "security.revoked-key-used")
                )
            )
    finally:
        engine.dispose()
    assert len(records) == 1  # the next two within the minute are folded
    record = records[0]
    assert record.subject == "old-laptop" and record.actor == "system:security"
    assert record.details["reason"] == "revoked" and record.details["source"] == "testclient"
    assert record.details["key_prefix"] == key[:12] and key not in json.dumps(record.details)
    assert _metric(metrics, 'medai_security_events_total{kind="revoked-key-used"}') == 3


@SQLITE
def test_a_wrong_key_in_the_sign_in_form_counts_too(campaign: Settings) -> None:
    settings = campaign.model_copy(update={"auth_failures_per_minute": 2})
    steward = new_key(campaign, "steward")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            page = client.post("/dashboard/login", content=f"key={WRONG}", headers=form)
            assert page.status_code == 401
        throttled = client.post(
            "/dashboard/login", content=f"key={steward}", headers=form, follow_redirects=False
        )
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
        vi = client.post("/dashboard/login?lang=vi", content=f"key={steward}", headers=form)
        assert "Quá nhiều lần đăng nhập thất bại" in vi.text
    engine = create_engine_for(campaign.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            actions = list(
                session.scalars(
                    select(AuditRecord.action).where(AuditRecord.action.like("security.%"))
                )
            )
    finally:
        engine.dispose()
    assert actions == ["security.auth-failed", "security.rate-limited"]
