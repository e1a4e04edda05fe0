"""The dashboard in Vietnamese and English: catalogues, negotiation, formats, a real browser."""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any, get_args

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

import medai.serving.dashboard as dashboard_module
import medai.serving.dashboard_page as page_module
from medai.catalog.db import create_engine_for, session_factory
from medai.collection.campaign import report as report_module
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import STATUS_RULE, CampaignProgress
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import generate
from medai.serving.dashboard_page import (
    STATUS_NAMES,
    STATUS_REASONS,
    render_dashboard,
    status_rule_lines,
)
from medai.serving.i18n import (
    LANG_COOKIE,
    LANGUAGES,
    Translator,
    catalog_path,
    negotiate,
    parse_accept_language,
)
from tests.serving.browser import chromium
from tests.serving.helpers import ServeProcess, TestClient, new_key
from tests.utils.campaign import bad_inputs

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# The modules whose words the dashboard and its sign-in page show.
SOURCES = (
    Path(dashboard_module.__file__),
    Path(page_module.__file__),
    Path(page_module.__file__).with_name("security_panel.py"),
    Path(page_module.__file__).with_name("monitoring_panel.py"),
    Path(page_module.__file__).with_name("quarantine_page.py"),
    Path(page_module.__file__).with_name("quarantine_routes.py"),
)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def used_msgids() -> dict[str, list[tuple[str, int]]]:
    """Every literal message id the dashboard's code passes to the catalogue, with where.

    Read from the syntax tree (f-strings included): ``t._("...")``, ``N_("...")`` and
    ``_h(t, "...")``.
    """
    found: dict[str, list[tuple[str, int]]] = {}
    for source in SOURCES:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            index = {"_": 0, "N_": 0, "_h": 1}.get(name or "")
            if index is None or len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                where = (f"medai/serving/{source.name}", node.lineno)
                found.setdefault(arg.value, []).append(where)
    return found


def _catalog(language: str) -> Catalog:
    with open(catalog_path(language), "rb") as po:
        return read_po(po, locale=language)


def test_every_message_has_a_vietnamese_translation() -> None:
    used = used_msgids()
    assert len(used) > 50  # the extraction sees the page's words
    assert "Sign in" in used and "Status" in used and "on track" in used
    # The report's status rule is shown translated too, line by line: the catalogue
    # follows its text (a line changed in report.py needs its translation changed here).
    wanted = set(used) | set(status_rule_lines(STATUS_RULE))
    vi = {m.id: m for m in _catalog("vi") if m.id}
    en = {m.id: m for m in _catalog("en") if m.id}
    untranslated = sorted(m for m in wanted if m not in vi or not vi[m].string or vi[m].fuzzy)
    assert untranslated == [], "no Vietnamese text (edit medai/serving/locales/vi/...)"
    assert sorted(wanted - set(en)) == []
    stale = sorted((set(vi) | set(en)) - wanted)
    assert stale == [], "catalogue entries no code uses"
    for msgid in wanted:
        text = vi[msgid].string
        assert isinstance(text, str)
        assert set(_PLACEHOLDER.findall(text)) == set(_PLACEHOLDER.findall(msgid)), msgid
        assert text != msgid or msgid.startswith("%("), f"copied, not translated: {msgid}"
    # Babel's own checks (python-format placeholders and the like) find nothing.
    for language in LANGUAGES:
        problems = [(m.id, [str(e) for e in errors]) for m, errors in _catalog(language).check()]
        assert problems == [], language


def test_every_status_and_status_code_has_words() -> None:
    assert set(get_args(report_module.Status)) <= set(STATUS_NAMES)
    codes = getattr(report_module, "StatusCode", None)
    if codes is not None:
        assert set(get_args(codes)) <= set(STATUS_REASONS)
    vi = Translator("vi")
    assert vi._(STATUS_NAMES["on track"]) == "Đúng tiến độ"
    assert vi._(STATUS_NAMES["at risk"]).startswith("Có nguy cơ")
    assert vi._(STATUS_NAMES["late"]).startswith("Chậm")
    assert vi._(STATUS_NAMES["silent"]) == "Mất liên lạc"
    assert vi._(STATUS_NAMES["complete"]) == "Hoàn thành"


