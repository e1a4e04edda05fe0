"""Clinician feedback: POST /v1/predictions/{id}/feedback, its agreement, audit and export."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, PredictionFeedback, ServedPrediction
from medai.cli import app
from medai.config import Settings, get_settings
from medai.serving.app import create_app
from medai.serving.monitoring.feedback import FEEDBACK_ACTION
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
    # Predictions leave memory after 1 s: feedback must not depend on them being there.
    settings = champion.serving_settings(
        campaign, model_poll_seconds=0.0, prediction_ttl_seconds=1.0
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, settings


def _predict(client: TestClient, key: str, champion: Champion, index: int = 0) -> dict[str, object]:
    data = champion.radiographs[index][0].read_bytes()
    response = client.post("/v1/predict", content=data, headers=bearer(key) | DICOM)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _rows(settings: Settings, model: type) -> list:  # type: ignore[type-arg]
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(model)))
    finally:
        engine.dispose()


def test_feedback_is_stored_pseudonymously_audited_and_counted(
    served: tuple[TestClient, Settings], champion: Champion
) -> None:
    client, settings = served
    key = new_key(settings, "clinician", "dr-a")
    body = _predict(client, key, champion)
    prediction = str(body["prediction_id"])
    findings = {f["label"]: f["positive"] for f in body["findings"]}  # type: ignore[attr-defined]
    time.sleep(1.2)  # the prediction has left memory
    assert client.get(f"/v1/predictions/{prediction}", headers=bearer(key)).status_code == 404

    sent = {
        "findings": [
            {"finding": LABELS[0], "agree": True},
            {"finding": LABELS[1], "agree": False},
        ],
        "diagnosis_code": "J91.8",
    }
    response = client.post(f"/v1/predictions/{prediction}/feedback", json=sent, headers=bearer(key))
    assert response.status_code == 201, response.text
    assert response.json() == {
        "prediction_id": prediction,
        "model": champion.name,
        "version": "1",
        "recorded": 2,
    }
    # The same clinician changes their mind on the second finding: replaced, not added.
    again = {"findings": [{"finding": LABELS[1], "agree": True}]}
    response = client.post(
        f"/v1/predictions/{prediction}/feedback", json=again, headers=bearer(key)
    )
    assert response.status_code == 201

    report = client.get(f"/v1/models/{champion.name}/monitoring", headers=bearer(key)).json()
    assert report["feedback"] == {
        LABELS[0]: {"agree": 1, "disagree": 0, "agreement": 1.0},
        LABELS[1]: {"agree": 1, "disagree": 0, "agreement": 1.0},
    }
    metrics = client.get("/metrics", headers=bearer(key)).text
    assert f'medai_model_feedback_agreement{{finding="{LABELS[0]}"' in metrics

    # Stored pseudonymously: the keyed study hash, never the UID.
    import pydicom

    uid = str(pydicom.dcmread(champion.radiographs[0][0]).StudyInstanceUID)
    (served_row,) = _rows(settings, ServedPrediction)
    assert served_row.prediction_id == prediction and served_row.owner == "dr-a"
    assert served_row.site == "dr-a"
    assert uid not in json.dumps(
        {c.name: str(getattr(served_row, c.name)) for c in ServedPrediction.__table__.columns}
    )
    assert len(served_row.study) == 64
    feedback = _rows(settings, PredictionFeedback)
    assert sorted((f.finding, f.agree, f.diagnosis_code) for f in feedback) == sorted(
        [(LABELS[0], True, "J91.8"), (LABELS[1], True, None)]
    )
    audits = [a for a in _rows(settings, AuditRecord) if a.action == FEEDBACK_ACTION]
    assert len(audits) == 2 and audits[0].subject == served_row.study
    assert audits[0].details["verdicts"] == {LABELS[0]: "agree", LABELS[1]: "disagree"}
    assert uid not in json.dumps([a.details for a in audits])
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        assert verify_audit_chain(session).ok
    engine.dispose()

    # Exported as labels: agreeing keeps the model's decision, disagreeing flips it.
    out = settings.resolved_home / "feedback.csv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDAI_HOME", str(settings.resolved_home))
        patch.setenv("MEDAI_DATABASE_URL", settings.resolved_database_url)
        get_settings.cache_clear()
        result = CliRunner().invoke(
            app, ["models", "feedback-export", champion.name, "--out", str(out), "--json"]
        )
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["rows"] == 1 and summary["verdicts"] == 2
    (row,) = list(csv.DictReader(out.open()))
    # The research pseudonym of the study (a campaign deployment), never the original UID.
    assert served_row.research_study_uid and served_row.research_study_uid != uid
    assert row["PseudonymizedStudyInstanceUID"] == served_row.research_study_uid
    assert row["clinician"] == "apikey:dr-a"
    assert row[LABELS[0]] == ("1" if findings[LABELS[0]] else "0")
    assert row[LABELS[1]] == ("1" if findings[LABELS[1]] else "0")
    assert row["diagnosis_code"] == "J91.8"
    assert uid not in out.read_text()


@SQLITE
def test_feedback_is_refused_clearly(
    served: tuple[TestClient, Settings], champion: Champion
) -> None:
    client, settings = served
    key = new_key(settings, "clinician", "dr-a")
    colleague = new_key(settings, "clinician", "dr-b")
    admin = new_key(settings, "admin", "boss")
    prediction = str(_predict(client, key, champion)["prediction_id"])
    url = f"/v1/predictions/{prediction}/feedback"
    good = {"findings": [{"finding": LABELS[0], "agree": True}]}

    unknown = client.post(
        "/v1/predictions/0b6f3c52-8a0e-4d7e-9c55-5f0f4b1b7c1e/feedback",
        json=good,
        headers=bearer(key),
    )
    assert unknown.status_code == 404 and "no prediction" in unknown.json()["detail"]
    # Someone else's prediction does not exist for them; an admin may.
    assert client.post(url, json=good, headers=bearer(colleague)).status_code == 404
    assert client.post(url, json=good, headers=bearer(admin)).status_code == 201

    bad_finding = {"findings": [{"finding": "fracture", "agree": True}]}
    refused = client.post(url, json=bad_finding, headers=bearer(key))
    assert refused.status_code == 422 and "no finding fracture" in refused.json()["detail"]
    bodies: list[dict[str, object]] = [
        {"findings": []},
        {"findings": [{"finding": LABELS[0], "agree": "maybe"}]},
        {"findings": [{"finding": LABELS[0], "agree": True}], "diagnosis_code": "pleural effusion"},
        {"findings": [{"finding": LABELS[0], "agree": True}], "patient": "Doe^John"},
    ]
    for body in bodies:
        assert client.post(url, json=body, headers=bearer(key)).status_code == 422, body
    malformed = client.post("/v1/predictions/not-a-uuid/feedback", json=good, headers=bearer(key))
    assert malformed.status_code == 422
