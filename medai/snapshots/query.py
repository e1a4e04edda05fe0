"""What a snapshot takes from the catalog: the query, its name rule, and the rows it selects."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.catalog.models import Instance, Patient, Series, Study, StudyLabel
from medai.collection.campaign.sites import get_site, stored_campaign
from medai.errors import SnapshotError
from medai.snapshots.manifest import BASE_COLUMNS

__all__ = ["LEVELS", "SnapshotQuery", "collect_rows", "resolve_query", "validate_name"]

# One manifest row per instance, or per series assembled into a volume (snapshots.series).
LEVELS = ("instance", "series")
# The modalities a series snapshot takes when none is named: those acquired as volumes.
VOLUME_MODALITIES = ("CT", "MR", "PT")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class SnapshotQuery:
    """Which instances a snapshot takes from the catalog.

    Parameters
    ----------
    sites
        Campaign site ids; empty means every site.
    modalities
        Modalities (case ignored); empty means every modality.
    body_part
        One body part (case ignored), or None for any.
    findings
        The label columns; empty means every finding of the campaign.
    labelled_only
        Keep only instances of studies with at least one non-conflicting label among
        ``findings`` (the default); False keeps unlabelled studies too (all ``<NA>``).
    level
        ``"instance"`` (one manifest row per instance, the default) or ``"series"`` (one
        row per series assembled into a volume; :mod:`medai.snapshots.series`). A series
        snapshot with no modality named takes the volumetric ones (CT, MR, PT).
    """

    sites: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    body_part: str | None = None
    findings: tuple[str, ...] = ()
    labelled_only: bool = True
    level: str = "instance"

    def normalized(self) -> SnapshotQuery:
        """Sorted, de-duplicated, case-normalized (the form recorded with the snapshot)."""
        return SnapshotQuery(
            sites=tuple(sorted(set(self.sites))),
            modalities=tuple(sorted({m.strip().upper() for m in self.modalities})),
            body_part=self.body_part.strip().upper() if self.body_part else None,
            findings=tuple(sorted({f.strip().lower() for f in self.findings})),
            labelled_only=self.labelled_only,
            level=self.level.strip().lower(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites),
            "modalities": list(self.modalities),
            "body_part": self.body_part,
            "findings": list(self.findings),
            "labelled_only": self.labelled_only,
            "level": self.level,
        }


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid snapshot name, else raise :class:`SnapshotError`.

    A name is 1-64 characters of lower-case letters, digits, ``-`` and ``_``, starting with
    a letter or digit: it is a directory name and is typed in commands and notebooks.
    """
    if not _NAME.fullmatch(name):
        raise SnapshotError(
            f"invalid snapshot name {name!r}: use 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. chest-v1)"
        )
    return name


def _campaign_findings(session: Session) -> list[str]:
    """Every finding the campaign knows: label mappings, targets, and labels present."""
    definition = stored_campaign(session)
    findings: set[str] = set()
    for site in definition.sites:
        if definition.labels is not None:
            findings.update(definition.labels.for_site(site.id).findings)
        findings.update(t.finding for t in site.targets if t.finding)
    findings.update(session.scalars(select(StudyLabel.finding).distinct()))
    return sorted(findings)


def resolve_query(session: Session, query: SnapshotQuery) -> SnapshotQuery:
    query = query.normalized()
    if query.level not in LEVELS:
        raise SnapshotError(f"unknown snapshot level {query.level!r}: use instance or series")
    if query.level == "series" and not query.modalities:
        query = replace(query, modalities=VOLUME_MODALITIES)
    for site in query.sites:
        get_site(session, site)  # UnknownSite, naming the campaign's sites
    known = _campaign_findings(session)
    if not query.findings:
        if not known:
            raise SnapshotError(
                "the campaign has no findings (no [labels] mapping, no finding targets, no "
                "labels): nothing to label the snapshot with"
            )
        return replace(query, findings=tuple(known))
    unknown = [f for f in query.findings if f not in known]
    if unknown:
        raise SnapshotError(
            f"unknown finding(s) {', '.join(unknown)}; the campaign's findings are: "
            + (", ".join(known) or "none")
        )
    return query


def collect_rows(session: Session, query: SnapshotQuery) -> list[dict[str, Any]]:
    """The instances matching ``query``, with their study's usable labels, sorted."""
    statement = (
        select(
            Patient.pseudonym,
            Study.id,
            Study.study_uid,
            Series.series_uid,
            Instance.sop_instance_uid,
            Study.site_id,
            Instance.modality,
            Instance.body_part,
            Instance.view_position,
            Instance.manufacturer,
            Instance.rows,
            Instance.columns,
            Instance.store_key,
            Instance.id,
            Instance.pixel_hash,
        )
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .join(Patient, Study.patient_id == Patient.id)
    )
    if query.sites:
        statement = statement.where(Study.site_id.in_(query.sites))
    if query.modalities:
        statement = statement.where(Instance.modality.in_(query.modalities))
    if query.body_part:
        statement = statement.where(Instance.body_part == query.body_part)
    labels: dict[int, dict[str, int]] = defaultdict(dict)
    label_query = select(StudyLabel.study_id, StudyLabel.finding, StudyLabel.value).where(
        StudyLabel.conflict.is_(False), StudyLabel.finding.in_(query.findings)
    )
    if query.sites:
        label_query = label_query.where(StudyLabel.site_id.in_(query.sites))
    for study_id, finding, value in session.execute(label_query):
        labels[study_id][finding] = int(value)
    rows = []
    for record in session.execute(statement):
        study_labels = labels.get(record[1], {})
        if query.labelled_only and not study_labels:
            continue
        values: list[Any] = [record[0], *record[2:-2]]
        row: dict[str, Any] = dict(zip(BASE_COLUMNS, values, strict=True))
        # Not manifest columns: for recognising re-sent images (splits.merge_resends).
        row["instance_id"], row["pixel_hash"] = record[-2], record[-1]
        for finding in query.findings:
            row[finding] = study_labels.get(finding)
        rows.append(row)
    # Sorted here, not in SQL: collations differ between SQLite and PostgreSQL.
    rows.sort(key=lambda r: (r["patient"], r["study_uid"], r["series_uid"], r["sop_instance_uid"]))
    return rows
