"""The model registry's changes of state, each audited: a version registered, a version promoted.

:func:`promote` moves the ``champion`` alias to a version whose run passes the gate
(:mod:`medai.training.gate`): every label's lower test AUROC bound at least the configured
``evaluation.min_auroc_ci_low`` (the value the run logged; a caller may only raise it),
per-site floors where a site has enough positives, and not significantly worse than the
current champion on the test cases both runs predicted. A version that fails can only be
promoted with ``override_gate`` and a reason: its audit record says so, with who overrode
it, why, and every check it failed, and the version carries the tags
``medai.gate_override`` (JSON), ``medai.gate_override_reason``, ``medai.gate_override_by``
and ``medai.gate_override_at``, which ``GET /v1/models`` shows.

Both changes are recorded in the audit chain of the catalog of the settings (the catalog the
trained snapshot came from); without a catalog there is nothing to record them in, so they
are refused with :class:`~medai.errors.CampaignNotSetUp` before anything changes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pytorch
import pandas as pd
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import catalog_state, create_engine_for
from medai.config import Settings, get_settings
from medai.errors import CampaignNotSetUp, GateFailure, MedaiError, PromotionRefused
from medai.training.case_predictions import CASES_ARTIFACT, read_case_predictions
from medai.training.gate import GateRules, evaluate_gate

__all__ = [
    "CANDIDATE_ALIAS",
    "CHAMPION_ALIAS",
    "GATE_OVERRIDE_AT_TAG",
    "GATE_OVERRIDE_BY_TAG",
    "GATE_OVERRIDE_REASON_TAG",
    "GATE_OVERRIDE_TAG",
    "PROMOTE_ACTION",
    "REGISTER_ACTION",
    "PromotionResult",
    "audit_registration",
    "check_gate",
    "configure_mlflow",
    "load_registered",
    "promote",
    "require_catalog",
]

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
GATE_PARAM = "evaluation.min_auroc_ci_low"
LABELS_PARAM = "data.labels"
CONFIDENCE_PARAM = "evaluation.confidence"
GATE_OVERRIDE_TAG = "medai.gate_override"
GATE_OVERRIDE_REASON_TAG = "medai.gate_override_reason"
GATE_OVERRIDE_BY_TAG = "medai.gate_override_by"
GATE_OVERRIDE_AT_TAG = "medai.gate_override_at"
REGISTER_ACTION = "model.register"
PROMOTE_ACTION = "model.promote"


@dataclass(frozen=True)
class PromotionResult:
    """A promotion: the version now ``champion``, and the one it replaced (if any).

    ``required`` is the absolute threshold the gate used, ``configured`` the one the run
    was trained with; ``overridden`` when the gate refused and was overridden for ``reason``.
    """

    name: str
    version: str
    previous: str | None
    ci_low: dict[str, float]
    required: float
    configured: float
    overridden: bool = False
    reason: str | None = None


def configure_mlflow(settings: Settings | None = None) -> str:
    """Point MLflow (tracking and registry) at the settings' tracking URI and return it."""
    settings = settings or get_settings()
    uri = settings.resolved_mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def require_catalog(settings: Settings) -> None:
    """Refuse to go on unless the catalog of ``settings`` can hold this change's audit record.

    Raises
    ------
    medai.errors.CampaignNotSetUp
        With one sentence that says what to run.
    """
    url = settings.resolved_database_url
    state = catalog_state(url)
    if state in ("ready", "no-campaign"):  # the audit log exists before any campaign
        return
    where = make_url(url).render_as_string(hide_password=True)
    why = "so this change of the model registry cannot be audited"
    if state == "unreachable":
        raise CampaignNotSetUp(
            f"the catalog {where} cannot be opened, {why}: start the database server "
            "or fix MEDAI_DATABASE_URL"
        )
    if state == "outdated":
        raise CampaignNotSetUp(
            f"the catalog {where} has an older schema than this medai, {why}: run "
            "`medai campaign init CAMPAIGN.toml` again to migrate it"
        )
    raise CampaignNotSetUp(
        f"there is no catalog at {where}, {why}: run `medai campaign init CAMPAIGN.toml` "
        "first, or point MEDAI_HOME or MEDAI_DATABASE_URL at the campaign's catalog"
    )


