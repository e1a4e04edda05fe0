"""The model registry's changes of state, each audited: a version registered, a version promoted.

:func:`promote` moves the ``champion`` alias to a version whose run passes the gate: the
lower confidence bound of the test AUROC of every label at least the configured
``evaluation.min_auroc_ci_low`` (the value the run logged), or the threshold given instead.
A threshold below the configured one is a *gate override*: its audit record says so, with
who overrode it and both thresholds, and the version carries the tag ``medai.gate_override``.

Both changes are recorded in the audit chain of the catalog of the settings (the catalog the
trained snapshot came from); without a catalog there is nothing to record them in, so they
are refused with :class:`~medai.errors.CampaignNotSetUp` before anything changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import catalog_state, create_engine_for
from medai.config import Settings, get_settings
from medai.errors import CampaignNotSetUp, GateFailure, MedaiError, PromotionRefused

__all__ = [
    "CANDIDATE_ALIAS",
    "CHAMPION_ALIAS",
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
GATE_OVERRIDE_TAG = "medai.gate_override"
REGISTER_ACTION = "model.register"
PROMOTE_ACTION = "model.promote"


@dataclass(frozen=True)
class PromotionResult:
    """A promotion: the version now ``champion``, and the one it replaced (if any).

    ``required`` is the threshold the gate was passed with, ``configured`` the one the run
    was trained with; ``overridden`` when the first is lower.
    """

    name: str
    version: str
    previous: str | None
    ci_low: dict[str, float]
    required: float
    configured: float

    @property
    def overridden(self) -> bool:
        """Whether the gate was passed with a threshold below the configured one."""
        return self.required < self.configured


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
    lows: dict[str, float] = {}
    failures: list[GateFailure] = []
    for label in labels:
        low = float(metrics.get(f"{prefix}/auroc_low/{label}", math.nan))
        lows[label] = low
        if math.isnan(low) or low < required:
            failures.append(GateFailure(label, low, required))
    return lows, failures


def promote(
    name: str,
    version: str | int,
    settings: Settings | None = None,
    *,
    min_auroc_ci_low: float | None = None,
    actor: str | None = None,
) -> PromotionResult:
    """Move the ``champion`` alias of ``name`` to ``version`` if its run passes the gate.

    The move and its ``model.promote`` audit record happen under the audit chain's lock;
    the record names the previous champion, each label's lower bound and the gate
    (``configured``, ``used``, ``overridden``).

    Parameters
    ----------
    name, version
        The registered model and version.
    settings
        Where the tracking server and the catalog are.
    min_auroc_ci_low
        The gate; by default the value the run was trained with
        (``evaluation.min_auroc_ci_low``). A lower value overrides the gate, on the record.
    actor
        Who promotes; :func:`medai.audit.actors.operator` by default.

    Raises
    ------
    PromotionRefused
        A label's lower CI bound is below the gate (or missing); the alias is not moved.
    CampaignNotSetUp
        No catalog to record the promotion in; the alias is not moved.
    mlflow.exceptions.MlflowException
        No such model or version.
    """
    settings = settings or get_settings()
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
    required = configured if min_auroc_ci_low is None else min_auroc_ci_low
    if not labels or math.isnan(required):
        raise MedaiError(f"run {model_version.run_id} of {name} version {version} logged no gate")
    lows, failures = check_gate(metrics, labels, required)
    if failures:
        raise PromotionRefused(name, version, failures)
    actor = actor or actors.operator()
    # NaN (no configured gate logged) never counts as overridden: nothing was lowered.
    overridden = required < configured
    with _catalog_transaction(settings) as session:
        try:
            previous: str | None = str(
                client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
            )
        except mlflow.exceptions.MlflowException:
            previous = None
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
                "ci_low": lows,
                "gate": {
                    "configured": None if math.isnan(configured) else configured,
                    "used": required,
                    "overridden": overridden,
                },
            },
        )
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        if overridden:
            override = {"configured": configured, "used": required, "by": actor}
            client.set_model_version_tag(name, version, GATE_OVERRIDE_TAG, json.dumps(override))
    return PromotionResult(name, version, previous, lows, required, configured)


def load_registered(
    name: str, alias: str = CANDIDATE_ALIAS, settings: Settings | None = None
) -> Any:
    """Load ``models:/<name>@<alias>`` as a torch module (for notebooks and checks)."""
    configure_mlflow(settings)
    return mlflow.pytorch.load_model(f"models:/{name}@{alias}")
