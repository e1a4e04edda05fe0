"""Audit records of the inference service: predictions and model switches, no PHI.

A prediction's record names the study by a keyed hash of its StudyInstanceUID
(HMAC-SHA256 under the *serving key*), the caller (``apikey:<name>``), the model
version and the result (each finding's probability and decision). With the key and
a study's UID an auditor recomputes the hash (:func:`study_hash`) and finds every
prediction made for it; without the key the hash reveals nothing and cannot be
recomputed from a guessed UID.

The serving key is not the campaign key: an inference deployment in a hospital need
not hold the key that makes the research pseudonyms, and the hashes in its audit log
cannot be linked to the research catalog's pseudonymous studies. It is a file of 64
hex digits with mode 0600 (``serving_key_file``, default ``<home>/serving.key``),
created on the service's first start, never overwritten; keep it with the backups,
since losing it only makes old records unsearchable by UID.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medai.audit import AuditEntry, append_audit, audited_transaction
from medai.keyfile import ensure_key_file, load_key

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Engine

    from medai.serving.inference.findings import Finding

__all__ = [
    "PREDICT_ACTION",
    "SWITCH_ACTION",
    "audit_switch",
    "load_or_create_serving_key",
    "prediction_entry",
    "study_hash",
]

logger = logging.getLogger(__name__)

PREDICT_ACTION = "inference.predict"
SWITCH_ACTION = "inference.model-switch"
# Its own domain label: the same key never gives the same hash for another purpose.
_DOMAIN_STUDY = b"medai/v1/inference-study\x00"


def load_or_create_serving_key(path: Path) -> bytes:
    """The serving key at ``path``, created (mode 0600) when there is none yet.

    Raises
    ------
    medai.errors.KeyFileError
        When the file exists but cannot be read or is malformed.
    """
    if ensure_key_file(path):  # several workers may start at once: one creates it
        logger.warning("created the serving key %s: include it in the backups", path)
    return load_key(path)


def study_hash(key: bytes, study_instance_uid: str) -> str:
    """The keyed hash (64 hex digits) that names a study in the audit log."""
    value = study_instance_uid.strip().rstrip("\x00").strip()
    return hmac.new(key, _DOMAIN_STUDY + value.encode("utf-8"), hashlib.sha256).hexdigest()


def prediction_entry(
    *,
    actor: str,
    study: str,
    prediction_id: str,
    model: str,
    version: str,
    instances: int,
    findings: Sequence[Finding],
) -> AuditEntry:
    """The ``inference.predict`` record of one prediction, to append (possibly with others)."""
    return AuditEntry(
        actor,
        PREDICT_ACTION,
        study,
        {
            "prediction": prediction_id,
            "model": model,
            "version": version,
            "instances": instances,
            "findings": {
                f.label: {"probability": round(f.probability, 6), "positive": f.positive}
                for f in findings
            },
        },
    )


def audit_switch(
    engine: Engine, *, actor: str, model: str, version: str, previous: str | None, alias: str
) -> None:
    """Append the ``inference.model-switch`` record: ``version`` is now served."""
    with audited_transaction(engine) as session:
        append_audit(
            session,
            actor=actor,
            action=SWITCH_ACTION,
            subject=model,
            details={"version": version, "previous": previous, "alias": alias},
        )
