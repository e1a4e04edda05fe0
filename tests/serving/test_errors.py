"""Domain errors become HTTP answers in one place: status, JSON detail, Retry-After, Connection."""

from __future__ import annotations

import datetime as dt
import inspect
from pathlib import Path

import pytest

import medai.errors
from medai.config import Settings
from medai.errors import MedaiError
from medai.serving.app import create_app
from medai.serving.dashboard import COOKIE
from medai.serving.errors import CATALOG_UNREACHABLE, STATUS, status_for
from medai.serving.keys import KeyInfo
from medai.serving.sessions import DashboardSessions
from tests.serving.helpers import TestClient, bearer, multipart, new_key

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_every_domain_error_has_its_own_status() -> None:
    errors = [
        value
        for value in vars(medai.errors).values()
        if inspect.isclass(value) and issubclass(value, MedaiError) and value is not MedaiError
    ]
    assert len(errors) > 20
    for error in errors:
        # Mapped itself or through a parent, never by falling back to MedaiError's 500.
        assert any(cls in STATUS for cls in error.__mro__[:-3]), error.__name__
        assert 400 <= status_for(error) <= 599
    assert status_for(medai.errors.UnknownSite) == 400
    assert status_for(medai.errors.TruncatedDicom) == 422  # through Rejected
    assert status_for(medai.errors.RequestTooLarge) == 413
    assert status_for(medai.errors.CampaignNotSetUp) == 503  # through CampaignError


def _unreachable(tmp_path: Path) -> Settings:
    # Nothing listens on port 1: every connection is refused at once.
    return Settings(
        home=tmp_path / "home",
        database_url="postgresql+psycopg://medai@127.0.0.1:1/medai?connect_timeout=2",
        serve_model="",
    )


def test_an_unreachable_catalog_is_503_on_every_route_that_needs_it(tmp_path: Path) -> None:
    body, content_type = multipart([b"x"])
    secret = "medai_" + "A" * 43  # shaped like a key: checking it needs the catalog
    key = bearer(secret)
    settings = _unreachable(tmp_path)
    # A validly signed session: checking that its key is not revoked needs the catalog.
    steward = KeyInfo(1, "steward", "steward", secret[:12], dt.datetime.now(dt.UTC), None, None)
    session = DashboardSessions.for_settings(settings).issue(steward)
    with TestClient(create_app(settings)) as client:
        answers = {
            "key check": client.get("/v1/campaign/progress", headers=key),
            "metrics": client.get("/metrics", headers=key),
            "stow": client.post(
                "/dicomweb/studies?site=site-a",
                content=body,
                headers=key | {"Content-Type": content_type},
            ),
            "dashboard": client.get(
                "/dashboard",
                headers={"Cookie": f"{COOKIE}={session}"},
                follow_redirects=False,
            ),
        }
        for what, response in answers.items():
            assert response.status_code == 503, (what, response.text)
            assert response.json() == {"detail": CATALOG_UNREACHABLE}, what
            assert response.headers["Retry-After"] == "30", what
        ready = client.get("/readyz")
        assert ready.status_code == 503 and CATALOG_UNREACHABLE in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200  # the process itself is fine


@SQLITE
def test_an_error_before_the_body_is_read_closes_the_connection(campaign: Settings) -> None:
    key = new_key(campaign, "steward")
    stow = "/dicomweb/studies?site=site-a"
    limited = campaign.model_copy(update={"max_request_bytes": 4096})
    with TestClient(create_app(limited)) as client:
        # Refused on its Content-Type: the body was never read.
        wrong_type = client.post(
            stow, content=b"x" * 100, headers=bearer(key) | {"Content-Type": "text/plain"}
        )
        assert wrong_type.status_code == 415
        assert wrong_type.headers["Connection"] == "close"
        # Refused on its declared size: the same, from the body limit.
        too_large = client.post(
            stow, content=b"x" * 5000, headers=bearer(key) | {"Content-Type": "text/plain"}
        )
        assert too_large.status_code == 413 and too_large.headers["Connection"] == "close"
        assert "MEDAI_MAX_REQUEST_BYTES" in too_large.json()["detail"]
        # Refused once the whole body was read: the connection can serve the next request.
        body, content_type = multipart([b"x"])
        malformed = client.post(
            stow,
            content=body[:-10],
            headers=bearer(key) | {"Content-Type": content_type},
        )
        assert malformed.status_code == 400 and "Connection" not in malformed.headers
        # A refusal of a request without a body keeps the connection too.
        no_key = client.get("/v1/campaign/progress")
        assert no_key.status_code == 401 and "Connection" not in no_key.headers


@SQLITE
def test_a_campaign_not_set_up_is_503_saying_what_to_run(settings: Settings) -> None:
    key = new_key(settings, "steward")  # migrates the catalog; no campaign
    collection_only = settings.model_copy(update={"serve_model": ""})
    with TestClient(create_app(collection_only)) as client:
        progress = client.get("/v1/campaign/progress", headers=bearer(key))
        assert progress.status_code == 503
        assert progress.json()["detail"].startswith("the service is not ready: ")
        assert "medai campaign init" in progress.json()["detail"]