@contextmanager
def _catalog_transaction(settings: Settings) -> Iterator[Session]:
    """An audited transaction on the catalog of ``settings``, after :func:`require_catalog`."""
    require_catalog(settings)
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with audited_transaction(engine) as session:
            yield session
    finally:
        engine.dispose()


def audit_registration(
    settings: Settings,
    *,
    name: str,
    version: str,
    run_id: str,
    snapshot: Mapping[str, Any],
    actor: str | None = None,
) -> None:
    """Append the ``model.register`` record of a version just registered as ``candidate``.

    Parameters
    ----------
    settings
        Whose catalog holds the audit chain.
    name, version, run_id
        The registered model, its new version and the MLflow run that made it.
    snapshot
        The trained snapshot's catalog record (its ``name`` and ``content_hash`` are kept).
    actor
        Who trained it; :func:`medai.audit.actors.operator` by default.
    """
    with _catalog_transaction(settings) as session:
        append_audit(
            session,
            actor=actor or actors.operator(),
            action=REGISTER_ACTION,
            subject=f"models:/{name}/{version}",
            details={
                "model": name,
                "version": version,
                "run_id": run_id,
                "alias": CANDIDATE_ALIAS,
                "snapshot": snapshot.get("name"),
                "snapshot_hash": snapshot.get("content_hash"),
            },
        )


def check_gate(
    metrics: dict[str, float], labels: list[str], required: float, prefix: str = "test"
) -> tuple[dict[str, float], list[GateFailure]]:
    """Each label's lower AUROC bound from logged ``metrics``, and the labels that fail."""
    decision = evaluate_gate(metrics, labels, GateRules(required), prefix=prefix)
    return decision.ci_low, decision.failures


def _cases(run_id: str, uri: str, tmp: str) -> pd.DataFrame | None:
    """A run's per-case test predictions, or None when it logged none (an older run)."""
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CASES_ARTIFACT, dst_path=tmp, tracking_uri=uri
        )
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    return read_case_predictions(Path(path))


def _champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except mlflow.exceptions.MlflowException:
        return None


