"""POST /v1/predict and what follows it: findings, several instances, SR, heatmap, audit.

One tiny champion (32 px ResNet-18) is trained for the test process; each test gets its
own catalog, home and app. The model run directly (reader, evaluation transforms,
network rebuilt from MLflow) is the reference every prediction is compared with.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from sqlalchemy import select

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.collection.pseudonymize import load_key
from medai.config import Settings
from medai.serving.app import create_app
from medai.serving.inference.audit import PREDICT_ACTION, SWITCH_ACTION, study_hash
from tests.serving.helpers import ServeProcess, TestClient, bearer, multipart, new_key
from tests.utils.campaign import bad_inputs, dataset_bytes, init_example_campaign
from tests.utils.research import LABELS
from tests.utils.served_model import (
    Champion,
    reference_probabilities,
    shared_champion,
    study_of_two,
    wait_ready,
)

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DICOM = {"Content-Type": "application/dicom"}
CARD = "# Model card: tiny-triage\n\nA test model. Not for clinical use.\n"
ROLES = ("clinician", "steward", "admin")


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


@dataclass
class Served:
    client: TestClient
    settings: Settings
    keys: dict[str, str]

    def predict(self, data: bytes, role: str = "clinician", **headers: str) -> httpx.Response:
        sent = bearer(self.keys[role]) | DICOM | headers
        return self.client.post("/v1/predict", content=data, headers=sent)

    def get(self, path: str, role: str = "clinician", **headers: str) -> httpx.Response:
        return self.client.get(path, headers=bearer(self.keys[role]) | headers)


def serving_settings(
    campaign: Settings, champion: Champion, tmp_path: Path, **update: object
) -> Settings:
    """The test's catalog and home, serving the champion, with a model card to show."""
    models_dir = tmp_path / "models"
    (models_dir / champion.name).mkdir(parents=True, exist_ok=True)
    (models_dir / champion.name / "MODEL_CARD.md").write_text(CARD, encoding="utf-8")
    return champion.serving_settings(
        campaign, models_dir=models_dir, model_poll_seconds=0.0, **update
    )


def _serve(settings: Settings) -> Iterator[Served]:
    keys = {role: new_key(settings, role, f"{role}-1") for role in ROLES}
    keys["colleague"] = new_key(settings, "clinician", "clinician-2")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield Served(client, settings, keys)


@pytest.fixture
def served(campaign: Settings, champion: Champion, tmp_path: Path) -> Iterator[Served]:
    yield from _serve(serving_settings(campaign, champion, tmp_path))


def _thresholds(champion: Champion, version: str = "1") -> dict[str, float]:
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run = client.get_run(client.get_model_version(champion.name, version).run_id)
    return {label: run.data.metrics[f"val/threshold/{label}"] for label in LABELS}


def _probabilities(body: dict[str, object]) -> list[float]:
    findings = body["findings"]
    assert isinstance(findings, list)
    assert [finding["label"] for finding in findings] == list(LABELS)
    return [float(finding["probability"]) for finding in findings]


def _identifiers(data: bytes) -> list[str]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return [
        str(ds.PatientID),
        str(ds.PatientName),
        str(ds.StudyInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.AccessionNumber),
    ]


@SQLITE
def test_predictions_agree_with_the_model_run_directly(served: Served, champion: Champion) -> None:
    files = [study[0] for study in champion.radiographs[:6]]
    expected = reference_probabilities(champion, "1", files)
    thresholds = _thresholds(champion)
    for number, path in enumerate(files):
        data = path.read_bytes()
        response = served.predict(data, **{"Medai-Reference": f"worklist-{number}"})
        assert response.status_code == 200, response.text
        assert response.headers["Cache-Control"] == "no-store"
        body = response.json()
        assert body["reference"] == f"worklist-{number}"
        assert body["model"] == {"name": champion.name, "version": "1", "alias": "champion"}
        assert body["study"] == {"instances": 1}
        assert _probabilities(body) == pytest.approx(expected[number].tolist(), abs=1e-5)
        for finding in body["findings"]:
            assert finding["threshold"] == pytest.approx(thresholds[finding["label"]])
            assert finding["positive"] == (finding["probability"] >= finding["threshold"])
        assert body["heatmap_url"] == f"/v1/predictions/{body['prediction_id']}/heatmap.png"
        timing = body["timing_ms"]
        assert 0 <= timing["inference"] <= timing["total"] and timing["queue"] >= 0
        # No identifier of the study reaches the answer.
        assert not [value for value in _identifiers(data) if value and value in response.text]
        # The same answer again, by id.
        again = served.get(f"/v1/predictions/{body['prediction_id']}")
        assert again.status_code == 200 and again.json() == body

    query = served.client.post(
        "/v1/predict?reference=ward-7",
        content=files[0].read_bytes(),
        headers=bearer(served.keys["clinician"]) | DICOM,
    )
    assert query.json()["reference"] == "ward-7"
    assert served.predict(files[0].read_bytes()).json()["reference"] is None
    differ = served.client.post(
        "/v1/predict?reference=a",
        content=files[0].read_bytes(),
        headers=bearer(served.keys["clinician"]) | DICOM | {"Medai-Reference": "b"},
    )
    assert differ.status_code == 422 and "differ" in differ.json()["detail"]


