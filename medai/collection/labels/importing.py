"""Importing a site's label sheet: read, parse, match and audit in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from medai.audit import append_audit, audited_transaction
from medai.audit.actors import operator
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import LabelImport, LabelRow
from medai.collection.campaign.label_mapping import SiteLabelMapping
from medai.collection.campaign.sites import get_site, stored_campaign
from medai.collection.key_guard import campaign_pseudonymizer
from medai.collection.labels.matching import Labeller, studies_by_ref
from medai.collection.labels.reading import LabelSheet, read_label_sheet
from medai.collection.labels.rows import (
    CHUNK,
    REF_ACCESSION,
    REF_STUDY_UID,
    ParsedRow,
    RejectedRow,
    RowCounts,
    RowStatus,
    locate_columns,
    parse_rows,
)
from medai.config import Settings, get_settings
from medai.errors import CampaignError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["LabelImportResult", "import_label_sheet"]

logger = logging.getLogger(__name__)


@dataclass
class LabelImportResult:
    """What one import did. ``previous_import`` is set (and nothing written) when the same
    sheet had already been imported for the site and ``force`` was not given."""

    site: str
    sheet_sha256: str
    rows: int
    import_id: int | None
    previous_import: int | None = None
    counts: RowCounts = field(default_factory=RowCounts)
    rejected: list[RejectedRow] = field(default_factory=list)
    labels_added: int = 0
    conflicts_flagged: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, rejected rows with reasons; no sheet values)."""
        return {
            "site": self.site,
            "sheet_sha256": self.sheet_sha256,
            "import_id": self.import_id,
            "previous_import": self.previous_import,
            "rows": self.rows,
            **asdict(self.counts),
            "rejected": len(self.rejected),
            "labels_added": self.labels_added,
            "conflicts_flagged": self.conflicts_flagged,
            "rejected_rows": [asdict(r) for r in self.rejected],
        }


def import_label_sheet(
    path: Path | str,
    site: str,
    *,
    settings: Settings | None = None,
    actor: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> LabelImportResult:
    """Import a site's label sheet into the catalog of ``settings``.

    Rows are matched to the site's catalogued studies (by the keyed accession hash or the
    pseudonymized study UID), labels are added with the duplicate/conflict rules of this
    module, rows whose study is not catalogued yet are kept as ``unmatched``, and one
    ``labels.import`` audit record is appended, all in one transaction.

    Parameters
    ----------
    path
        The sheet, ``.csv`` or ``.xlsx``.
    site
        The campaign site id the sheet comes from (accession numbers are per site).
    settings
        Where the catalog and key are; :func:`medai.config.get_settings` by default.
    actor
        Who is recorded in the import and the audit log; the operator
        (``user:<login>``) by default.
    force
        Import even if the same sheet (same sha256) was already imported for the site;
        without it such a re-import writes nothing and returns ``previous_import``.
        Forcing is harmless: its rows come out ``duplicate`` (or ``conflict`` again for
        labels already flagged), never as new labels or new conflicts.
    progress
        Called as ``progress(done, total)`` rows while the rows are matched.

    Returns
    -------
    LabelImportResult

    Raises
    ------
    LabelSheetError
        If the sheet cannot be read or lacks a mapped column.
    UnknownSite
        If ``site`` is not one of the campaign's sites.
    CampaignError
        If no campaign is set up, or it has no ``[labels]`` mapping.
    KeyFileError
        If the pseudonymization key is missing.
    """
    settings = settings or get_settings()
    sheet = read_label_sheet(path)
    engine = create_engine_for(settings.resolved_database_url)
    try:
        sessions = session_factory(engine)
        with sessions() as session:
            definition = stored_campaign(session)
            get_site(session, site)
        if definition.labels is None:
            raise CampaignError(
                "the campaign has no [labels] mapping: add one to the campaign file (see "
                "collection/example-campaign.toml) and run `medai campaign init FILE` again"
            )
        mapping = definition.labels.for_site(site)
        columns = locate_columns(sheet.header, mapping, site)
        pseudonymizer = campaign_pseudonymizer(settings, engine)
        rows, rejected = parse_rows(sheet, columns, mapping, site, pseudonymizer)
        with audited_transaction(sessions) as session:
            result = _import(
                session,
                sheet,
                site,
                mapping,
                rows,
                rejected,
                actor or operator(),
                force,
                progress,
                pseudonymized=columns.pseudonymized,
            )
    finally:
        engine.dispose()
    if result.previous_import is None:
        logger.info(
            "label sheet imported for site %s: %d rows, %d matched, %d unmatched, "
            "%d conflicts, %d rejected",
            site,
            result.rows,
            result.counts.matched,
            result.counts.unmatched,
            result.counts.conflict,
            len(result.rejected),
        )
    return result


def _import(
    session: Session,
    sheet: LabelSheet,
    site: str,
    mapping: SiteLabelMapping,
    rows: list[ParsedRow],
    rejected: list[RejectedRow],
    actor: str,
    force: bool,
    progress: Callable[[int, int], None] | None,
    *,
    pseudonymized: bool = False,
) -> LabelImportResult:
    result = LabelImportResult(
        site=site, sheet_sha256=sheet.sha256, rows=len(sheet.rows), import_id=None
    )
    if not force:
        previous = session.scalar(
            select(LabelImport.id)
            .where(LabelImport.site_id == site, LabelImport.sheet_sha256 == sheet.sha256)
            .order_by(LabelImport.id)
            .limit(1)
        )
        if previous is not None:
            result.previous_import = previous
            return result
    record = LabelImport(site_id=site, sheet_sha256=sheet.sha256, rows=len(sheet.rows), actor=actor)
    session.add(record)
    session.flush()
    result.import_id = record.id
    result.rejected = rejected
    # A sheet keyed by already-pseudonymized study UIDs (a feedback export) is matched
    # like a study-UID sheet whose keys were hashed here.
    by_accession = mapping.study_key_kind == "accession_number" and not pseudonymized
    kind = REF_ACCESSION if by_accession else REF_STUDY_UID
    labeller = Labeller(session)
    row_ids: list[int] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        studies = studies_by_ref(session, site, kind, [row.ref for row in chunk])
        labeller.load(study_id for study_id, _, _ in studies.values())
        values: list[dict[str, Any]] = []
        for offset, row in enumerate(chunk):
            match = studies.get(row.ref)
            status: RowStatus
            if match is None:
                status = "unmatched"
            elif row.patient is not None and not row.patient.matches(match[1], match[2]):
                status = "mismatch"
            else:
                status = labeller.apply(start + offset, match[0], site, row.findings)
            result.counts.add(status)
            values.append(
                {
                    "import_id": record.id,
                    "site_id": site,
                    "row_number": row.number,
                    "ref_kind": kind,
                    "ref": row.ref,
                    "findings": row.stored_findings(),
                    "study_id": match[0] if match else None,
                    "status": status,
                }
            )
        row_ids += session.scalars(
            insert(LabelRow).returning(LabelRow.id, sort_by_parameter_order=True), values
        ).all()
        if progress is not None:
            progress(start + len(chunk), len(rows))
    labeller.write(lambda ref: row_ids[ref])
    result.labels_added, result.conflicts_flagged = labeller.added, labeller.flagged
    details = result.to_dict()
    del details["rejected_rows"], details["previous_import"]
    append_audit(
        session, actor=actor, action="labels.import", subject=sheet.sha256, details=details
    )
    return result
