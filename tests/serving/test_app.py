"""The service frame: open health routes, API-key roles on everything else, JSON errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from medai.catalog.db import upgrade
from medai.config import Settings
from medai.serving.app import ROUTERS, create_app
from medai.serving.auth import Caller
from medai.serving.deps import require_role
from medai.serving.keys import create_key
from tests.serving.helpers import TestClient, bearer, multipart, new_key
from tests.utils.campaign import init_example_campaign


def test_readyz_says_what_is_missing_until_the_campaign_is_set_up(settings: Settings) -> None:
    settings = settings.model_copy(update={"serve_model": ""})  # collection only
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["status"] == "not-ready"
        assert "medai campaign init" in not_ready.json()["detail"]

        upgrade(settings.resolved_database_url)  # migrated, but no campaign yet
        no_campaign = client.get("/readyz")
        assert no_campaign.status_code == 503
        assert "no campaign" in no_campaign.json()["detail"]

        init_example_campaign(settings)  # no restart needed
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})

        settings.resolved_key_file.unlink()
        no_key = client.get("/readyz")
        assert no_key.status_code == 503 and "key" in no_key.json()["detail"]


def test_stow_is_503_until_the_campaign_and_its_key_are_there(settings: Settings) -> None:
    key = new_key(settings, "steward")  # migrates the catalog; no campaign, no sites
    body, content_type = multipart([b"x"])
    headers = bearer(key) | {"Content-Type": content_type}
    with TestClient(create_app(settings)) as client:
        response = client.post("/dicomweb/studies?site=site-a", content=body, headers=headers)
        assert response.status_code == 503
        assert "campaign init" in response.json()["detail"]
    init_example_campaign(settings)
    settings.resolved_key_file.unlink()
    with TestClient(create_app(settings)) as client:
        response = client.post("/dicomweb/studies?site=site-a", content=body, headers=headers)
        assert response.status_code == 503
        assert "key file" in response.json()["detail"]


Clinician = Annotated[Caller, Depends(require_role("clinician"))]
Steward = Annotated[Caller, Depends(require_role("steward"))]
Admin = Annotated[Caller, Depends(require_role("admin"))]


def _echo(caller: Caller) -> dict[str, str]:
    return {"name": caller.name, "role": caller.role, "actor": caller.actor}


def _probe_app(settings: Settings) -> TestClient:
    """The app plus a route per role that echoes the caller (as later routers will use it)."""
    app = create_app(settings.model_copy(update={"serve_model": ""}))  # collection only
    probe = APIRouter(prefix="/probe")

    @probe.get("/clinician")
    def clinician(caller: Clinician) -> dict[str, str]:
        return _echo(caller)

    @probe.get("/steward")
    def steward(caller: Steward) -> dict[str, str]:
        return _echo(caller)

    @probe.get("/admin")
    def admin(caller: Admin) -> dict[str, str]:
        return _echo(caller)

    app.include_router(probe)
    return TestClient(app)


def test_auth_matrix(campaign: Settings) -> None:
    keys = {
        role: new_key(campaign, role, f"{role}-1") for role in ("clinician", "steward", "admin")
    }
    expected = {  # role of the key -> routes it may use
        "clinician": {"clinician"},
        "steward": {"steward"},
        "admin": {"clinician", "steward", "admin"},
    }
    with _probe_app(campaign) as client:
        for route in ("/healthz", "/readyz"):
            assert client.get(route).status_code == 200  # open
        for role, key in keys.items():
            for route_role in ("clinician", "steward", "admin"):
                response = client.get(f"/probe/{route_role}", headers=bearer(key))
                if route_role in expected[role]:
                    assert response.status_code == 200, (role, route_role)
                    assert response.json() == {
                        "name": f"{role}-1",
                        "role": role,
                        "actor": f"apikey:{role}-1",
                    }
                else:
                    assert response.status_code == 403, (role, route_role)
                    detail = response.json()["detail"]
                    assert f"needs a {route_role}" in detail and f"{role}-1" in detail

        refusals = {
            "no header": {},
            "wrong scheme": {"Authorization": f"Basic {keys['admin']}"},
            "empty bearer": {"Authorization": "Bearer "},
            "unknown key": bearer("medai_" + "A" * 43),
            "not a medai key": bearer("hunter2"),
        }
        for why, headers in refusals.items():
            response = client.get("/probe/clinician", headers=headers)
            assert response.status_code == 401, why
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), why
            assert "key" in response.json()["detail"], why

        # STOW-RS is a steward route: the same rules apply before the body is read.
        body, content_type = multipart([b"not read"])
        headers = {"Content-Type": content_type}
        stow = "/dicomweb/studies?site=site-a"
        assert client.post(stow, content=body, headers=headers).status_code == 401
        clinician = client.post(stow, content=body, headers=headers | bearer(keys["clinician"]))
        assert clinician.status_code == 403
        for role in ("steward", "admin"):
            allowed = client.post(stow, content=body, headers=headers | bearer(keys[role]))
            assert allowed.status_code == 409  # authorised; the one part is not DICOM

        unknown_route = client.get("/nothing-here", headers=bearer(keys["admin"]))
        assert unknown_route.status_code == 404 and "detail" in unknown_route.json()
        assert client.get("/docs").status_code == 401  # no open API browser


def test_a_revoked_key_is_refused_at_once(campaign: Settings) -> None:
    from medai.catalog.db import create_engine_for
    from medai.serving.keys import revoke_key

    engine = create_engine_for(campaign.resolved_database_url)
    created = create_key(engine, name="soon-gone", role="admin", actor="test")
    with _probe_app(campaign) as client:
        assert client.get("/probe/admin", headers=bearer(created.key)).status_code == 200
        revoke_key(engine, "soon-gone", actor="test")
        refused = client.get("/probe/admin", headers=bearer(created.key))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    engine.dispose()


def test_every_route_of_every_router_is_served(settings: Settings) -> None:
    from fastapi.routing import APIRoute

    from medai.serving import health

    assert ROUTERS[0] is health.router  # the open health routes come first
    routes = [route for router in ROUTERS for route in router.routes]
    assert all(isinstance(route, APIRoute) for route in routes)
    app = create_app(settings.model_copy(update={"serve_model": ""}))
    with TestClient(app, follow_redirects=False) as client:
        for route in routes:
            assert isinstance(route, APIRoute)
            path = route.path.replace("{", "").replace("}", "")  # any value for a parameter
            for method in route.methods or ():
                response = client.request(method, path)
                # Refused (no key), redirected or answered, but never "no such route".
                assert response.status_code != 404 or "Not Found" not in response.text, (
                    method,
                    route.path,
                )
    unknown = TestClient(app).get("/no-such-route")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}