@SQLITE
def test_a_study_of_several_instances_takes_the_highest_probability(
    served: Served, champion: Champion
) -> None:
    first, second = study_of_two(champion.radiographs[0][0], champion.radiographs[1][0])
    expected = reference_probabilities(champion, "1", [first, second]).max(dim=0).values
    body, content_type = multipart([first, second])
    response = served.client.post(
        "/v1/predict",
        content=body,
        headers=bearer(served.keys["clinician"]) | {"Content-Type": content_type},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["study"] == {"instances": 2}
    assert _probabilities(answer) == pytest.approx(expected.tolist(), abs=1e-5)

    heatmaps = [served.get(f"{answer['heatmap_url']}?instance={index}").content for index in (0, 1)]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in heatmaps)
    assert heatmaps[0] != heatmaps[1]  # each instance has its own image and map
    beyond = served.get(f"{answer['heatmap_url']}?instance=2")
    assert beyond.status_code == 422 and "0 to 1" in beyond.json()["detail"]

    other_study = champion.radiographs[2][0].read_bytes()
    mixed, content_type = multipart([first, other_study])
    refused = served.client.post(
        "/v1/predict",
        content=mixed,
        headers=bearer(served.keys["clinician"]) | {"Content-Type": content_type},
    )
    assert refused.status_code == 422
    assert "instance 2 belongs to another study" in refused.json()["detail"]


@SQLITE
def test_bad_inputs_are_refused_with_a_clear_json_message(
    served: Served, champion: Champion
) -> None:
    good = champion.radiographs[0][0].read_bytes()
    broken = bad_inputs(good)
    one_part, related = multipart([good])
    text_part, text_related = multipart([good], part_type="text/plain")
    cases: dict[str, tuple[bytes, dict[str, str], int, str]] = {
        "not DICOM": (broken["not-dicom"], DICOM, 422, "cannot be read as DICOM"),
        "truncated": (broken["truncated"], DICOM, 422, "cannot be read as DICOM"),
        "no image": (broken["unsupported-object"], DICOM, 422, "holds no image"),
        "empty": (b"", DICOM, 422, "cannot be read as DICOM"),
        "text": (good, {"Content-Type": "text/plain"}, 415, "application/dicom"),
        "form": (good, {"Content-Type": "multipart/form-data; boundary=x"}, 415, "multipart"),
        "no type": (good, {}, 415, "Content-Type"),
        "no boundary": (one_part, {"Content-Type": "multipart/related"}, 400, "boundary"),
        "text part": (text_part, {"Content-Type": text_related}, 415, "text/plain"),
        "cut short": (one_part[:-20], {"Content-Type": related}, 400, "closing boundary"),
        "bad reference": (good, DICOM | {"Medai-Reference": "a\tb"}, 422, "pattern"),
    }
    for why, (data, headers, status, words) in cases.items():
        sent = bearer(served.keys["clinician"]) | headers
        response = served.client.post("/v1/predict", content=data, headers=sent)
        assert response.status_code == status, (why, response.text)
        assert response.headers["content-type"].startswith("application/json"), why
        detail = response.json()["detail"]
        assert words in (detail if isinstance(detail, str) else json.dumps(detail)), (why, detail)
    # Nothing was predicted, so nothing was audited as a prediction.
    assert _audit(served.settings, PREDICT_ACTION) == []


