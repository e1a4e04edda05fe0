"""Every route of the app, every role: no key 401, the wrong role 403, the right one in.

The matrix below names each route's rule; the test fails when the app's OpenAPI document
lists a route the matrix does not know, so a new route cannot slip in unchecked. No model
is needed: a route that passed the key check answers something other than 401/403 (503
when no model is loaded).
"""

from __future__ import annotations

from typing import Final

import pytest

from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.dashboard import COOKIE
from tests.serving.helpers import TestClient, bearer, multipart, new_key

ROLES: Final = ("clinician", "steward", "researcher", "admin", "edge", "monitoring")
OPEN: Final = "open"
ANY_KEY: Final = "any key"  # any person's key: not a site's edge key
METRICS: Final = "any key or monitoring"  # /metrics: a person's key or a scraper's monitoring key
STOW: Final = "steward or edge"  # STOW-RS: a steward, or site-a's own edge key
RECEIPTS: Final = "steward or edge (reads)"
BROWSE: Final = "steward or researcher"  # QIDO-RS/WADO-RS: the de-identified collection
SIGN_IN: Final = "sign-in"  # takes a steward key in its form (see the last test)
WADO_INSTANCE: Final = "/dicomweb/studies/{study}/series/{series}/instances/{instance}"
# (method, path) -> who may use it: a role (admin may use every role's routes), any valid
# key, or open (health checks; the dashboard's own sign-in pages, which take a key in a form).
MATRIX: Final[dict[tuple[str, str], str]] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("POST", "/v1/predict"): "clinician",
    ("GET", "/v1/predictions/{prediction_id}"): "clinician",
    ("GET", "/v1/predictions/{prediction_id}/heatmap.png"): "clinician",
    ("GET", "/v1/models"): "clinician",
    ("POST", "/v1/models/reload"): "admin",
    ("GET", "/v1/models/{name}/monitoring"): "clinician",
    ("POST", "/v1/predictions/{prediction_id}/feedback"): "clinician",
    ("POST", "/dicomweb/studies"): STOW,
    ("POST", "/dicomweb/studies/{study}"): STOW,
    # QIDO-RS and WADO-RS (browsing the de-identified collection): steward keys.
    ("GET", "/dicomweb/studies"): BROWSE,
    ("GET", "/dicomweb/series"): BROWSE,
    ("GET", "/dicomweb/instances"): BROWSE,
    ("GET", "/dicomweb/studies/{study}/series"): BROWSE,
    ("GET", "/dicomweb/studies/{study}/instances"): BROWSE,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances"): BROWSE,
    ("GET", "/dicomweb/studies/{study}"): BROWSE,
    ("GET", "/dicomweb/studies/{study}/series/{series}"): BROWSE,
    ("GET", WADO_INSTANCE): BROWSE,
    ("GET", "/dicomweb/studies/{study}/metadata"): BROWSE,
    ("GET", "/dicomweb/studies/{study}/series/{series}/metadata"): BROWSE,
    ("GET", WADO_INSTANCE + "/metadata"): BROWSE,
    ("GET", WADO_INSTANCE + "/frames/{frames}"): BROWSE,
    ("GET", WADO_INSTANCE + "/rendered"): BROWSE,
    ("GET", WADO_INSTANCE + "/frames/{frame}/rendered"): BROWSE,
    ("GET", WADO_INSTANCE + "/bulkdata/{tag}"): BROWSE,
    ("POST", "/v1/edge/heartbeat"): "edge",
    ("POST", "/v1/edge/study-keys"): "edge",
    ("GET", "/v1/edge/receipts"): RECEIPTS,
    ("GET", "/v1/campaign/progress"): "steward",
    ("GET", "/metrics"): METRICS,
    ("GET", "/dashboard"): OPEN,  # without the sign-in cookie: a redirect to sign in
    ("GET", "/dashboard/login"): OPEN,
    ("POST", "/dashboard/login"): SIGN_IN,
    ("POST", "/dashboard/logout"): OPEN,
    # The dashboard's quarantine takes the sign-in cookie (a redirect to sign in without one),
    # never a bearer key; its form also needs the session's CSRF token
    # (tests/serving/test_quarantine_page.py).
    ("GET", "/dashboard/quarantine"): OPEN,
    ("GET", "/dashboard/quarantine/{entry_id}"): OPEN,
    ("POST", "/dashboard/quarantine/action"): OPEN,
}
# Not in the OpenAPI document: the document itself and the API browser.
HIDDEN: Final[dict[tuple[str, str], str]] = {
    ("GET", "/openapi.json"): ANY_KEY,
    ("GET", "/docs"): ANY_KEY,
    # The API browser's own Swagger UI files (public code, no data), served without a CDN.
    ("GET", "/docs/assets/swagger-ui-bundle.js"): OPEN,
}
SAMPLE: Final = {
    "{prediction_id}": "0b6f3c52-8a0e-4d7e-9c55-5f0f4b1b7c1e",
    "{study}": "1.2.3",
    "{name}": "no-such-model",
    "{entry_id}": "1",
    "{series}": "1.2.4",
    "{instance}": "1.2.5",
    "{frames}": "1",
    "{frame}": "1",
    "{tag}": "7FE00010",
}


