"""Watching the served model: a shifted input population raises the drift status; an
unshifted one does not.

The tiny champion (:mod:`tests.utils.served_model`) is trained on the synthetic campaign's
three sites (vendor profiles FUJIFILM CR, SIEMENS DX, Philips DX); its run logs the
monitoring reference. The service is then sent new synthetic studies: of the same three
sites (another seed) by one clinician key, and of a fourth site only (the generator's
fourth vendor profile, Agfa CR) by another. The service knows a study's site by the
caller's key, so the two keys are two sites.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medai.config import Settings
from medai.dicom.synth import generate
from medai.serving.app import create_app
from medai.serving.monitoring.monitor import DriftMonitor
from medai.training.reference_features import REFERENCE_ARTIFACT
from tests.serving.helpers import TestClient, bearer, new_key
from tests.utils.served_model import Champion, shared_champion, wait_ready

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DICOM = {"Content-Type": "application/dicom"}
WINDOW, MIN_SAMPLES = 40, 20


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


@pytest.fixture(scope="module")
def populations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """``same``: 30 radiographs of the training sites; ``shifted``: 30 of a fourth vendor."""
    root = tmp_path_factory.mktemp("populations")
    same = generate(
        root / "same", studies=30, seed=23, image_size=32, ct_slices=0, difficulty="tiny"
    )
    other = generate(
        root / "other",
        studies=120,
        seed=29,
        sites=("site-a", "site-b", "site-c", "site-d"),
        image_size=32,
        ct_slices=0,
        difficulty="tiny",
    )
    return {
        "same": [r.files[0] for r in same.study_records],
        "shifted": [r.files[0] for r in other.study_records if r.site == "site-d"],
    }


@pytest.fixture
def served(campaign: Settings, champion: Champion) -> Iterator[tuple[TestClient, Settings]]:
    settings = champion.serving_settings(
        campaign, model_poll_seconds=0.0, drift_window=WINDOW, drift_min_samples=MIN_SAMPLES
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, settings


def _monitoring(client: TestClient, key: str, name: str) -> dict[str, object]:
    response = client.get(f"/v1/models/{name}/monitoring", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_the_run_logs_a_reference_of_its_inputs_and_scores(champion: Champion) -> None:
    # Both URIs: a registry URI set by an earlier test in this worker must not be used.
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run_id = client.get_model_version(champion.name, champion.versions[0]).run_id
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=champion.tracking_uri
    )
    reference = json.loads(Path(path).read_text())
    inputs = reference["inputs"]
    assert inputs["images"] == 30  # every split of the tiny snapshot
    assert sum(inputs["categorical"]["manufacturer"].values()) == 30
    assert len(inputs["categorical"]["manufacturer"]) == 3  # the three sites' vendors
    assert len(inputs["numeric"]["intensity_mean"]) == 30
    assert len(inputs["numeric"]["pixel_spacing"]) == 30
    assert sum(inputs["histogram"]["counts"]) == 30 * 32 * 32
    # Scores of the validation and test images only: fewer than the inputs.
    for values in reference["scores"].values():
        assert 0 < len(values) < 30
        assert all(0.0 <= v <= 1.0 for v in values)


@SQLITE
def test_a_shifted_population_drifts_and_an_unshifted_one_does_not(
    served: tuple[TestClient, Settings],
    champion: Champion,
    populations: dict[str, list[Path]],
) -> None:
    client, settings = served
    same_key = new_key(settings, "clinician", "ward-same")
    shifted_key = new_key(settings, "clinician", "ward-shifted")
    assert len(populations["shifted"]) >= MIN_SAMPLES

    def send(key: str, files: list[Path]) -> None:
        for path in files:
            response = client.post(
                "/v1/predict", content=path.read_bytes(), headers=bearer(key) | DICOM
            )
            assert response.status_code == 200, response.text

    send(same_key, populations["same"][: MIN_SAMPLES - 1])
    early = _monitoring(client, same_key, champion.name)
    assert early["baseline"] is True
    assert early["status"] == "unknown"  # too few predictions yet

    send(same_key, populations["same"][MIN_SAMPLES - 1 :])
    unshifted = _monitoring(client, same_key, champion.name)
    assert unshifted["status"] == "ok", json.dumps(unshifted["overall"], indent=1)
    sites = unshifted["sites"]
    assert isinstance(sites, dict) and set(sites) == {"ward-same"}
    assert sites["ward-same"]["status"] == "ok"

    send(shifted_key, populations["shifted"])
    report = _monitoring(client, shifted_key, champion.name)
    sites = report["sites"]
    assert isinstance(sites, dict)
    assert sites["ward-same"]["status"] == "ok"
    shifted = sites["ward-shifted"]
    assert shifted["status"] == "drift", json.dumps(shifted, indent=1)
    drifting = {f["feature"] for f in shifted["features"] if f["status"] == "drift"}
    assert "manufacturer" in drifting
    assert report["status"] == "drift"  # the overall window holds the shifted studies too

    metrics = client.get("/metrics", headers=bearer(same_key)).text
    labels = f'model="{champion.name}",site="ward-shifted",version="1"'
    assert f"medai_model_drift_status{{{labels}}} 3.0" in metrics
    labels = f'model="{champion.name}",site="ward-same",version="1"'
    assert f"medai_model_drift_status{{{labels}}} 1.0" in metrics
    assert 'feature="manufacturer"' in metrics

    # The dashboard shows it to the operator (a steward's session), in their language.
    steward = new_key(settings, "steward", "operator")
    signed = client.post("/dashboard/login", data={"key": steward}, follow_redirects=False)
    assert signed.status_code == 303
    page = client.get("/dashboard").text
    assert 'data-panel="monitoring"' in page
    assert '<tr data-site="ward-shifted"><td>ward-shifted</td><td><span data-status="drift"' in page
    assert '<tr data-site="ward-same"><td>ward-same</td><td><span data-status="ok"' in page
    assert "manufacturer" in page
    assert "trôi lệch" in client.get("/dashboard?lang=vi").text

    # The windows are kept in the catalog: another worker, or the service restarted, sees
    # the same statuses.
    with TestClient(create_app(settings)) as again:
        wait_ready(again)
        restarted = _monitoring(again, same_key, champion.name)
    assert restarted["status"] == "drift"
    sites = restarted["sites"]
    assert isinstance(sites, dict)
    assert {site: group["status"] for site, group in sites.items()} == {
        "ward-same": "ok",
        "ward-shifted": "drift",
    }


@SQLITE
def test_monitoring_of_another_model_is_404(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    key = new_key(settings, "clinician", "ward")
    response = client.get("/v1/models/not-served/monitoring", headers=bearer(key))
    assert response.status_code == 404
    assert "serves" in response.json()["detail"]


@SQLITE
def test_a_version_without_a_reference_has_no_baseline(
    champion: Champion, campaign: Settings
) -> None:
    """A run logged before monitoring existed: unknown, never ok, and says why."""
    mlflow.set_tracking_uri(champion.tracking_uri)
    with mlflow.start_run() as run:
        mlflow.log_param("old", "yes")
    settings = champion.serving_settings(campaign)
    from medai.catalog.db import create_engine_for

    engine = create_engine_for(settings.resolved_database_url)
    monitor = DriftMonitor(settings, engine)
    reference, problem = monitor.reference(run.info.run_id)
    assert reference is None
    assert problem is not None and "no baseline" in problem
    report = monitor.report(champion.name, "old", run.info.run_id)
    assert report["status"] == "unknown"
    assert report["baseline"] is False
    engine.dispose()
