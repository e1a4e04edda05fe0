"""A gate that holds: a broken model is refused, a candidate is compared with the champion on
the same test cases, per-site floors, an override needs a reason and is on the record and the
version, and training refuses a snapshot without labels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from sqlalchemy import select
from typer.testing import CliRunner

import medai.training.data as training_data
from medai.audit import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.cli import app
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings, get_settings
from medai.dicom.synth import generate
from medai.errors import PromotionRefused, UnlabelledSnapshot
from medai.serving.inference.answers import model_out
from medai.serving.inference.model import load_served_model
from medai.snapshots import SnapshotQuery, create_snapshot
from medai.training.case_predictions import (
    CASES_ARTIFACT,
    label_column,
    probability_column,
    read_case_predictions,
)
from medai.training.config import load_model_config
from medai.training.data import LABEL_KEY
from medai.training.evaluation import auroc
from medai.training.gate import GateRules, evaluate_gate
from medai.training.registry import (
    CHAMPION_ALIAS,
    GATE_OVERRIDE_REASON_TAG,
    GATE_OVERRIDE_TAG,
    PROMOTE_ACTION,
    promote,
)
from medai.training.tracking import train_tracked
from tests.utils.campaign import init_example_campaign
from tests.utils.research import CAMPAIGN_KEY, LABELS, build_tiny_catalog, tiny_model_config

MODEL = "gate-triage"
# The configured absolute gate of the integration test's model. About 16 test studies give
# honest 95 % intervals too wide for any useful absolute bar (a good tiny model's nodule lower
# bound is about 0.2), so this test is about the comparison with the champion and the
# override (0.05, so that `--min-auroc-ci-low 0.0` is a lower bar); the absolute bound and
# the site floors are tested on simulated cases above.
GATE = 0.05

# -- the gate's checks on simulated per-case predictions ------------------------------------


def _cases(
    rng: np.random.Generator, n_studies: int, *, signal: float, sites: int = 1
) -> pd.DataFrame:
    """Per-case predictions of two images per study, scores separated by ``signal``."""
    rows: list[dict[str, Any]] = []
    truth = rng.random((n_studies, len(LABELS))) < 0.4
    for study in range(n_studies):
        for image in range(2):
            row: dict[str, Any] = {
                "row": 2 * study + image,
                "case": f"2.25.{study}.{image}",
                "study_uid": f"2.25.{study}",
                "patient": f"P{study}",
                "site": f"site-{'abc'[study % sites]}",
            }
            for k, label in enumerate(LABELS):
                row[probability_column(label)] = float(
                    1 / (1 + np.exp(-(signal * truth[study, k] + rng.normal())))
                )
                row[label_column(label)] = int(truth[study, k])
            rows.append(row)
    frame = pd.DataFrame(rows)
    for label in LABELS:
        frame[label_column(label)] = frame[label_column(label)].astype("Int8")
    return frame


def _shuffled_scores(cases: pd.DataFrame, seed: int) -> pd.DataFrame:
    broken = cases.copy()
    rng = np.random.default_rng(seed)
    for label in LABELS:
        broken[probability_column(label)] = rng.permutation(broken[probability_column(label)])
    return broken


def test_a_model_compared_with_itself_is_not_worse() -> None:
    cases = _cases(np.random.default_rng(0), 60, signal=1.0)
    rules = GateRules(min_auroc_ci_low=0.0, site_min_positives=10_000)
    metrics = {f"test/auroc_low/{label}": 0.5 for label in LABELS}
    same = evaluate_gate(
        metrics, LABELS, rules, candidate_cases=cases, champion_cases=cases, champion="1"
    )
    assert same.passed
    for label in LABELS:
        diff = same.comparison[label]
        assert (diff.difference, diff.low, diff.high) == (0.0, 0.0, 0.0)
        studies = cases.groupby("study_uid", sort=True)
        assert diff.auroc_a == pytest.approx(
            auroc(
                studies[label_column(label)].max().to_numpy(dtype=float),
                studies[probability_column(label)].max().to_numpy(),
            )
        )


def test_a_worse_candidate_is_refused_on_the_shared_cases_only() -> None:
    rng = np.random.default_rng(1)
    champion = _cases(rng, 200, signal=3.0)
    rules = GateRules(min_auroc_ci_low=0.0, margin=0.02, site_min_positives=10_000)
    broken = _shuffled_scores(champion, 2)
    metrics = {f"test/auroc_low/{label}": 0.1 for label in LABELS}
    refused = evaluate_gate(
        metrics, LABELS, rules, candidate_cases=broken, champion_cases=champion, champion="1"
    )
    assert {(f.kind, f.label) for f in refused.failures} == {("champion", lb) for lb in LABELS}
    assert refused.shared_cases == 400
    assert all(refused.comparison[label].difference < -0.3 for label in LABELS)
    assert "AUROC minus champion version 1's on 400 shared test cases" in str(refused.failures[0])

    # The same model on the same cases is not worse; the cases only one run has do not count.
    extra = _cases(np.random.default_rng(9), 50, signal=0.0)
    extra["case"] = "other." + extra["case"]
    extra["study_uid"] = "other." + extra["study_uid"]
    candidate = pd.concat([champion, extra], ignore_index=True)
    passed = evaluate_gate(
        metrics, LABELS, rules, candidate_cases=candidate, champion_cases=champion, champion="1"
    )
    assert passed.passed and passed.shared_cases == 400

    # A case relabelled since the champion's run is left out (one truth for both).
    relabelled = champion.copy()
    first = label_column(LABELS[0])
    relabelled.loc[relabelled["study_uid"] == "2.25.0", first] = (
        1 - relabelled.loc[relabelled["study_uid"] == "2.25.0", first]
    )
    kept = evaluate_gate(
        metrics, LABELS, rules, candidate_cases=relabelled, champion_cases=champion, champion="1"
    )
    diff = kept.comparison[LABELS[0]]
    assert diff.positives + diff.negatives == 199  # 200 studies, one left out

    # Nothing shared, or a champion without per-case predictions: the comparison fails.
    unmeasured = evaluate_gate(
        metrics, LABELS, rules, candidate_cases=extra, champion_cases=champion, champion="1"
    )
    assert [f.kind for f in unmeasured.failures] == ["champion"] * len(LABELS)
    assert "cannot be compared with champion version 1" in str(unmeasured.failures[0])
    old = evaluate_gate(metrics, LABELS, rules, candidate_cases=champion, champion="1")
    assert len(old.failures) == len(LABELS)


def test_site_floors_apply_where_a_site_has_enough_positives() -> None:
    cases = _cases(np.random.default_rng(3), 180, signal=3.0, sites=3)
    label = LABELS[0]
    per_site = cases.drop_duplicates("study_uid")
    positives = per_site[per_site[label_column(label)] == 1].groupby("site").size()
    assert (positives >= 10).all()  # every site has enough positives of the first label
    metrics = {f"test/auroc_low/{lb}": 0.8 for lb in LABELS}
    metrics |= {f"test/site/site-{s}/auroc_low/{lb}": 0.7 for s in "abc" for lb in LABELS}
    metrics[f"test/site/site-b/auroc_low/{label}"] = 0.4
    rules = GateRules(min_auroc_ci_low=0.7, site_floor=0.5, site_min_positives=10)
    decision = evaluate_gate(metrics, LABELS, rules, candidate_cases=cases)
    assert [(f.kind, f.label, f.site) for f in decision.failures] == [("site", label, "site-b")]
    assert f"{label} at site-b: lower CI bound of AUROC 0.400 < 0.500" in str(decision.failures[0])
    # With too few positives a site is not checked, and the floor never exceeds the gate.
    few = GateRules(min_auroc_ci_low=0.7, site_floor=0.5, site_min_positives=1000)
    assert evaluate_gate(metrics, LABELS, few, candidate_cases=cases).passed
    low_gate = GateRules(min_auroc_ci_low=0.3, site_floor=0.5, site_min_positives=10)
    assert evaluate_gate(metrics, LABELS, low_gate, candidate_cases=cases).passed


# -- end to end: train, promote, a broken model, an override -------------------------------


@dataclass
class Campaign:
    settings: Settings
    root: Path


@pytest.fixture
def campaign(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Campaign]:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MEDAI_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    yield Campaign(settings.model_copy(update={"mlflow_tracking_uri": uri}), tmp_path)
    get_settings.cache_clear()


def _model_dir(root: Path, snapshot: str, epochs: int) -> Path:
    text = tiny_model_config(MODEL, snapshot, epochs=epochs).replace(
        "min_auroc_ci_low = 0.0", f"min_auroc_ci_low = {GATE}"
    )
    model_dir = root / "models" / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.toml").write_text(text, encoding="utf-8")
    return model_dir


def _promotions(settings: Settings) -> list[AuditRecord]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert verify_audit_chain(session).ok
            query = select(AuditRecord).where(AuditRecord.action == PROMOTE_ACTION)
            return list(session.scalars(query.order_by(AuditRecord.seq)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_training_refuses_a_snapshot_without_labels(campaign: Campaign) -> None:
    settings, root = campaign.settings, campaign.root
    synth = generate(root / "synth", studies=20, seed=4, image_size=32, ct_slices=0)
    # A fixed campaign key, so the keyed splits of these few patients are the same every run
    # (with a random key the test split of a few studies can come out empty).
    key = settings.resolved_key_file
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(CAMPAIGN_KEY + "\n", encoding="ascii")
    key.chmod(0o600)
    init_example_campaign(settings)
    IngestPipeline.from_settings(settings).ingest_many(
        [Offer(p.read_bytes(), r.site, "folder") for r in synth.study_records for p in r.files]
    )
    # Every study, no sheet imported: every finding column is <NA>.
    create_snapshot(
        "unlabelled", SnapshotQuery(labelled_only=False), fractions=(0.34, 0.33, 0.33),
        settings=settings,
    )  # fmt: skip
    config = load_model_config(_model_dir(root, "unlabelled", epochs=1))
    with pytest.raises(UnlabelledSnapshot) as refused:
        train_tracked(config, settings, device="cpu")
    message = str(refused.value)
    assert all(label in message for label in LABELS)
    assert "medai labels import" in message and "create a new snapshot" in message
    uri = settings.resolved_mlflow_tracking_uri
    # The registry named explicitly: an earlier test in this process may have set MLflow's
    # global registry URI to its own store.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_registered_models() == []  # nothing registered, no run logged
    out = CliRunner().invoke(app, ["train", str(root / "models" / MODEL), "--device", "cpu"])
    assert out.exit_code != 0 and "has no labels for the configured finding(s)" in out.output


def _shuffle_training_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next training learn noise: its training labels are permuted across images."""
    original = training_data.split_records

    def shuffled(*args: Any, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
        records = original(*args, **kwargs)
        train = records["train"]
        order = np.random.default_rng(0).permutation(len(train))
        labels = [train[i][LABEL_KEY] for i in order]
        for record, label in zip(train, labels, strict=True):
            record[LABEL_KEY] = label
        return records

    monkeypatch.setattr(training_data, "split_records", shuffled)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_broken_model_is_refused_and_an_override_is_on_the_record(campaign: Campaign) -> None:
    settings, root = campaign.settings, campaign.root
    torch.manual_seed(0)
    synth = generate(
        root / "synth", studies=64, seed=2, image_size=32, ct_slices=0, difficulty="tiny"
    )
    build_tiny_catalog(settings, synth, "gate")
    model_dir = _model_dir(root, "gate", epochs=10)
    good = train_tracked(load_model_config(model_dir), settings, device="cpu")
    client = MlflowClient(settings.resolved_mlflow_tracking_uri)

    # Per-case test predictions are logged, keyed by manifest row.
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    path = mlflow.artifacts.download_artifacts(
        run_id=good.run_id, artifact_path=CASES_ARTIFACT, dst_path=str(root / "cases")
    )
    cases = read_case_predictions(Path(path))
    assert list(cases.columns[:5]) == ["row", "case", "study_uid", "patient", "site"]
    test_instances = int(client.get_run(good.run_id).data.params["snapshot.test_instances"])
    assert len(cases) == test_instances and cases["case"].is_unique

    # The good model passes the gate and becomes champion (there was none to compare with).
    first = promote(MODEL, good.model_version, settings)
    assert not first.overridden

    # A model trained on shuffled labels is refused: absolute bound and comparison.
    broken_dir = _model_dir(root / "broken", "gate", epochs=2)
    with pytest.MonkeyPatch.context() as patch:
        _shuffle_training_labels(patch)
        broken = train_tracked(load_model_config(broken_dir), settings, device="cpu")
    with pytest.raises(PromotionRefused) as refused:
        promote(MODEL, broken.model_version, settings)
    kinds = {failure.kind for failure in refused.value.failures}
    assert "champion" in kinds, refused.value
    assert f"AUROC minus champion version {good.model_version}'s" in str(refused.value)
    champion = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert str(champion.version) == good.model_version

    runner = CliRunner()
    version = broken.model_version
    out = runner.invoke(app, ["models", "promote", MODEL, version])
    assert out.exit_code == 1, out.output
    assert "--override-gate --reason TEXT" in out.output
    out = runner.invoke(app, ["models", "promote", MODEL, version, "--min-auroc-ci-low", "0.0"])
    assert out.exit_code == 2 and "a lower bar is a gate override" in out.output
    out = runner.invoke(app, ["models", "promote", MODEL, version, "--override-gate"])
    assert out.exit_code == 2 and "needs --reason" in out.output
    assert len(_promotions(settings)) == 1  # nothing of the refusals moved or recorded

    reason = "pilot: labels under review, clinicians see every output"
    out = runner.invoke(
        app, ["models", "promote", MODEL, version, "--override-gate", "--reason", reason]
    )
    assert out.exit_code == 0, out.output
    assert "OVERRIDDEN" in out.output
    champion = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert str(champion.version) == version
    assert champion.tags[GATE_OVERRIDE_REASON_TAG] == reason
    record = _promotions(settings)[-1]
    gate = record.details["gate"]
    assert (gate["overridden"], gate["passed"], gate["reason"]) == (True, False, reason)
    assert gate["champion"] == good.model_version and gate["shared_cases"] == len(cases)
    assert gate["failures"] == json.loads(champion.tags[GATE_OVERRIDE_TAG])["failures"]

    # GET /v1/models shows the override with the served version.
    served = model_out(
        load_served_model(settings, name=MODEL, alias=CHAMPION_ALIAS, device=torch.device("cpu"))
    )
    assert served.version == version
    assert served.tags[GATE_OVERRIDE_REASON_TAG] == reason
    assert json.loads(served.tags[GATE_OVERRIDE_TAG])["reason"] == reason
