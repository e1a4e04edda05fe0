"""The served version follows the ``champion`` alias, under load, without dropping requests.

This module trains its own champion (version 1) and a second version (2), since it moves
the alias. Requests sent while the alias moves all succeed, each answered by one version
whose outputs it matches exactly; an admin can make the switch at once; a version that
cannot load leaves the old one serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.inference.audit import SWITCH_ACTION
from tests.serving.helpers import bearer, new_key
from tests.utils.served_model import (
    Champion,
    ThreadedServer,
    reference_probabilities,
    train_champion,
    wait_ready,
)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DICOM = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champion]:
    trained = train_champion(tmp_path_factory.mktemp("switch-champion"))
    trained.train_version(seed=8)  # version 2, "candidate"
    yield trained


def _switches(settings: Settings) -> list[tuple[str, dict[str, object]]]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                select(AuditRecord)
                .where(AuditRecord.action == SWITCH_ACTION)
                .order_by(AuditRecord.seq)
            )
            return [(row.actor, dict(row.details)) for row in rows]
    finally:
        engine.dispose()


def _served_version(client: object, key: str) -> str:
    response = client.get("/v1/models", headers=bearer(key))  # type: ignore[attr-defined]
    (model,) = response.json()["models"]
    return str(model["version"])


def test_the_alias_moves_under_load_without_errors(campaign: Settings, champion: Champion) -> None:
    champion.promote("1")
    settings = champion.serving_settings(campaign, model_poll_seconds=0.3)
    key = new_key(settings, "clinician")
    files: list[Path] = [study[0] for study in champion.radiographs[:3]]
    expected = {
        version: reference_probabilities(champion, version, files) for version in ("1", "2")
    }
    stop = threading.Event()
    seen: list[list[tuple[int, str, int, list[float]]]] = [[] for _ in files]

    with ThreadedServer(create_app(settings)) as server:
        with server.client() as probe:
            wait_ready(probe)
            assert _served_version(probe, key) == "1"

        def load(index: int) -> None:
            with server.client(headers=bearer(key)) as client:
                data = files[index].read_bytes()
                while not stop.is_set():
                    response = client.post("/v1/predict", content=data, headers=DICOM)
                    body = response.json()
                    version = body["model"]["version"] if response.status_code == 200 else ""
                    scores = [f["probability"] for f in body.get("findings", [])]
                    seen[index].append((response.status_code, version, index, scores))

        threads = [threading.Thread(target=load, args=(i,)) for i in range(len(files))]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            champion.promote("2")  # the alias moves while requests keep coming
            with server.client() as probe:
                deadline = time.monotonic() + 60
                while _served_version(probe, key) != "2":
                    assert time.monotonic() < deadline, "the service never switched"
                    time.sleep(0.1)
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)

    answers = [answer for thread in seen for answer in thread]
    assert answers and all(status == 200 for status, *_ in answers), answers[:5]
    assert {version for _, version, _, _ in answers} == {"1", "2"}
    for thread in seen:
        versions = [version for _, version, _, _ in thread]
        assert versions == sorted(versions)  # never back to the old version
    for _, version, index, scores in answers:
        # Each answer is wholly one version's: its outputs, not a mixture.
        assert scores == pytest.approx(expected[version][index].tolist(), abs=1e-5)
    assert not torch.allclose(expected["1"], expected["2"])  # the versions differ
    assert _switches(settings) == [
        ("system:serve", {"version": "1", "previous": None, "alias": "champion"}),
        ("system:serve", {"version": "2", "previous": "1", "alias": "champion"}),
    ]


def test_an_admin_switches_at_once_and_a_broken_version_is_not_served(
    campaign: Settings, champion: Champion
) -> None:
    champion.promote("2")
    settings = champion.serving_settings(campaign, model_poll_seconds=0.0)  # no polling
    keys = {role: new_key(settings, role, f"{role}-1") for role in ("clinician", "admin")}
    data = champion.radiographs[0][0].read_bytes()
    with ThreadedServer(create_app(settings)) as server, server.client() as client:
        wait_ready(client)
        assert _served_version(client, keys["clinician"]) == "2"
        champion.promote("1")
        time.sleep(0.5)
        assert _served_version(client, keys["clinician"]) == "2"  # not polled
        reload = "/v1/models/reload"
        assert client.post(reload, headers=bearer(keys["clinician"])).status_code == 403
        switched = client.post(reload, headers=bearer(keys["admin"]))
        assert switched.json() == {"previous": "2", "current": "1", "changed": True}
        same = client.post(reload, headers=bearer(keys["admin"]))
        assert same.json() == {"previous": "1", "current": "1", "changed": False}
        assert _served_version(client, keys["clinician"]) == "1"

        # A version whose run has no weights (not trained by medai): it cannot load.
        uri = champion.tracking_uri
        mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = mlflow.get_experiment_by_name(champion.name)
        assert experiment is not None
        run = mlflow.create_run(experiment.experiment_id)
        mlflow.set_terminated(run.info.run_id)
        broken = mlflow.create_model_version(
            champion.name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        mlflow.set_registered_model_alias(champion.name, "champion", broken.version)
        refused = client.post(reload, headers=bearer(keys["admin"]))
        assert refused.status_code == 503
        detail = refused.json()["detail"]
        assert "weights/best.pt" in detail and "still serving version 1" in detail
        predicted = client.post(
            "/v1/predict", content=data, headers=bearer(keys["clinician"]) | DICOM
        )
        assert predicted.status_code == 200 and predicted.json()["model"]["version"] == "1"
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics", headers=bearer(keys["admin"])).text
        assert "medai_model_load_failures_total 1.0" in metrics
    assert _switches(settings)[-1] == (
        "apikey:admin-1",
        {"version": "1", "previous": "2", "alias": "champion"},
    )
