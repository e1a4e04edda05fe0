"""``/readyz`` of an inference-only deployment and of a campaign deployment, with a real model.

An inference-only service (``MEDAI_SERVE_CAMPAIGN=false``) is ready once its catalog (API
keys, audit log) is migrated and the model is loaded: no campaign, no campaign key. A
campaign service with the same model still needs its campaign and key, as before.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import pydicom
import pytest

from medai.catalog.db import upgrade
from medai.config import Settings
from medai.serving.app import create_app
from tests.serving.helpers import ServeProcess, TestClient, bearer, new_key
from tests.utils.campaign import init_example_campaign
from tests.utils.served_model import Champion, shared_champion, wait_ready

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ROOT = "1.2.826.0.1.9999999.77"
"""An organisation's UID root, for the test (not a registered one)."""
DICOM = "application/dicom"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


def _model_loaded(client: TestClient, timeout: float = 120.0) -> None:
    """Wait until the app's model is loaded (whatever else /readyz checks)."""
    inference = client.app.state.inference  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while inference.holder.current is None:
        assert time.monotonic() < deadline, inference.problem()
        time.sleep(0.1)


def _not_ready(client: TestClient) -> str:
    response = client.get("/readyz")
    assert response.status_code == 503, response.json()
    assert response.json()["status"] == "not-ready"
    return str(response.json()["detail"])


def test_the_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDAI_SERVE_CAMPAIGN", raising=False)
    assert Settings().serve_campaign is True  # a campaign deployment unless said otherwise
    monkeypatch.setenv("MEDAI_SERVE_CAMPAIGN", "false")
    assert Settings().serve_campaign is False


@SQLITE
def test_an_inference_only_service_is_ready_with_the_model_and_no_campaign(
    settings: Settings, champion: Champion
) -> None:
    served = champion.serving_settings(
        settings, serve_campaign=False, model_poll_seconds=0.0, org_uid_root=ROOT
    )
    with TestClient(create_app(served)) as client:
        # No catalog at all: it says how an inference-only service gets one.
        detail = _not_ready(client)
        assert "medai keys create" in detail and "campaign init" not in detail

        key = new_key(served, "clinician")  # migrates the catalog; still no campaign
        wait_ready(client)
        assert client.get("/readyz").json() == {"status": "ready"}
        assert not served.resolved_key_file.exists()  # no campaign key was ever needed
        # Ready means it predicts: the loaded model answers, as an SR under the org's root.
        models = client.get("/v1/models", headers=bearer(key)).json()["models"]
        assert [m["name"] for m in models] == [champion.name]
        data = champion.radiographs[0][0].read_bytes()
        headers = bearer(key) | {"Content-Type": DICOM, "Accept": DICOM}
        answer = client.post("/v1/predict", content=data, headers=headers)
        assert answer.status_code == 200, answer.text
        sr = pydicom.dcmread(io.BytesIO(answer.content))
        for uid in (sr.SeriesInstanceUID, sr.SOPInstanceUID):
            assert uid.startswith(ROOT + "."), uid
        # The same prediction again, by its id: the same SR (the same UIDs).
        again = client.get(
            f"/v1/predictions/{answer.headers['Medai-Prediction-Id']}",
            headers=bearer(key) | {"Accept": DICOM},
        )
        assert again.content == answer.content


@SQLITE
def test_an_inference_only_service_still_needs_a_migrated_catalog_and_its_model(
    settings: Settings,
) -> None:
    # A model that is not in the registry: the catalog is fine, the model is what is missing.
    served = settings.model_copy(
        update={"serve_campaign": False, "serve_model": "no-such-model", "model_poll_seconds": 0}
    )
    upgrade(served.resolved_database_url)
    with TestClient(create_app(served)) as client:
        for _ in range(100):  # the first load attempt runs in the background
            detail = _not_ready(client)
            if "no model is loaded yet" in detail and "MLflow" in detail:
                break
            time.sleep(0.1)
        assert "no model is loaded yet" in detail
        assert "campaign" not in detail


@SQLITE
def test_a_campaign_service_with_its_model_still_needs_the_campaign_and_its_key(
    settings: Settings, champion: Champion
) -> None:
    served = champion.serving_settings(settings, model_poll_seconds=0.0)
    assert served.serve_campaign  # the default
    upgrade(served.resolved_database_url)
    with TestClient(create_app(served)) as client:
        _model_loaded(client)
        assert "no campaign" in _not_ready(client)

        init_example_campaign(served)
        wait_ready(client)

        served.resolved_key_file.unlink()  # a lost key: never "ready" by guessing
        assert "key" in _not_ready(client)


@SQLITE
def test_a_service_of_neither_campaign_nor_model_is_never_ready(settings: Settings) -> None:
    upgrade(settings.resolved_database_url)
    nothing = settings.model_copy(update={"serve_campaign": False, "serve_model": ""})
    with TestClient(create_app(nothing)) as client:
        detail = _not_ready(client)
    assert "MEDAI_SERVE_CAMPAIGN" in detail and "MEDAI_SERVE_MODEL" in detail


@SQLITE
def test_medai_serve_no_campaign_needs_no_campaign(settings: Settings) -> None:
    """The command line's switch, through the real `medai serve` process."""

    def readyz(url: str) -> tuple[int, dict[str, str]]:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    new_key(settings, "clinician")  # a migrated catalog, no campaign
    # A model that is not there: the service is not ready for want of it, not of a campaign.
    no_model = {"MEDAI_SERVE_MODEL": "no-such-model", "MEDAI_MODEL_POLL_SECONDS": "0"}
    for args, expected in [((), "campaign init"), (("--no-campaign",), "no model is loaded")]:
        server = ServeProcess(no_model, *args)
        try:
            status, body = readyz(server.url)
        finally:
            server.stop()
        assert status == 503 and expected in body["detail"], (args, body)
