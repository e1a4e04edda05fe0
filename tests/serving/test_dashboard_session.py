"""The dashboard's cookie: a signed, expiring session token, never the key; Secure on HTTPS."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import stat
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from medai.catalog.db import create_engine_for
from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.dashboard import COOKIE
from medai.serving.keys import KeyInfo, hash_key, list_keys, revoke_key
from medai.serving.sessions import SECRET_FILE_NAME, DashboardSessions, load_or_create_secret
from tests.serving.helpers import ServeProcess, TestClient, new_key

# The checks are the same on both catalogs; one is enough for everything but the key lookup.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def app_client(campaign: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(campaign)) as client:
        yield client


def _sign_in(client: TestClient, key: str) -> str:
    """Sign in with ``key``; the Set-Cookie header of the answer."""
    signed = client.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    headers: list[str] = signed.headers.get_list("set-cookie")
    return next(v for v in headers if v.startswith(COOKIE + "="))


def _refused(client: TestClient, token: str) -> bool:
    client.cookies.clear()
    client.cookies.set(COOKIE, token, path="/dashboard")
    page = client.get("/dashboard", follow_redirects=False)
    return bool(page.status_code == 303 and page.headers["location"] == "/dashboard/login")


def _key_info(settings: Settings, name: str) -> KeyInfo:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        return next(k for k in list_keys(engine) if k.name == name)
    finally:
        engine.dispose()


@SQLITE
def test_the_cookie_holds_a_session_token_not_the_key(
    campaign: Settings, app_client: TestClient
) -> None:
    steward = new_key(campaign, "steward")
    header = _sign_in(app_client, steward)
    token = app_client.cookies[COOKIE]
    for secret in (steward, steward.removeprefix("medai_"), hash_key(steward)):
        assert secret not in token and secret not in header
    attributes = {a.strip().split("=")[0].lower(): a for a in header.split(";")[1:]}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes.keys()
    assert attributes["path"].strip() == "Path=/dashboard"
    assert attributes["samesite"].strip().lower() == "samesite=strict"
    assert attributes["max-age"].strip() == f"Max-Age={8 * 3600}"
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    page = app_client.get("/dashboard")
    assert page.status_code == 200 and "Burn-up" in page.text
    # The token is no API key: the bearer routes refuse it.
    refused = app_client.get("/v1/campaign/progress", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401


@SQLITE
def test_the_cookie_is_secure_over_https(campaign: Settings) -> None:
    steward = new_key(campaign, "steward")
    with TestClient(create_app(campaign), base_url="https://testserver") as client:
        header = _sign_in(client, steward)
        assert "secure" in [a.strip().lower() for a in header.split(";")]
        assert client.get("/dashboard").status_code == 200


@SQLITE
def test_forged_altered_and_expired_tokens_are_refused(
    campaign: Settings, app_client: TestClient
) -> None:
    steward = new_key(campaign, "steward")
    _sign_in(app_client, steward)
    token = app_client.cookies[COOKIE]
    assert not _refused(app_client, token)
    version, key_id, expires, nonce, tag, mac = token.split(".")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    altered = {
        "forged": "v1.1.9999999999.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA." + "A" * 43,
        "the raw key": steward,
        "another MAC": ".".join([version, key_id, expires, nonce, tag, flipped]),
        "a later expiry": ".".join([version, key_id, str(int(expires) + 3600), nonce, tag, mac]),
        "another key id": ".".join([version, str(int(key_id) + 1), expires, nonce, tag, mac]),
        "empty": "",
        "huge": "v1." + "1" * 10_000,
    }
    for what, forged in altered.items():
        assert _refused(app_client, forged), what
    sessions = DashboardSessions.for_settings(campaign)
    info = _key_info(campaign, "steward-key")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=9)
    assert _refused(app_client, sessions.issue(info, now=long_ago)), "expired"
    # Minted for a longer lifetime than the service now allows (the setting was lowered).
    longer = DashboardSessions(sessions.secret_file, dt.timedelta(hours=100))
    assert _refused(app_client, longer.issue(info)), "too long"
    # Another key that got the same id (a catalog made anew under the same home).
    other = KeyInfo(**{**info.__dict__, "prefix": "medai_zzzzzz"})
    assert _refused(app_client, sessions.issue(other)), "another key, same id"
    assert not _refused(app_client, sessions.issue(info))


def test_a_revoked_key_ends_its_sessions_at_once(
    campaign: Settings, app_client: TestClient
) -> None:
    steward = new_key(campaign, "steward")
    _sign_in(app_client, steward)
    assert app_client.get("/dashboard").status_code == 200
    assert app_client.get("/dashboard/docs").status_code == 200
    engine = create_engine_for(campaign.resolved_database_url)
    try:
        revoke_key(engine, "steward-key", actor="test")
    finally:
        engine.dispose()
    for path in ("/dashboard", "/dashboard/docs"):
        page = app_client.get(path, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/dashboard/login", path


@SQLITE
def test_a_clinician_token_opens_no_dashboard(campaign: Settings, app_client: TestClient) -> None:
    new_key(campaign, "clinician")
    token = DashboardSessions.for_settings(campaign).issue(_key_info(campaign, "clinician-key"))
    assert _refused(app_client, token)


@SQLITE
def test_sign_out_clears_the_cookie(campaign: Settings, app_client: TestClient) -> None:
    _sign_in(app_client, new_key(campaign, "steward"))
    out = app_client.post("/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    cleared = [v for v in out.headers.get_list("set-cookie") if v.startswith(COOKIE + "=")]
    assert cleared and "Max-Age=0" in cleared[0] and "Path=/dashboard" in cleared[0]
    assert COOKIE not in app_client.cookies
    page = app_client.get("/dashboard", follow_redirects=False)
    assert page.status_code == 303


@SQLITE
def test_an_old_key_cookie_is_deleted_at_sign_in(
    campaign: Settings, app_client: TestClient
) -> None:
    steward = new_key(campaign, "steward")
    # What an earlier medai left in the browser: the key itself.
    app_client.cookies.set("medai_dashboard_key", steward, path="/dashboard")
    assert _refused(app_client, steward)
    signed = app_client.post("/dashboard/login", data={"key": steward}, follow_redirects=False)
    deleted = [c for c in signed.headers.get_list("set-cookie") if "medai_dashboard_key=" in c]
    assert deleted and "Max-Age=0" in deleted[0] and "Path=/dashboard" in deleted[0]


@SQLITE
def test_a_token_of_one_worker_is_accepted_by_another(campaign: Settings) -> None:
    steward = new_key(campaign, "steward")
    with TestClient(create_app(campaign)) as first, TestClient(create_app(campaign)) as second:
        _sign_in(first, steward)
        second.cookies.set(COOKIE, first.cookies[COOKIE], path="/dashboard")
        assert second.get("/dashboard").status_code == 200
    secret = campaign.resolved_home / SECRET_FILE_NAME
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) == 64


def _secret_of(path: str) -> bytes:
    return load_or_create_secret(Path(path))


def test_workers_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "home" / SECRET_FILE_NAME
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        secrets = set(pool.map(_secret_of, [str(path)] * 16))
    assert secrets == {load_or_create_secret(path)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE_NAME]  # no leftovers


@pytest.mark.slow
@SQLITE
def test_behind_a_trusted_tls_proxy_the_cookie_is_secure(campaign: Settings) -> None:
    import httpx

    steward = new_key(campaign, "steward")
    proxied = {"X-Forwarded-Proto": "https"}
    direct = ServeProcess()
    try:  # no proxy configured: anyone could send the header, so it is not believed
        signed = httpx.post(direct.url + "/dashboard/login", data={"key": steward}, headers=proxied)
        assert signed.status_code == 303 and COOKIE in signed.cookies
        assert "secure" not in signed.headers["set-cookie"].lower()
    finally:
        direct.stop()
    # Two workers behind a proxy on loopback: each accepts the sessions the other issued.
    server = ServeProcess({"MEDAI_FORWARDED_ALLOW_IPS": "127.0.0.1"}, "--workers", "2")
    try:
        tokens = []
        for _ in range(6):  # a new connection each: uvicorn's workers share the socket
            signed = httpx.post(
                server.url + "/dashboard/login", data={"key": steward}, headers=proxied
            )
            assert signed.status_code == 303
            header = next(
                c for c in signed.headers.get_list("set-cookie") if c.startswith(COOKIE + "=")
            )
            assert "secure" in [a.strip().lower() for a in header.split(";")]
            tokens.append(signed.cookies[COOKIE])
        for token in tokens:
            page = httpx.get(server.url + "/dashboard", cookies={COOKIE: token}, headers=proxied)
            assert page.status_code == 200, page.text
    finally:
        server.stop()


@SQLITE
def test_a_damaged_secret_file_is_named_not_replaced(
    campaign: Settings, app_client: TestClient
) -> None:
    secret = campaign.resolved_home / SECRET_FILE_NAME
    secret.write_text("not a secret\n")
    signed = app_client.post(
        "/dashboard/login", data={"key": new_key(campaign, "steward")}, follow_redirects=False
    )
    assert signed.status_code == 503 and str(secret) in signed.json()["detail"]
    assert secret.read_text() == "not a secret\n"