@pytest.mark.parametrize(
    ("query", "cookie", "header", "expected"),
    [
        (None, None, None, ("en", False)),
        (None, None, "vi-VN,vi;q=0.9,en;q=0.8", ("vi", False)),
        (None, None, "en;q=0.5, vi;q=0.9", ("vi", False)),
        (None, None, "fr-FR, de;q=0.9, vi;q=0.3", ("vi", False)),
        (None, None, "vi;q=0, en", ("en", False)),
        (None, None, "fr, *;q=0.5, vi;q=0.1", ("en", False)),
        (None, None, "vi;q=banana, en;q=0.2", ("en", False)),
        (None, "vi", "en", ("vi", False)),
        ("en", "vi", "vi", ("en", True)),
        ("vi", None, None, ("vi", True)),
        ("xx", "yy", "vi", ("vi", False)),
    ],
)
def test_language_negotiation(
    query: str | None, cookie: str | None, header: str | None, expected: tuple[str, bool]
) -> None:
    assert negotiate(query, cookie, header) == expected


def test_accept_language_order_and_bounds() -> None:
    assert parse_accept_language("da, en-gb;q=0.8, en;q=0.7") == ["da", "en-gb", "en"]
    assert parse_accept_language("a;q=0.5, b, c;q=0.5") == ["b", "a", "c"]
    assert len(parse_accept_language("vi," * 10_000)) < 300


def _report(settings: Settings) -> CampaignProgress:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return compute_progress(session)
    finally:
        engine.dispose()


def _with_a_silent_site(report: CampaignProgress) -> CampaignProgress:
    """``report`` with big numbers and its first site silent, behind an edge with a backlog."""
    now = report.generated_at
    first = report.sites[0].model_copy(
        update={
            "status": "silent",
            "status_code": "silent",
            "status_reason": "Nothing heard for 3 h (...); last seen ...",
            "status_args": {
                "hours": 3.1,
                "quiet_hours": 2.0,
                "last_seen": (now - dt.timedelta(hours=3, minutes=5)).isoformat(),
            },
            "last_seen": now - dt.timedelta(hours=3, minutes=5),
            "edge": {
                "last_heartbeat": now - dt.timedelta(hours=3, minutes=5),
                "version": "0.1.0",
                "outbox_depth": 1234,
                "oldest_unsent_seconds": 7200,
            },
            "instances": 12345,
            "rejection_rate": 0.125,
        }
    )
    second = report.sites[1].model_copy(
        update={
            "status": "at risk",
            "status_code": "at-risk-behind",
            "status_reason": "43% against a plan of 67%, projected 2026-12-19, ...",
            "status_args": {
                "progress": 0.43,
                "expected": 0.67,
                "projected": "2026-12-19",
                "end": "2027-01-04",
            },
            "last_seen": now - dt.timedelta(minutes=30),
            "edge": None,
        }
    )
    return report.model_copy(
        update={
            "sites": [first, second, *report.sites[2:]],
            "silent_sites": [first.site],
            "instances": 23456,
        }
    )


