"""Clinician feedback on served predictions, stored pseudonymously, and its running agreement.

A prediction lives in memory for ``prediction_ttl_seconds`` only, but a clinician's verdict
may come hours later; so at prediction time the service writes what feedback needs into
``served_predictions`` (model version, the keyed study hash of the inference audit, the
site, the owner and each finding's probability and decision: no original UID, name or
pixel). In a campaign deployment it also keeps the study's research pseudonym (the
StudyInstanceUID de-identification gives it at ingest, under the campaign key), which
lets ``medai models feedback-export`` write sheets ``medai labels import`` matches.
Feedback is one row per finding and clinician (``prediction_feedback``; a later verdict
of the same clinician on the same finding replaces the earlier one) and an
``inference.feedback`` audit record, in one transaction.

``served_predictions`` would otherwise grow by one row per prediction forever:
:func:`prune_served` deletes the rows older than the retention that no clinician gave
feedback on. A row with feedback stays, since ``prediction_feedback`` references it (a
foreign key without cascade) and the export of feedback as labels reads it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from medai.audit import append_audit, audited_transaction
from medai.catalog.models import PredictionFeedback, ServedPrediction

if TYPE_CHECKING:
    from sqlalchemy import CursorResult, Engine

__all__ = [
    "FEEDBACK_ACTION",
    "Verdict",
    "agreement",
    "prune_served",
    "record_feedback",
    "recent_stats",
    "Served",
    "record_served",
    "served_prediction",
]

FEEDBACK_ACTION = "inference.feedback"


@dataclass(frozen=True)
class Verdict:
    """A clinician's verdict on one finding of a prediction."""

    finding: str
    agree: bool


@dataclass(frozen=True)
class Served:
    """What feedback on one prediction and the drift windows need (a ``served_predictions`` row)."""

    prediction_id: str
    model: str
    version: str
    study: str
    site: str
    owner: str
    findings: Mapping[str, Mapping[str, Any]]
    stats: Mapping[str, Any]
    research_study_uid: str | None = None


def record_served(engine: Engine, served: Sequence[Served]) -> None:
    """Keep ``served`` predictions, in one transaction (the monitor's group commit)."""
    with Session(engine) as session, session.begin():
        session.add_all(
            ServedPrediction(
                prediction_id=row.prediction_id,
                model=row.model,
                version=row.version,
                study=row.study,
                site=row.site,
                research_study_uid=row.research_study_uid,
                owner=row.owner,
                findings=dict(row.findings),
                stats=dict(row.stats),
            )
            for row in served
        )


def prune_served(engine: Engine, before: dt.datetime, *, batch: int, most: int) -> int:
    """Delete the served predictions made before ``before`` that have no feedback.

    In transactions of at most ``batch`` rows each (a SQLite writer waiting for the lock
    waits for one short batch, not the whole sweep), ``most`` rows at most in all. Returns
    how many were deleted (``most``: there may be more to delete).
    """
    unjudged = ~exists().where(PredictionFeedback.prediction_id == ServedPrediction.prediction_id)
    expired = (ServedPrediction.created_at < before, unjudged)
    examined = deleted = 0
    while examined < most:
        with Session(engine) as session, session.begin():
            ids = list(
                session.scalars(
                    select(ServedPrediction.prediction_id)
                    .where(*expired)
                    .limit(min(batch, most - examined))
                )
            )
            if not ids:
                break
            # The condition again: feedback may have come in since the select.
            result = session.execute(
                delete(ServedPrediction)
                .where(ServedPrediction.prediction_id.in_(ids), *expired)
                .execution_options(synchronize_session=False)
            )
        examined += len(ids)
        deleted += cast("CursorResult[Any]", result).rowcount
        if len(ids) < batch:
            break
    return deleted


def recent_stats(
    engine: Engine, model: str, version: str, window: int
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The input statistics of ``version``'s last ``window`` predictions, overall and per site.

    From the catalog, so every worker process and a restarted service see the same windows.
    """
    of_version = (ServedPrediction.model == model, ServedPrediction.version == version)
    newest = (ServedPrediction.created_at.desc(), ServedPrediction.prediction_id.desc())
    with Session(engine) as session:
        overall = list(
            session.scalars(
                select(ServedPrediction.stats).where(*of_version).order_by(*newest).limit(window)
            )
        )
        sites = session.scalars(select(ServedPrediction.site).where(*of_version).distinct())
        per_site = {
            site: list(
                session.scalars(
                    select(ServedPrediction.stats)
                    .where(*of_version, ServedPrediction.site == site)
                    .order_by(*newest)
                    .limit(window)
                )
            )
            for site in sorted(sites)
        }
    return overall, per_site


def served_prediction(engine: Engine, prediction_id: str) -> ServedPrediction | None:
    """The kept record of ``prediction_id``, or None."""
    with Session(engine, expire_on_commit=False) as session:
        return session.get(ServedPrediction, prediction_id)


def record_feedback(
    engine: Engine,
    served: ServedPrediction,
    verdicts: Sequence[Verdict],
    *,
    diagnosis_code: str | None,
    actor: str,
) -> None:
    """Store ``verdicts`` of ``actor`` on ``served`` and audit them, together."""
    with audited_transaction(engine) as session:
        for verdict in verdicts:
            session.execute(
                delete(PredictionFeedback).where(
                    PredictionFeedback.prediction_id == served.prediction_id,
                    PredictionFeedback.finding == verdict.finding,
                    PredictionFeedback.actor == actor,
                )
            )
            session.add(
                PredictionFeedback(
                    prediction_id=served.prediction_id,
                    finding=verdict.finding,
                    agree=verdict.agree,
                    diagnosis_code=diagnosis_code,
                    actor=actor,
                )
            )
        append_audit(
            session,
            actor=actor,
            action=FEEDBACK_ACTION,
            subject=served.study,
            details={
                "prediction": served.prediction_id,
                "model": served.model,
                "version": served.version,
                "verdicts": {v.finding: "agree" if v.agree else "disagree" for v in verdicts},
                "diagnosis_code": diagnosis_code,
            },
        )


def agreement(engine: Engine, model: str, version: str) -> dict[str, dict[str, Any]]:
    """Per finding of ``model`` ``version``: verdicts agreeing, disagreeing, and the rate."""
    query = (
        select(PredictionFeedback.finding, PredictionFeedback.agree, func.count())
        .join(ServedPrediction)
        .where(ServedPrediction.model == model, ServedPrediction.version == version)
        .group_by(PredictionFeedback.finding, PredictionFeedback.agree)
    )
    counts: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        for finding, agree, count in session.execute(query):
            entry = counts.setdefault(finding, {"agree": 0, "disagree": 0})
            entry["agree" if agree else "disagree"] += int(count)
    for entry in counts.values():
        entry["agreement"] = entry["agree"] / (entry["agree"] + entry["disagree"])
    return counts
