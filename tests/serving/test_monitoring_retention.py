"""Retention of ``served_predictions``: the monitor deletes expired records without feedback.

Records are aged by moving their ``created_at`` back; the monitor's clock of sweeps
(``monitor._monotonic``) is moved forward to pass an hour. Run on SQLite and PostgreSQL
(there the foreign key of ``prediction_feedback`` is enforced: a record with feedback
deleted by mistake would fail the sweep).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from medai.catalog.db import create_engine_for, upgrade
from medai.catalog.models import ServedPrediction
from medai.config import Settings
from medai.serving.monitoring import monitor as monitor_module
from medai.serving.monitoring.feedback import (
    Verdict,
    prune_served,
    record_feedback,
    served_prediction,
)
from medai.serving.monitoring.monitor import DriftMonitor, observation_of
from medai.training.reference_features import (
    HISTOGRAM_EDGES,
    REFERENCE_ARTIFACT,
    REFERENCE_FORMAT,
)

MODEL, VERSION, SITE, LABEL = "retained-model", "1", "ward-a", "effusion"
RETENTION_DAYS = 30


@dataclass
class _Model:
    name: str
    version: str
    run_id: str


@dataclass
class _Finding:
    label: str
    probability: float
    positive: bool


@dataclass
class _Prediction:
    """A served prediction as the predict route hands it to the monitor."""

    model: _Model
    source: Dataset
    images: Any
    findings: list[_Finding]
    owner: str = "clinician-key"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def _source() -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "SIEMENS"
    ds.PixelSpacing = [0.2, 0.2]
    return ds


def _prediction(rng: np.random.Generator, run_id: str) -> _Prediction:
    probability = float(rng.uniform(0.2, 0.8))
    return _Prediction(
        model=_Model(MODEL, VERSION, run_id),
        source=_source(),
        images=rng.uniform(0.0, 1.0, size=(1, 16, 16)),
        findings=[_Finding(LABEL, probability, probability >= 0.5)],
    )


def _reference(rng: np.random.Generator) -> dict[str, Any]:
    """A reference of the same population the test's predictions come from."""
    seen = [
        observation_of(p.source, p.images, {f.label: f.probability for f in p.findings})
        for p in (_prediction(rng, "") for _ in range(200))
    ]
    return {
        "format": REFERENCE_FORMAT,
        "inputs": {
            "images": len(seen),
            "categorical": {
                name: {seen[0].categorical[name]: len(seen)} for name in seen[0].categorical
            },
            "numeric": {
                name: [o.numeric[name] for o in seen]
                for name in ("pixel_spacing", "intensity_mean", "intensity_std")
            },
            "histogram": {
                "edges": list(HISTOGRAM_EDGES),
                "counts": np.sum([o.histogram for o in seen], axis=0).tolist(),
            },
        },
        "scores": {LABEL: [o.scores[LABEL] for o in seen]},
    }


@pytest.fixture
def served(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Engine, str, list[float]]]:
    """A migrated catalog, a run with a monitoring reference, and the sweeps' clock."""
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    configured = settings.model_copy(
        update={
            "serve_campaign": False,
            "monitoring_retention_days": RETENTION_DAYS,
            "drift_window": 50,
            "drift_min_samples": 5,
        }
    )
    client = MlflowClient(tracking_uri=configured.resolved_mlflow_tracking_uri)
    experiment = client.create_experiment(
        "retention", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    run = client.create_run(experiment)
    client.log_dict(run.info.run_id, _reference(np.random.default_rng(1)), REFERENCE_ARTIFACT)
    upgrade(configured.resolved_database_url)
    engine = create_engine_for(configured.resolved_database_url)
    clock = [1000.0]
    monkeypatch.setattr(monitor_module, "_monotonic", lambda: clock[0])
    try:
        yield configured, engine, run.info.run_id, clock
    finally:
        engine.dispose()


def _ids(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(ServedPrediction.prediction_id)))


def _age(engine: Engine, ids: list[str], days: float) -> None:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    with Session(engine) as session, session.begin():
        session.execute(
            update(ServedPrediction)
            .where(ServedPrediction.prediction_id.in_(ids))
            .values(created_at=at)
        )


def _observe(monitor: DriftMonitor, rng: np.random.Generator, run_id: str) -> str:
    prediction = _prediction(rng, run_id)
    monitor.observe(prediction, site=SITE, study=f"study-{prediction.id}")
    return prediction.id


