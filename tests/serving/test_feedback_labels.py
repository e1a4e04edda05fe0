"""Clinician feedback exported as labels that `medai labels import` files on the catalog study.

A campaign deployment keeps, at prediction time, the study's research pseudonym (the UID
de-identification gave it at ingest); the export writes it in the column labels import
matches as it is. The clinician sends the identified file; nothing identifying is exported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import ServedPrediction, Study, StudyLabel
from medai.cli import app
from medai.collection.labels.rows import PSEUDONYMIZED_STUDY_UID
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings, get_settings
from medai.serving.app import create_app
from medai.training.feedback_export import export_feedback
from tests.serving.helpers import TestClient, bearer, new_key
from tests.utils.research import LABELS
from tests.utils.served_model import Champion, shared_champion, wait_ready

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DICOM = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


@pytest.fixture
def served(campaign: Settings, champion: Champion) -> Iterator[tuple[TestClient, Settings]]:
    settings = champion.serving_settings(campaign, model_poll_seconds=0.0)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, settings


def _invoke(settings: Settings, *args: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDAI_HOME", str(settings.resolved_home))
        patch.setenv("MEDAI_DATABASE_URL", settings.resolved_database_url)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, list(args))
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


@SQLITE
def test_disagreeing_feedback_becomes_the_catalog_studys_label(
    served: tuple[TestClient, Settings], champion: Champion
) -> None:
    client, settings = served
    files = champion.radiographs[0]
    # The study is in the research catalog, de-identified at ingest (site-a).
    IngestPipeline.from_settings(settings).ingest_many(
        [Offer(path.read_bytes(), "site-a", "folder") for path in files]
    )
    original = pydicom.dcmread(files[0])
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        (study,) = session.scalars(select(Study)).all()
        catalog_uid, study_id = study.study_uid, study.id
    assert catalog_uid != str(original.StudyInstanceUID)

    # A clinician sends the identified file, then disagrees on the first finding.
    key = new_key(settings, "clinician", "dr-a")
    response = client.post(
        "/v1/predict", content=files[0].read_bytes(), headers=bearer(key) | DICOM
    )
    assert response.status_code == 200, response.text
    body = response.json()
    positive = {f["label"]: f["positive"] for f in body["findings"]}
    verdict = {"findings": [{"finding": LABELS[0], "agree": False}]}
    response = client.post(
        f"/v1/predictions/{body['prediction_id']}/feedback", json=verdict, headers=bearer(key)
    )
    assert response.status_code == 201, response.text
    with session_factory(engine)() as session:
        served_row = session.get(ServedPrediction, body["prediction_id"])
        assert served_row is not None and served_row.research_study_uid == catalog_uid

    out = settings.resolved_home / "feedback.csv"
    _invoke(settings, "models", "feedback-export", champion.name, "--out", str(out))
    text = out.read_text()
    (row,) = list(csv.DictReader(text.splitlines()))
    assert row[PSEUDONYMIZED_STUDY_UID] == catalog_uid
    implied = "0" if positive[LABELS[0]] else "1"
    assert row[LABELS[0]] == implied and not row.get(LABELS[1])
    for phi in (
        str(original.StudyInstanceUID),
        str(original.SOPInstanceUID),
        str(original.PatientName),
        str(original.PatientID),
        str(original.get("AccessionNumber", "")) or "\x00",
    ):
        assert phi not in text, phi

    # Imported as a site-a sheet: matched as it is, not hashed a second time.
    output = _invoke(settings, "labels", "import", str(out), "--site", "site-a", "--json")
    summary = json.loads(output[output.index("{") :])
    assert summary["matched"] == 1, summary
    with session_factory(engine)() as session:
        labels = {
            label.finding: label.value
            for label in session.scalars(select(StudyLabel).where(StudyLabel.study_id == study_id))
        }
    engine.dispose()
    assert labels == {LABELS[0]: int(implied)}


@SQLITE
def test_inference_only_predictions_export_without_a_study(
    campaign: Settings, champion: Champion
) -> None:
    settings = champion.serving_settings(campaign, model_poll_seconds=0.0, serve_campaign=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        key = new_key(settings, "clinician", "dr-a")
        data = champion.radiographs[0][0].read_bytes()
        response = client.post("/v1/predict", content=data, headers=bearer(key) | DICOM)
        assert response.status_code == 200, response.text
        prediction = response.json()["prediction_id"]
        verdict = {"findings": [{"finding": LABELS[0], "agree": True}]}
        response = client.post(
            f"/v1/predictions/{prediction}/feedback", json=verdict, headers=bearer(key)
        )
        assert response.status_code == 201, response.text
    result = export_feedback(champion.name, settings.resolved_home / "f.csv", settings)
    assert result.rows == 1 and result.without_study == 1
    (row,) = list(csv.DictReader(result.path.open()))
    assert row[PSEUDONYMIZED_STUDY_UID] == ""