@SQLITE
def test_an_upload_over_the_limit_is_refused_with_413(
    campaign: Settings, champion: Champion, tmp_path: Path
) -> None:
    settings = serving_settings(campaign, champion, tmp_path, max_predict_bytes=4096)
    for served in _serve(settings):
        data = champion.radiographs[0][0].read_bytes()
        body, content_type = multipart([data, data, data])
        assert len(body) > 4096
        response = served.client.post(
            "/v1/predict",
            content=body,
            headers=bearer(served.keys["clinician"]) | {"Content-Type": content_type},
        )
        assert response.status_code == 413
        assert "MEDAI_MAX_PREDICT_BYTES" in response.json()["detail"]


@SQLITE
def test_the_findings_as_a_dicom_sr_for_the_pacs(
    served: Served, champion: Champion, caplog: pytest.LogCaptureFixture
) -> None:
    data = champion.radiographs[0][0].read_bytes()
    source = pydicom.dcmread(io.BytesIO(data))
    caplog.set_level(logging.DEBUG)
    response = served.predict(data, Accept="application/dicom")
    # Building the report logs no identifier of the study, at any level.
    assert not [value for value in _identifiers(data) if value and value in caplog.text]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    prediction_id = response.headers["Medai-Prediction-Id"]
    sr = pydicom.dcmread(io.BytesIO(response.content))
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (IHE AIR)
    assert sr.StudyInstanceUID == source.StudyInstanceUID  # it goes back to the study
    assert sr.PatientID == source.PatientID
    assert sr.SOPInstanceUID != source.SOPInstanceUID

    # The same report again (same instance UID), and the JSON of the same prediction.
    again = served.get(f"/v1/predictions/{prediction_id}", Accept="application/dicom")
    assert again.status_code == 200 and again.content == response.content
    as_json = served.get(f"/v1/predictions/{prediction_id}")
    assert as_json.json()["prediction_id"] == prediction_id
    # JSON stays the default, and is chosen when preferred.
    preferred = served.get(
        f"/v1/predictions/{prediction_id}", Accept="application/json, application/dicom;q=0.5"
    )
    assert preferred.headers["content-type"].startswith("application/json")


@SQLITE
def test_heatmaps_are_for_their_caller_only(served: Served, champion: Champion) -> None:
    answer = served.predict(champion.radiographs[0][0].read_bytes()).json()
    url = answer["heatmap_url"]
    response = served.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["Cache-Control"] == "no-store"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.width > 0 and image.height > 0
    assert served.get(url, "admin").status_code == 200  # an admin may look
    colleague = served.get(url, "colleague")  # another clinician may not
    assert colleague.status_code == 404
    assert served.get(f"/v1/predictions/{answer['prediction_id']}", "colleague").status_code == 404
    assert served.get(url, "steward").status_code == 403
    unknown = served.get("/v1/predictions/not-a-prediction/heatmap.png")
    assert unknown.status_code == 404 and "kept for" in unknown.json()["detail"]


@SQLITE
def test_predictions_are_kept_for_a_limited_time_and_number(
    campaign: Settings, champion: Champion, tmp_path: Path
) -> None:
    settings = serving_settings(
        campaign, champion, tmp_path, prediction_ttl_seconds=3.0, max_kept_predictions=2
    )
    data = champion.radiographs[0][0].read_bytes()
    for served in _serve(settings):
        ids = [served.predict(data).json()["prediction_id"] for _ in range(3)]
        kept = [served.get(f"/v1/predictions/{pid}").status_code for pid in ids]
        assert kept == [404, 200, 200]  # only the two newest
        time.sleep(3.1)
        assert served.get(f"/v1/predictions/{ids[2]}").status_code == 404  # expired