@SQLITE
def test_the_page_in_vietnamese_uses_the_locale_formats(campaign: Settings) -> None:
    report = _with_a_silent_site(_report(campaign))
    silent, behind = report.sites[0], report.sites[1]
    vi = render_dashboard(report, Translator("vi"))
    assert '<html lang="vi">' in vi
    assert "Tiến độ tích lũy" in vi and "Các cơ sở" in vi and "Lý do cách ly" in vi
    assert 'data-kpi="instances">23.456<' in vi  # the campaign's tile: vi thousands
    assert ">12.345<" in vi and "(12,5%)" in vi  # the silent site's row: vi decimals
    assert report.start_date.strftime("%d/%m/%Y") in vi
    assert 'data-status="silent">Mất liên lạc<' in vi
    assert 'data-status="at risk">Có nguy cơ chậm<' in vi
    assert "3 giờ trước" in vi and ">1.234<" in vi and "2 tiếng" in vi
    assert f"Mất liên lạc: {silent.site} (tín hiệu cuối: 3 giờ trước)" in vi
    assert "Đạt 43% so với kế hoạch 67%" in vi and "19/12/2026" in vi and "04/01/2027" in vi
    assert "Không nhận được tín hiệu nào trong 3 giờ (" in vi
    assert "coi là mất liên lạc sau 2 giờ); tín hiệu cuối lúc " in vi
    assert "Quy tắc xác định trạng thái" in vi
    # Silent first, with last seen and the outbox; the English page says the same.
    en = render_dashboard(report, Translator("en"))
    assert '<html lang="en">' in en and "Burn-up: plan vs actual" in en
    assert 'data-kpi="instances">23,456<' in en and "(12.5%)" in en
    assert "3h ago" in en and ">1,234<" in en and "oldest unsent: 2h" in en
    assert f"Silent: {silent.site} (last seen 3h ago)" in en
    assert "43% against a plan of 67%, projected Dec 19, 2026, before the end Jan 4, 2027." in en
    assert "Nothing heard for 3 h (no instance, no edge heartbeat; silent after 2 h)" in en
    assert "Status rule" in en
    assert all(escape(line) in en for line in status_rule_lines(STATUS_RULE))
    assert en.index(f'data-site="{silent.site}"') < en.index(f'data-site="{behind.site}"')


@SQLITE
def test_a_reason_without_its_figures_or_code_is_still_shown(campaign: Settings) -> None:
    report = _report(campaign)
    never = {"hours": 30.0, "quiet_hours": 24.0, "last_seen": None}
    unknown = {"status_code": "brand-new", "status_reason": "A reason in English."}
    sites = [
        report.sites[0].model_copy(update={"status_code": "silent", "status_args": never}),
        report.sites[1].model_copy(update={**unknown, "status_args": {}}),
    ]
    page = render_dashboard(report.model_copy(update={"sites": sites}), Translator("vi"))
    assert "trong 30 giờ" in page and "chưa từng có tín hiệu kể từ khi chiến dịch bắt đầu" in page
    assert "A reason in English." in page  # a code the catalogue does not know yet


@SQLITE
def test_sign_in_page_language_by_query_cookie_and_header(
    campaign: Settings, client: TestClient
) -> None:
    english = client.get("/dashboard/login")
    assert '<html lang="en">' in english.text and "Sign in" in english.text
    assert english.headers["content-language"] == "en"
    assert "accept-language" in english.headers["vary"].lower()
    by_header = client.get("/dashboard/login", headers={"Accept-Language": "vi-VN,vi;q=0.9"})
    assert '<html lang="vi">' in by_header.text and "Đăng nhập" in by_header.text
    assert LANG_COOKIE not in by_header.cookies  # only ?lang= is kept
    chosen = client.get("/dashboard/login?lang=vi")
    assert "Đăng nhập" in chosen.text and chosen.cookies[LANG_COOKIE] == "vi"
    # Kept for the visit: the next page needs no ?lang=, even if the browser prefers English.
    kept = client.get("/dashboard/login", headers={"Accept-Language": "en"})
    assert '<html lang="vi">' in kept.text
    refused = client.post("/dashboard/login", data={"key": "medai_nope"})
    assert refused.status_code == 401 and "Khóa không tồn tại hoặc đã bị thu hồi" in refused.text
    clinician = new_key(campaign, "clinician")
    refused = client.post("/dashboard/login", data={"key": clinician})
    assert refused.status_code == 403 and "vai trò clinician" in refused.text
    steward = new_key(campaign, "steward")
    assert client.post("/dashboard/login", data={"key": steward}).status_code == 200
    page = client.get("/dashboard")
    assert '<html lang="vi">' in page.text and "Tiến độ tích lũy" in page.text
    back = client.get("/dashboard?lang=en")
    assert "Burn-up: plan vs actual" in back.text and back.cookies[LANG_COOKIE] == "en"