def test_the_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDAI_MONITORING_RETENTION_DAYS", raising=False)
    assert Settings().monitoring_retention_days == 90
    monkeypatch.setenv("MEDAI_MONITORING_RETENTION_DAYS", "7")
    assert Settings().monitoring_retention_days == 7
    with pytest.raises(ValidationError):
        Settings(monitoring_retention_days=0)


def test_expired_records_without_feedback_go_hourly_and_the_windows_still_work(
    served: tuple[Settings, Engine, str, list[float]],
) -> None:
    settings, engine, run_id, clock = served
    monitor = DriftMonitor(settings, engine)
    rng = np.random.default_rng(2)
    made = [_observe(monitor, rng, run_id) for _ in range(12)]  # the first one swept: nothing
    assert _ids(engine) == set(made)

    expired, judged, recent = made[:5], made[5], made[6]
    _age(engine, [*expired, judged], days=RETENTION_DAYS + 10)
    _age(engine, [recent], days=RETENTION_DAYS - 1)
    served_record = served_prediction(engine, judged)
    assert served_record is not None
    record_feedback(
        engine, served_record, [Verdict(LABEL, agree=True)], diagnosis_code=None, actor="dr-a"
    )

    # Within the hour of the last sweep: nothing is deleted, whatever has expired.
    later = _observe(monitor, rng, run_id)
    assert _ids(engine) == {*made, later}

    clock[0] += monitor_module.PRUNE_INTERVAL_S
    last = _observe(monitor, rng, run_id)
    kept = _ids(engine)
    assert kept == {*made, later, last} - set(expired)
    assert judged in kept and recent in kept

    # The windows: the kept records, compared with the reference; the feedback is counted.
    report = monitor.report(MODEL, VERSION, run_id)
    assert report["baseline"] is True
    assert report["overall"]["predictions"] == len(kept) == 9
    assert report["sites"][SITE]["predictions"] == 9
    assert report["overall"]["status"] == "ok", report["overall"]["features"]
    assert report["feedback"] == {LABEL: {"agree": 1, "disagree": 0, "agreement": 1.0}}


def test_a_backlog_is_worked_off_in_bounded_sweeps(
    served: tuple[Settings, Engine, str, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, engine, run_id, clock = served
    monkeypatch.setattr(monitor_module, "PRUNE_BATCH", 2)
    monkeypatch.setattr(monitor_module, "PRUNE_MOST", 3)
    monitor = DriftMonitor(settings, engine)
    rng = np.random.default_rng(3)
    backlog = [_observe(monitor, rng, run_id) for _ in range(7)]
    _age(engine, backlog, days=RETENTION_DAYS + 1)

    def expired_left() -> int:
        return len(_ids(engine) & set(backlog))

    clock[0] += monitor_module.PRUNE_INTERVAL_S
    _observe(monitor, rng, run_id)
    assert expired_left() == 4  # at most PRUNE_MOST in one sweep
    _observe(monitor, rng, run_id)
    assert expired_left() == 4  # the next sweep is not due at once...
    clock[0] += monitor_module.PRUNE_CATCH_UP_S
    _observe(monitor, rng, run_id)
    assert expired_left() == 1  # ...but well before the hour, while there is a backlog
    clock[0] += monitor_module.PRUNE_CATCH_UP_S
    _observe(monitor, rng, run_id)
    assert expired_left() == 0  # this sweep found less than its bound: back to hourly

    straggler = _observe(monitor, rng, run_id)
    _age(engine, [straggler], days=RETENTION_DAYS + 1)
    clock[0] += monitor_module.PRUNE_CATCH_UP_S
    _observe(monitor, rng, run_id)
    assert straggler in _ids(engine)
    clock[0] += monitor_module.PRUNE_INTERVAL_S
    _observe(monitor, rng, run_id)
    assert straggler not in _ids(engine)


def test_prune_served_counts_what_it_deleted(
    served: tuple[Settings, Engine, str, list[float]],
) -> None:
    settings, engine, run_id, _clock = served
    monitor = DriftMonitor(settings, engine)
    rng = np.random.default_rng(4)
    made = [_observe(monitor, rng, run_id) for _ in range(5)]
    before = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)  # all of them have expired
    assert prune_served(engine, before, batch=2, most=100) == 5
    assert prune_served(engine, before, batch=2, most=100) == 0
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ServedPrediction)) == 0
    assert not _ids(engine) & set(made)
