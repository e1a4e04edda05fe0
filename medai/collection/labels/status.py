"""Where the labels stand: rows per site and status, labelled studies, conflicts, mismatches."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from medai.catalog.models import LabelImport, LabelRow, Site, Study, StudyLabel
from medai.collection.labels.rows import CHUNK, ROW_STATUSES, RowCounts, split_findings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "LabelConflict",
    "LabelMismatch",
    "LabelStatus",
    "SiteLabelStatus",
    "findings_by_site",
    "label_status",
]


@dataclass(frozen=True)
class LabelConflict:
    """A flagged label: the value kept and every value the site's rows gave for it."""

    site: str
    study_uid: str
    finding: str
    kept: int
    values: tuple[int, ...]


@dataclass
class SiteLabelStatus:
    """One site's label rows by status, and its studies with and without labels."""

    site: str
    rows: RowCounts = field(default_factory=RowCounts)
    studies: int = 0
    labelled_studies: int = 0
    conflicts: int = 0
    imports: int = 0


@dataclass(frozen=True)
class LabelMismatch:
    """A row refused because its patient id does not belong to its study's patient."""

    site: str
    import_id: int
    row: int
    study_uid: str


@dataclass
class LabelStatus:
    """Where the label sheets stand: per site, the flagged conflicts, the refused rows."""

    sites: list[SiteLabelStatus]
    conflicts: list[LabelConflict]
    mismatches: list[LabelMismatch] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": [
                {
                    "site": s.site,
                    "imports": s.imports,
                    "rows": s.rows.total,
                    **asdict(s.rows),
                    "studies": s.studies,
                    "labelled_studies": s.labelled_studies,
                    "conflicts": s.conflicts,
                }
                for s in self.sites
            ],
            "conflicts": [asdict(c) for c in self.conflicts],
            "mismatches": [asdict(m) for m in self.mismatches],
        }


def label_status(session: Session) -> LabelStatus:
    """Label rows per site and status, labelled studies, the conflicts and the mismatches.

    Conflicts are listed by pseudonymized study UID and finding, with the value kept and
    all values the rows gave; patient mismatches by import, row number and study UID.
    """
    sites = {site: SiteLabelStatus(site) for site in session.scalars(select(Site.id))}

    def entry(site: str) -> SiteLabelStatus:
        return sites.setdefault(site, SiteLabelStatus(site))

    for site, status, count in session.execute(
        select(LabelRow.site_id, LabelRow.status, func.count()).group_by(
            LabelRow.site_id, LabelRow.status
        )
    ):
        if status in ROW_STATUSES:
            entry(site).rows.add(status, count)
    for site, count in session.execute(
        select(LabelImport.site_id, func.count()).group_by(LabelImport.site_id)
    ):
        entry(site).imports = count
    for site, count in session.execute(select(Study.site_id, func.count()).group_by(Study.site_id)):
        entry(site).studies = count
    for site, count in session.execute(
        select(StudyLabel.site_id, func.count(func.distinct(StudyLabel.study_id))).group_by(
            StudyLabel.site_id
        )
    ):
        entry(site).labelled_studies = count
    flagged = session.execute(
        select(
            StudyLabel.site_id,
            StudyLabel.study_id,
            Study.study_uid,
            StudyLabel.finding,
            StudyLabel.value,
        )
        .join(Study, Study.id == StudyLabel.study_id)
        .where(StudyLabel.conflict.is_(True))
        .order_by(StudyLabel.site_id, Study.study_uid, StudyLabel.finding)
    ).all()
    seen: dict[tuple[int, str], set[int]] = defaultdict(set)
    study_ids = sorted({row.study_id for row in flagged})
    for start in range(0, len(study_ids), CHUNK):
        for study_id, stored in session.execute(
            select(LabelRow.study_id, LabelRow.findings).where(
                LabelRow.study_id.in_(study_ids[start : start + CHUNK]),
                LabelRow.status.in_(("matched", "duplicate", "conflict")),
            )
        ):
            for finding, value in split_findings(stored)[0].items():
                seen[(study_id, finding)].add(value)
    conflicts = []
    for row in flagged:
        entry(row.site_id).conflicts += 1
        values = tuple(sorted(seen[(row.study_id, row.finding)] | {row.value}))
        conflicts.append(LabelConflict(row.site_id, row.study_uid, row.finding, row.value, values))
    mismatches = [
        LabelMismatch(*row)
        for row in session.execute(
            select(LabelRow.site_id, LabelRow.import_id, LabelRow.row_number, Study.study_uid)
            .join(Study, Study.id == LabelRow.study_id)
            .where(LabelRow.status == "mismatch")
            .order_by(LabelRow.site_id, LabelRow.import_id, LabelRow.row_number)
        )
    ]
    return LabelStatus(
        sites=[sites[s] for s in sorted(sites)], conflicts=conflicts, mismatches=mismatches
    )


def findings_by_site(
    session: Session, *, include_conflicts: bool = True
) -> dict[str, dict[str, int]]:
    """``{site: {finding: number of studies labelled positive}}``.

    A flagged label counts with the value it kept unless ``include_conflicts`` is False.
    """
    query = (
        select(StudyLabel.site_id, StudyLabel.finding, func.count())
        .where(StudyLabel.value == 1)
        .group_by(StudyLabel.site_id, StudyLabel.finding)
    )
    if not include_conflicts:
        query = query.where(StudyLabel.conflict.is_(False))
    counts: dict[str, dict[str, int]] = {}
    for site, finding, count in session.execute(query):
        counts.setdefault(site, {})[finding] = count
    return counts
