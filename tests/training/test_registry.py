"""The model registry's changes are audited: registration, promotion, a gate override, and
no change at all where there is no catalog to record it in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from medai.audit import actors, verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.config import Settings, get_settings
from medai.errors import CampaignNotSetUp, MedaiError, PromotionRefused
from medai.training.config import load_model_config
from medai.training.registry import (
    CANDIDATE_ALIAS,
    CHAMPION_ALIAS,
    GATE_OVERRIDE_AT_TAG,
    GATE_OVERRIDE_BY_TAG,
    GATE_OVERRIDE_REASON_TAG,
    GATE_OVERRIDE_TAG,
    PROMOTE_ACTION,
    REGISTER_ACTION,
    promote,
)
from medai.training.tracking import TrackedRun, train_tracked
from tests.utils.research import build_tiny_catalog, tiny_model_config, tiny_synth

MODEL = "tiny-audited"
# The configured gate is above what the tiny model reaches: only an override promotes it.
CONFIG = tiny_model_config(MODEL, "tiny", epochs=1).replace(
    "min_auroc_ci_low = 0.0", "min_auroc_ci_low = 0.999"
)


@pytest.fixture
def tracked(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, TrackedRun]]:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri})
    build_tiny_catalog(settings, tiny_synth(tmp_path / "synth"), "tiny")
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(CONFIG, encoding="utf-8")
    run = train_tracked(load_model_config(model_dir), settings, device="cpu", actor="user:ada")
    yield settings, run
    get_settings.cache_clear()


def _records(settings: Settings, action: str) -> list[Any]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert verify_audit_chain(session).ok
            query = select(AuditRecord).where(AuditRecord.action == action)
            return list(session.scalars(query.order_by(AuditRecord.seq)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_registration_promotion_and_gate_override_are_audited(
    tracked: tuple[Settings, TrackedRun], tmp_path: Path
) -> None:
    settings, run = tracked
    subject = f"models:/{MODEL}/{run.model_version}"
    [registered] = _records(settings, REGISTER_ACTION)
    assert (registered.actor, registered.subject) == ("user:ada", subject)
    details = registered.details
    assert (details["run_id"], details["alias"], details["snapshot"]) == (
        run.run_id,
        CANDIDATE_ALIAS,
        "tiny",
    )
    assert details["snapshot_hash"] == run.result.snapshot["content_hash"]

    # The configured gate refuses it: nothing changes, nothing is recorded.
    with pytest.raises(PromotionRefused):
        promote(MODEL, run.model_version, settings)
    assert _records(settings, PROMOTE_ACTION) == []

    # A bare lower threshold no longer walks around the gate, nor an override without a reason.
    with pytest.raises(MedaiError, match="lower bar is a gate override"):
        promote(MODEL, run.model_version, settings, min_auroc_ci_low=0.0)
    with pytest.raises(MedaiError, match="needs a reason"):
        promote(MODEL, run.model_version, settings, override_gate=True, reason="  ")
    assert _records(settings, PROMOTE_ACTION) == []

    # Without a catalog to record it in, the promotion is refused before the alias moves.
    elsewhere = settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'nowhere' / 'catalog.db'}"}
    )
    with pytest.raises(CampaignNotSetUp, match="medai campaign init"):
        promote(MODEL, run.model_version, elsewhere, override_gate=True, reason="pilot")
    client = MlflowClient(settings.resolved_mlflow_tracking_uri)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)

    # An override with a reason promotes it, on the record and on the version.
    reason = "pilot site visit: the clinicians review every output"
    result = promote(MODEL, run.model_version, settings, override_gate=True, reason=reason)
    assert result.overridden and (result.configured, result.required) == (0.999, 0.999)
    assert result.reason == reason
    champion = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert str(champion.version) == run.model_version
    override = json.loads(champion.tags[GATE_OVERRIDE_TAG])
    assert (override["by"], override["reason"]) == (actors.operator(), reason)
    assert any("lower CI bound of AUROC" in failure for failure in override["failures"])
    assert champion.tags[GATE_OVERRIDE_REASON_TAG] == reason
    assert champion.tags[GATE_OVERRIDE_BY_TAG] == actors.operator()
    assert champion.tags[GATE_OVERRIDE_AT_TAG] == override["at"]
    [promoted] = _records(settings, PROMOTE_ACTION)
    assert (promoted.actor, promoted.subject) == (actors.operator(), subject)
    gate = promoted.details["gate"]
    assert (gate["configured"], gate["used"], gate["overridden"]) == (0.999, 0.999, True)
    assert (gate["passed"], gate["reason"]) == (False, reason)
    assert gate["failures"] == override["failures"]
    assert promoted.details["previous"] is None
    assert promoted.details["ci_low"] == pytest.approx(result.ci_low)

    # Each promotion is its own record, naming the champion it replaced.
    again = promote(
        MODEL, run.model_version, settings, override_gate=True, reason="again", actor="user:bo"
    )
    assert again.previous == run.model_version
    second = _records(settings, PROMOTE_ACTION)[-1]
    assert second.actor == "user:bo" and second.details["previous"] == run.model_version


def test_training_without_a_catalog_says_so_before_it_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"  # no `medai campaign init` ran there
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'catalog.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
    )
    model_dir = tmp_path / MODEL
    model_dir.mkdir()
    (model_dir / "config.toml").write_text(CONFIG, encoding="utf-8")
    with pytest.raises(CampaignNotSetUp, match="no catalog at .*medai campaign init"):
        train_tracked(load_model_config(model_dir), settings, device="cpu")
    assert not (home / "mlflow.db").exists()  # no run was started
    assert not (home / "catalog.db").exists()  # nor an empty catalog made by looking