# Chromium ------------------------------------------------------------------------------


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


@pytest.fixture
def server(collected: Settings) -> Iterator[ServeProcess]:
    process = ServeProcess()
    try:
        yield process
    finally:
        process.stop()


def _sign_in(browser: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 30).until(lambda driver: driver.current_url == url + "/dashboard")


def _assert_vietnamese_dashboard(browser: Any, report: CampaignProgress) -> None:
    from selenium.webdriver.common.by import By

    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "vi"
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert "Tiến độ tích lũy: kế hoạch và thực tế" in headings
    assert "Lý do cách ly" in headings and "Chỉ tiêu" in headings
    vi = Translator("vi")
    for site in report.sites:
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-site="{site.site}"]')
        pill = row.find_element(By.CSS_SELECTOR, "[data-status]")
        assert pill.get_attribute("data-status") == site.status
        assert pill.text == vi._(STATUS_NAMES[site.status]) != site.status
    start = browser.find_element(By.CSS_SELECTOR, '[data-kpi="start_date"]').text
    assert start == report.start_date.strftime("%d/%m/%Y")
    rejected = browser.find_element(By.CSS_SELECTOR, '[data-kpi="rejection_rate"]').text
    assert rejected == f"{report.rejection_rate * 100:.1f}%".replace(".", ",")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Burn-up" not in body and "Sign in" not in body


@pytest.mark.slow
@SQLITE
def test_chromium_in_vietnamese_by_its_language_then_english_by_the_link(
    collected: Settings, server: ServeProcess
) -> None:
    from selenium.webdriver.common.by import By

    steward = new_key(collected, "steward")
    report = _report(collected)
    with chromium("vi-VN,vi") as browser:
        browser.get(server.url + "/dashboard")
        assert browser.current_url.endswith("/dashboard/login")
        assert browser.find_element(By.ID, "sign-in").text == "Đăng nhập"
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "vi"
        _sign_in(browser, server.url, steward)
        _assert_vietnamese_dashboard(browser, report)
        artifacts = os.environ.get("MEDAI_TEST_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(Path(artifacts) / "dashboard-vi.png"))
        # The English link switches, and the choice sticks over the browser's Vietnamese.
        browser.find_element(By.CSS_SELECTOR, 'a[data-lang="en"]').click()
        browser.get(server.url + "/dashboard")
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert "Burn-up: plan vs actual" in headings and "Quarantine reasons" in headings
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-site] [data-status]"):
            assert row.text == row.get_attribute("data-status")
        start = browser.find_element(By.CSS_SELECTOR, '[data-kpi="start_date"]').text
        assert start == f"{report.start_date:%b} {report.start_date.day}, {report.start_date.year}"


@pytest.mark.slow
@SQLITE
def test_chromium_in_english_switched_to_vietnamese_by_the_query(
    collected: Settings, server: ServeProcess
) -> None:
    from selenium.webdriver.common.by import By

    steward = new_key(collected, "steward")
    with chromium() as browser:
        browser.get(server.url + "/dashboard/login")
        assert browser.find_element(By.ID, "sign-in").text == "Sign in"
        assert browser.find_element(By.TAG_NAME, "h1").text == "medai campaign dashboard"
        browser.get(server.url + "/dashboard/login?lang=vi")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Bảng theo dõi chiến dịch medai"
        assert browser.find_element(By.ID, "sign-in").text == "Đăng nhập"
        _sign_in(browser, server.url, steward)  # the form's answer keeps the language
        _assert_vietnamese_dashboard(browser, _report(collected))