def _url(path: str) -> str:
    for name, value in SAMPLE.items():
        path = path.replace(name, value)
    return path + ("?site=site-a" if path.startswith("/dicomweb") else "")


def _status(client: TestClient, method: str, url: str, headers: dict[str, str]) -> int:
    """The status of one request; a refusal must be JSON with a ``detail``."""
    content = None
    if method == "POST":
        content, content_type = multipart([b"not read"])
        headers = {"Content-Type": content_type} | headers
    response = client.request(method, url, content=content, headers=headers, follow_redirects=False)
    if response.status_code in (401, 403):
        assert "detail" in response.json(), (method, url)
    return response.status_code


def _allowed(rule: str, role: str) -> bool:
    if rule in (STOW, RECEIPTS):
        return role in ("steward", "admin", "edge")
    if rule == BROWSE:
        return role in ("steward", "researcher", "admin")
    if rule == "edge":
        return role == "edge"  # admin is not granted a site's gateway role
    if role == "monitoring":
        return rule in (OPEN, METRICS)  # a scraper's key reads /metrics and nothing else
    if role == "edge":
        return rule == OPEN  # an edge key may use the edge routes only
    return rule in (OPEN, ANY_KEY, METRICS) or role in (rule, "admin")


@pytest.fixture
def app_client(campaign: Settings) -> TestClient:
    # A served model that does not exist: inference routes answer 503 after the key check.
    # No throttle: the matrix sends an unknown key to every route, more than 20 a minute.
    settings = campaign.model_copy(
        update={
            "serve_model": "no-such-model",
            "model_poll_seconds": 0.0,
            "auth_failures_per_minute": 0,
        }
    )
    return TestClient(create_app(settings))


def test_the_matrix_covers_every_documented_route(campaign: Settings) -> None:
    admin = new_key(campaign, "admin")
    with TestClient(create_app(campaign.model_copy(update={"serve_model": ""}))) as client:
        spec = client.get("/openapi.json", headers=bearer(admin)).json()
    documented = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
    }
    assert documented == set(MATRIX)
    for (method, path), rule in MATRIX.items():
        operation = spec["paths"][path][method.lower()]
        keyed = rule not in (OPEN, SIGN_IN)
        assert bool(operation.get("security")) == keyed, (method, path)
        if keyed:
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_every_route_for_every_role(campaign: Settings, app_client: TestClient) -> None:
    keys = {role: new_key(campaign, role, f"{role}-1") for role in ROLES}
    with app_client as client:
        for (method, path), rule in (MATRIX | HIDDEN).items():
            if rule == SIGN_IN:
                continue
            url = _url(path)

            def call(extra: dict[str, str], method: str = method, url: str = url) -> int:
                return _status(client, method, url, extra)

            anonymous = call({})
            unknown = call(bearer("medai_" + "A" * 43))
            if rule == OPEN:
                assert anonymous not in (401, 403), (method, path, anonymous)
            else:
                assert anonymous == 401, (method, path, anonymous)
                assert unknown == 401, (method, path, unknown)
            for role, key in keys.items():
                status = call(bearer(key))
                if _allowed(rule, role):
                    assert status not in (401, 403), (method, path, role, status)
                else:
                    assert status == 403, (method, path, role, status)


def test_a_revoked_key_is_refused_everywhere(campaign: Settings, app_client: TestClient) -> None:
    from medai.catalog.db import create_engine_for
    from medai.serving.keys import revoke_key

    key = new_key(campaign, "admin", "short-lived")
    engine = create_engine_for(campaign.resolved_database_url)
    try:
        revoke_key(engine, "short-lived", actor="test")
    finally:
        engine.dispose()
    with app_client as client:
        for (method, path), rule in (MATRIX | HIDDEN).items():
            if rule in (OPEN, SIGN_IN):
                continue
            response = client.request(method, _url(path), headers=bearer(key))
            assert response.status_code == 401, (method, path)
            assert "revoked" in response.json()["detail"], (method, path)


def test_the_api_browser_takes_the_dashboard_sign_in(
    campaign: Settings, app_client: TestClient
) -> None:
    keys = {role: new_key(campaign, role, f"{role}-1") for role in ROLES}
    with app_client as client:
        # Not signed in: the sign-in page, and no document.
        docs = client.get("/dashboard/docs", follow_redirects=False)
        assert docs.status_code == 303 and docs.headers["location"] == "/dashboard/login"
        assert client.get("/dashboard/openapi.json").status_code == 401
        browser = client.get("/docs")
        assert browser.status_code == 401 and "/dashboard/docs" in browser.json()["detail"]
        # With a bearer key, the browser page itself.
        assert "swagger" in client.get("/docs", headers=bearer(keys["clinician"])).text.lower()
        for role, key in keys.items():
            client.cookies.clear()
            signed = client.post(
                "/dashboard/login",
                content=f"key={key}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                follow_redirects=False,
            )
            if role in ("clinician", "researcher", "edge", "monitoring"):  # stewards, admins
                assert signed.status_code == 403
                continue
            assert signed.status_code == 303 and COOKIE in signed.cookies
            page = client.get("/dashboard/docs")
            assert page.status_code == 200 and "/dashboard/openapi.json" in page.text
            assert page.headers["Cache-Control"] == "no-store"
            document = client.get("/dashboard/openapi.json")
            assert document.status_code == 200 and "/v1/predict" in document.json()["paths"]