@SQLITE
def test_models_lists_labels_thresholds_and_the_model_card(
    served: Served, champion: Champion
) -> None:
    response = served.get("/v1/models")
    assert response.status_code == 200
    (model,) = response.json()["models"]
    thresholds = _thresholds(champion)
    assert (model["name"], model["version"], model["alias"]) == (champion.name, "1", "champion")
    assert [entry["label"] for entry in model["labels"]] == list(LABELS)
    assert {e["label"]: e["threshold"] for e in model["labels"]} == pytest.approx(thresholds)
    assert model["input"] == {"image_size": [32, 32], "intensity": "scale"}
    assert model["network"] == "resnet18" and model["device"] == "cpu"
    # Which backend runs the forward pass, and why (its check at load), for the operator.
    assert model["backend"] in ("torch", "onnx", "onnx-int8")
    assert model["backend_reason"], model
    assert served.get("/v1/models", "steward").status_code == 403

    # The card is the card's text, then the metrics of the run of the version served.
    card = model["model_card"]
    assert card.startswith(CARD)
    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run = client.get_run(model["run_id"])
    metrics, params = run.data.metrics, run.data.params
    assert f"`{champion.name}` version 1" in card and model["run_id"] in card
    assert params["snapshot.name"] in card and params["snapshot.content_hash"] in card
    for label in LABELS:
        auroc = metrics.get(f"test/auroc/{label}")
        shown = "n/a" if auroc is None else f"{auroc:.3f}"
        ci = (
            f"{metrics[f'test/auroc_low/{label}']:.3f} – {metrics[f'test/auroc_high/{label}']:.3f}"
            if f"test/auroc_low/{label}" in metrics
            else "n/a"
        )
        threshold = f"{metrics[f'val/threshold/{label}']:.3f}"
        row = next(line for line in card.splitlines() if line.startswith(f"| {label} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert (cells[3], cells[4], cells[5]) == (shown, ci, threshold), row
        assert int(cells[1]) > 0  # n: the test split's labelled studies


def _audit(settings: Settings, action: str) -> list[AuditRecord]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)
            )
            return list(rows)
    finally:
        engine.dispose()