def promote(
    name: str,
    version: str | int,
    settings: Settings | None = None,
    *,
    min_auroc_ci_low: float | None = None,
    override_gate: bool = False,
    reason: str | None = None,
    actor: str | None = None,
) -> PromotionResult:
    """Move the ``champion`` alias of ``name`` to ``version`` if its run passes the gate.

    The move and its ``model.promote`` audit record happen under the audit chain's lock;
    the record names the previous champion, each label's lower bound, the comparison with
    the champion and the gate (``configured``, ``used``, ``passed``, ``overridden``, the
    failures and the reason).

    Parameters
    ----------
    name, version
        The registered model and version.
    settings
        Where the tracking server and the catalog are; also the gate's margin and site
        floor (``MEDAI_GATE_MARGIN``, ``MEDAI_GATE_SITE_FLOOR``).
    min_auroc_ci_low
        A stricter absolute gate than the run's ``evaluation.min_auroc_ci_low``; a lower
        one is refused (lowering the bar is an override: ``override_gate`` and ``reason``).
    override_gate
        Promote even if the gate refuses, on the record; needs ``reason``.
    reason
        Why the gate is overridden (kept in the audit record and on the version).
    actor
        Who promotes; :func:`medai.audit.actors.operator` by default.

    Raises
    ------
    PromotionRefused
        A check of the gate failed and it was not overridden; the alias is not moved.
    CampaignNotSetUp
        No catalog to record the promotion in; the alias is not moved.
    MedaiError
        An override without a reason, a threshold below the configured one, or a run
        that logged no gate.
    mlflow.exceptions.MlflowException
        No such model or version.
    """
    settings = settings or get_settings()
    reason = (reason or "").strip() or None
    if override_gate and reason is None:
        raise MedaiError(
            "overriding the promotion gate needs a reason: --override-gate --reason TEXT"
        )
    uri = configure_mlflow(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = str(version)
    model_version = client.get_model_version(name, version)
    if not model_version.run_id:
        raise MedaiError(f"{name} version {version} has no training run to read the gate from")
    run = client.get_run(model_version.run_id)
    params, metrics = run.data.params, dict(run.data.metrics)
    labels = [label for label in params.get(LABELS_PARAM, "").split(",") if label]
    configured = float(params.get(GATE_PARAM, "nan"))
    if not labels or math.isnan(configured):
        raise MedaiError(f"run {model_version.run_id} of {name} version {version} logged no gate")
    if min_auroc_ci_low is not None and min_auroc_ci_low < configured:
        raise MedaiError(
            f"{min_auroc_ci_low:g} is below the gate {name} version {version} was trained "
            f"with ({configured:g}): a lower bar is a gate override; use --override-gate "
            "--reason TEXT, which is audited and tagged on the version"
        )
    required = configured if min_auroc_ci_low is None else min_auroc_ci_low
    rules = GateRules(
        min_auroc_ci_low=required,
        margin=settings.gate_margin,
        site_min_positives=settings.gate_site_min_positives,
        site_floor=settings.gate_site_floor,
        confidence=float(params.get(CONFIDENCE_PARAM, "0.95")),
    )
    current = _champion(client, name)
    other = current if current is not None and str(current.version) != version else None
    with tempfile.TemporaryDirectory(prefix="medai-gate-") as tmp:
        decision = evaluate_gate(
            metrics,
            labels,
            rules,
            candidate_cases=_cases(model_version.run_id, uri, f"{tmp}/candidate"),
            champion_cases=(
                None
                if other is None or not other.run_id
                else _cases(other.run_id, uri, f"{tmp}/champion")
            ),
            champion=None if other is None else str(other.version),
        )
    if not decision.passed and not override_gate:
        raise PromotionRefused(name, version, decision.failures)
    overridden = not decision.passed
    actor = actor or actors.operator()
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with _catalog_transaction(settings) as session:
        current = _champion(client, name)
        previous = None if current is None else str(current.version)
        # The record first (it takes the chain's write lock), the registry after: a failed
        # move rolls the record back, and only a failed commit could leave a move unrecorded.
        append_audit(
            session,
            actor=actor,
            action=PROMOTE_ACTION,
            subject=f"models:/{name}/{version}",
            details={
                "model": name,
                "version": version,
                "previous": previous,
                "run_id": model_version.run_id,
                # NaN (not measured) is not JSON: the audit chain records it as null.
                "ci_low": {k: None if math.isnan(v) else v for k, v in decision.ci_low.items()},
                "gate": {
                    "configured": configured,
                    "used": required,
                    "margin": rules.margin,
                    "site_floor": rules.effective_site_floor,
                    "site_min_positives": rules.site_min_positives,
                    "overridden": overridden,
                    "reason": reason if overridden else None,
                    **decision.to_record(),
                },
            },
        )
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        if overridden:
            assert reason is not None  # checked above: an override always has one
            failures = [str(failure) for failure in decision.failures]
            override = {"by": actor, "at": at, "reason": reason, "failures": failures}
            tags = {
                GATE_OVERRIDE_TAG: json.dumps(override),
                GATE_OVERRIDE_REASON_TAG: reason,
                GATE_OVERRIDE_BY_TAG: actor,
                GATE_OVERRIDE_AT_TAG: at,
            }
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
    return PromotionResult(
        name, version, previous, decision.ci_low, required, configured, overridden, reason
    )


def load_registered(
    name: str, alias: str = CANDIDATE_ALIAS, settings: Settings | None = None
) -> Any:
    """Load ``models:/<name>@<alias>`` as a torch module (for notebooks and checks)."""
    configure_mlflow(settings)
    return mlflow.pytorch.load_model(f"models:/{name}@{alias}")
