"""The dashboard's quarantine: steward sessions only, CSRF-safe actions, no PHI, a real browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import QuarantineEntry
from medai.collection.accounting import verify_collection
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult
from medai.serving.app import create_app
from medai.serving.dashboard import COOKIE
from medai.serving.quarantine_routes import SESSION_COOKIE
from tests.serving.browser import chromium
from tests.serving.helpers import ServeProcess, TestClient, bearer, new_key
from tests.utils.audit import audit_records
from tests.utils.campaign import bad_inputs

TEXT = b"Referral for DOE^JANE, MRN 55501234, 12 Elm Street\n" * 4
_CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@pytest.fixture
def quarantined(campaign: Settings, synth: SynthResult) -> Settings:
    """Two radiographs refused by a limit set too low, a burned-in one, and a text file."""
    low = campaign.model_copy(update={"max_instance_bytes": 2048})
    pipeline = IngestPipeline.from_settings(low)
    good = [p.read_bytes() for p in synth.files[:2]]
    burned = bad_inputs(good[0])["burned-in-annotation"]
    pipeline.ingest_many([Offer(data, "site-a", "c-store") for data in (*good, burned, TEXT)])
    pipeline.engine.dispose()
    return campaign


def _rows(settings: Settings) -> list[QuarantineEntry]:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        rows = list(session.scalars(select(QuarantineEntry).order_by(QuarantineEntry.id)))
        session.expunge_all()
    engine.dispose()
    return rows


def _no_phi(text: str, synth: SynthResult) -> None:
    planted = [*synth.phi_values, *synth.uid_values, "DOE^JANE", "55501234", "Elm Street"]
    leaked = [value for value in planted if value and value in text]
    assert not leaked, leaked


def _sign_in(client: TestClient, key: str) -> None:
    signed = client.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert signed.status_code == 303


def test_the_router_uses_the_dashboard_cookie() -> None:
    assert SESSION_COOKIE == COOKIE


def test_pages_need_a_steward_session_not_a_bearer_key(quarantined: Settings) -> None:
    steward = new_key(quarantined, "steward")
    clinician = new_key(quarantined, "clinician")
    with TestClient(create_app(quarantined)) as client:
        for path in ("/dashboard/quarantine", "/dashboard/quarantine/1"):
            for headers in ({}, bearer(steward)):
                page = client.get(path, headers=headers, follow_redirects=False)
                assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"
        posted = client.post(
            "/dashboard/quarantine/action",
            data={"action": "purge", "id": "1", "confirm": "yes"},
            headers=bearer(steward),
            follow_redirects=False,
        )
        assert posted.status_code == 303
        # A forged cookie is no session.
        client.cookies.set(COOKIE, steward, path="/dashboard")
        assert client.get("/dashboard/quarantine", follow_redirects=False).status_code == 303
        client.cookies.clear()
        refused = client.post("/dashboard/login", data={"key": clinician}, follow_redirects=False)
        assert refused.status_code == 403
    assert all(row.released_at is None for row in _rows(quarantined))


def test_list_view_release_and_purge_over_http(quarantined: Settings, synth: SynthResult) -> None:
    steward = new_key(quarantined, "steward", "steward-web")
    with TestClient(create_app(quarantined)) as client:
        _sign_in(client, steward)
        page = client.get("/dashboard/quarantine")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert page.text.count('data-status="held"') == 4
        _no_phi(page.text, synth)
        csrf = _CSRF.search(page.text)
        assert csrf is not None
        token = csrf.group(1)
        too_large = client.get("/dashboard/quarantine", params={"reason": "too-large"})
        ids = [int(i) for i in re.findall(r'<tr data-entry="(\d+)"', too_large.text)]
        assert len(ids) == 3
        assert (
            client.get("/dashboard/quarantine", params={"site": "site-b"}).text.count(
                "<tr data-entry="
            )
            == 0
        )
        # One entry's header: structure and safe values, never the planted PHI or UIDs.
        entry = client.get(f"/dashboard/quarantine/{ids[0]}")
        assert entry.status_code == 200
        assert 'data-keyword="PatientName" data-withheld="1"' in entry.text
        assert 'data-keyword="Rows" data-withheld="0"' in entry.text
        _no_phi(entry.text, synth)
        text_entry = next(r for r in _rows(quarantined) if r.reason_code == "not-dicom")
        described = client.get(f"/dashboard/quarantine/{text_entry.id}")
        assert 'data-kind="text"' in described.text
        _no_phi(described.text, synth)
        assert client.get("/dashboard/quarantine/99999").status_code == 404
        for query in ({"since": "yesterday"}, {"status": "gone"}):
            assert client.get("/dashboard/quarantine", params=query).status_code == 400

        # Cross-site forms are refused: no token, a wrong token, another origin.
        form = {"action": "release", "id": [str(i) for i in ids]}
        assert client.post("/dashboard/quarantine/action", data=form).status_code == 400
        wrong = form | {"csrf": "0" * 64}
        assert client.post("/dashboard/quarantine/action", data=wrong).status_code == 400
        flood = {"csrf": token, "action": "purge", "confirm": "yes", "id": ["1"] * 600}
        assert client.post("/dashboard/quarantine/action", data=flood).status_code == 400
        elsewhere = client.post(
            "/dashboard/quarantine/action",
            data=form | {"csrf": token},
            headers={"Origin": "https://evil.example"},
        )
        assert elsewhere.status_code == 400
        assert all(row.released_at is None for row in _rows(quarantined))

        # The service runs with the campaign's real limit: the fix. Release the three.
        released = client.post("/dashboard/quarantine/action", data=form | {"csrf": token})
        assert released.status_code == 200, released.text
        outcomes = re.findall(r'data-outcome="([a-z-]+)"', released.text)
        assert sorted(outcomes) == ["released", "released", "requarantined"]
        assert verify_collection(quarantined).ok

        # Purge asks once more, then deletes the raw file; the row stays.
        purge = {"action": "purge", "id": str(text_entry.id), "csrf": token}
        asked = client.post("/dashboard/quarantine/action", data=purge)
        assert asked.status_code == 200 and 'data-confirm="purge"' in asked.text
        assert next(r for r in _rows(quarantined) if r.id == text_entry.id).released_at is None
        done = client.post("/dashboard/quarantine/action", data=purge | {"confirm": "yes"})
        assert 'data-outcome="discarded"' in done.text
        closed = client.get("/dashboard/quarantine", params={"status": "closed"})
        assert closed.text.count('data-status="released"') == 2
        assert closed.text.count('data-status="discarded"') == 1
    rows = {row.id: row for row in _rows(quarantined)}
    assert rows[text_entry.id].released_at is not None
    assert not (quarantined.resolved_quarantine_dir / rows[text_entry.id].relative_path).exists()
    assert verify_collection(quarantined).ok
    viewed = audit_records(quarantined, "quarantine.view")
    assert {r.actor for r in viewed} == {"apikey:steward-web"} and len(viewed) == 2
    actors = {r.actor for r in audit_records(quarantined, "quarantine.release")}
    actors |= {r.actor for r in audit_records(quarantined, "quarantine.discard")}
    assert actors == {"apikey:steward-web"}


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_release_and_purge_in_chromium(
    quarantined: Settings, synth: SynthResult, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert isinstance(browser, WebDriver)
    steward = new_key(quarantined, "steward", "steward-browser")
    server = ServeProcess()
    try:
        browser.get(server.url + "/dashboard/quarantine")
        assert browser.current_url.endswith("/dashboard/login")
        browser.find_element(By.ID, "key").send_keys(steward)
        browser.find_element(By.ID, "sign-in").click()
        WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/dashboard"))
        browser.find_element(By.CSS_SELECTOR, 'a[data-link="quarantine"]').click()
        WebDriverWait(browser, 30).until(lambda d: "/dashboard/quarantine" in d.current_url)
        rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-entry]")
        assert len(rows) == 4
        _no_phi(browser.page_source, synth)
        # Filter by reason with the form, then release everything listed.
        Select(browser.find_element(By.ID, "f-reason")).select_by_value("too-large")
        browser.find_element(By.ID, "filter").click()
        WebDriverWait(browser, 30).until(lambda d: "reason=too-large" in d.current_url)
        boxes = browser.find_elements(By.CSS_SELECTOR, 'input[type="checkbox"][name="id"]')
        assert len(boxes) == 3
        for box in boxes:
            box.click()
        browser.find_element(By.ID, "release").click()
        WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-results]")
        )
        outcomes = sorted(
            str(r.get_attribute("data-outcome"))
            for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-outcome]")
        )
        assert outcomes == ["released", "released", "requarantined"]
        # The text file: its page, then purge with the confirmation.
        text_entry = next(r for r in _rows(quarantined) if r.reason_code == "not-dicom")
        browser.get(f"{server.url}/dashboard/quarantine/{text_entry.id}")
        assert (
            browser.find_element(By.CSS_SELECTOR, "[data-kind]").get_attribute("data-kind")
            == "text"
        )
        _no_phi(browser.page_source, synth)
        browser.find_element(By.ID, "purge").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "confirm-purge"))
        browser.find_element(By.ID, "confirm-purge").click()
        WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-outcome="discarded"]')
        )
    finally:
        server.stop()
    assert verify_collection(quarantined).ok
    closed = [r for r in _rows(quarantined) if r.released_at is not None]
    assert len(closed) == 3
    assert {r.actor for r in audit_records(quarantined, "quarantine.discard")} == {
        "apikey:steward-browser"
    }