@SQLITE
def test_every_prediction_is_audited_under_a_keyed_hash(served: Served, champion: Champion) -> None:
    files = [study[0] for study in champion.radiographs[:2]]
    answers = [served.predict(path.read_bytes()).json() for path in files]
    key_file = served.settings.resolved_serving_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = load_key(key_file)
    records = _audit(served.settings, PREDICT_ACTION)
    assert len(records) == 2
    for record, path, answer in zip(records, files, answers, strict=True):
        ds = pydicom.dcmread(path)
        assert record.subject == study_hash(key, str(ds.StudyInstanceUID))
        assert record.actor == "apikey:clinician-1"
        details = record.details
        assert details["prediction"] == answer["prediction_id"]
        assert (details["model"], details["version"], details["instances"]) == (
            champion.name,
            "1",
            1,
        )
        for finding in answer["findings"]:
            logged = details["findings"][finding["label"]]
            assert logged["positive"] == finding["positive"]
            assert logged["probability"] == pytest.approx(finding["probability"], abs=1e-6)
        text = json.dumps(details) + str(record.subject)
        assert not [value for value in _identifiers(path.read_bytes()) if value in text]
    (switch,) = _audit(served.settings, SWITCH_ACTION)
    assert switch.details == {"version": "1", "previous": None, "alias": "champion"}
    engine = create_engine_for(served.settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert verify_audit_chain(session).ok
    finally:
        engine.dispose()


def _files_holding(roots: list[Path], needles: list[bytes], since: float) -> list[Path]:
    found = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    if path.stat().st_mtime < since or not path.is_file():
                        continue
                    content = path.read_bytes()
                except OSError:
                    continue
                if any(needle in content for needle in needles):
                    found.append(path)
    return found


@SQLITE
def test_the_input_is_never_written_to_disk(served: Served, champion: Champion) -> None:
    ds = pydicom.dcmread(champion.radiographs[3][0])
    # Identifiers no other file (or other test) has: any file holding them came from here.
    ds.PatientID = f"P{uuid.uuid4().hex}"
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    data = dataset_bytes(ds)
    needles = [str(ds.PatientID).encode(), str(ds.StudyInstanceUID).encode()]
    since = time.time() - 1
    answer = served.predict(data).json()
    assert served.get(answer["heatmap_url"]).status_code == 200
    assert served.predict(data, Accept="application/dicom").status_code == 200
    roots = [served.settings.resolved_home, Path(tempfile.gettempdir())]
    roots.append(Path(served.settings.resolved_database_url.removeprefix("sqlite:///")).parent)
    assert _files_holding(roots, needles, since) == []


def test_without_a_model_the_service_says_why(settings: Settings) -> None:
    # No MLflow database at all: the service starts, is not ready, and says what to do.
    key = new_key(settings, "clinician")
    init_example_campaign(settings)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        for _ in range(100):  # the first load attempt runs in the background
            detail = client.get("/readyz").json()["detail"]
            if "MLflow" in detail:
                break
            time.sleep(0.1)
        assert "no model is loaded yet" in detail and "medai train" in detail
        predict = client.post("/v1/predict", content=b"x", headers=bearer(key) | DICOM)
        assert predict.status_code == 503 and "medai train" in predict.json()["detail"]
        assert client.get("/v1/models", headers=bearer(key)).json() == {"models": []}
    collection_only = settings.model_copy(update={"serve_model": ""})
    with TestClient(create_app(collection_only)) as client:
        assert client.get("/readyz").status_code == 200
        predict = client.post("/v1/predict", content=b"x", headers=bearer(key) | DICOM)
        assert predict.status_code == 503 and "MEDAI_SERVE_MODEL" in predict.json()["detail"]


@pytest.mark.slow
@SQLITE
def test_medai_serve_with_two_workers_answers_curl(
    campaign: Settings, champion: Champion, tmp_path: Path
) -> None:
    key = new_key(campaign, "clinician", "curl-user")
    env = {
        "MEDAI_MLFLOW_TRACKING_URI": champion.tracking_uri,
        "MEDAI_SERVE_MODEL": champion.name,
        "MEDAI_INFERENCE_THREADS": "1",
    }
    server = ServeProcess(env, "--workers", "2", "--max-batch-size", "4")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            wait_ready(client, timeout=180)
        path = champion.radiographs[0][0]
        expected = reference_probabilities(champion, "1", [path])[0].tolist()
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--fail-with-body",
                "-H",
                f"Authorization: Bearer {key}",
                "-H",
                "Content-Type: application/dicom",
                "-H",
                "Medai-Reference: curl-1",
                "--data-binary",
                f"@{path}",
                f"{server.url}/v1/predict",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        body = json.loads(result.stdout)
        assert body["reference"] == "curl-1" and body["model"]["version"] == "1"
        assert _probabilities(body) == pytest.approx(expected, abs=1e-5)
        # One connection stays with one worker: its heatmap is found there.
        with httpx.Client(base_url=server.url, timeout=60, headers=bearer(key)) as client:
            # This connection may reach the other worker, still loading its model copy.
            wait_ready(client, timeout=180)
            response = client.post("/v1/predict", content=path.read_bytes(), headers=DICOM)
            assert response.status_code == 200, response.text
            assert client.get(response.json()["heatmap_url"]).status_code == 200
            metrics = client.get("/metrics").text
            info = f'alias="champion",model="{champion.name}",version="1"'
            assert f"medai_model_info{{{info}}} 1.0" in metrics
        refused = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/v1/models"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.stdout == "401"
    finally:
        output = server.stop()
    assert server.process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output


def test_the_prediction_store_expires_and_bounds_its_contents() -> None:
    import numpy as np
    import torch
    from pydicom.dataset import Dataset

    from medai.serving.inference.predictions import PredictionStore, StoredPrediction, header_only

    now = [100.0]
    store = PredictionStore(ttl_s=10.0, max_items=2, clock=lambda: now[0])

    def stored(prediction_id: str) -> StoredPrediction:
        return StoredPrediction(
            id=prediction_id,
            owner="clinician-1",
            model=None,  # type: ignore[arg-type]  # not read by the store
            findings=(),
            instance_probabilities=np.zeros((1, 3), np.float32),
            images=torch.zeros(1, 1, 4, 4),
            source=Dataset(),
            response={},
        )

    store.put(stored("a"))
    now[0] = 105.0
    store.put(stored("b"))
    assert store.get("a") is not None and len(store) == 2
    now[0] = 110.0  # "a" is 10 s old: gone; "b" is 5 s old
    assert store.get("a") is None and store.get("b") is not None
    store.put(stored("c"))
    store.put(stored("d"))  # beyond two: the oldest ("b") goes
    assert [store.get(key) is not None for key in "bcd"] == [False, True, True]
    store.clear()
    assert len(store) == 0

    ds = Dataset()
    ds.PatientID = "P1"
    ds.PixelData = b"\0" * 8
    header = header_only(ds)
    assert "PixelData" not in header and header.PatientID == "P1"
    assert "PixelData" in ds  # the source is left whole
