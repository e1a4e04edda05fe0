"""Label sheets: read a site's RIS export, match rows to catalogued studies, report conflicts.

A label sheet (CSV or .xlsx) is PHI by nature: accession numbers, study UIDs, patient ids
and names, report text, reader names. Import reads it through the campaign's ``[labels]``
mapping (:class:`medai.collection.campaign.label_mapping.LabelMapping`) and keeps, per row, only

- ``ref``: the keyed hash of the site's accession number or the pseudonymized study UID,
  computed exactly as the ingest pipeline computes them for the images;
- ``findings``: ``{finding: 1 | 0}`` for the findings the row reports (blank cells are
  "not reported"), and, when the mapping names a patient id column, the patient's
  keyed hashes under the reserved keys ``"@site_patient"`` and ``"@patient"`` (finding
  names cannot start with ``@``) so the patient check can be made when the study arrives;
- its row number and status.

The sheet itself is known only by its sha256. Nothing read from it goes to logs or error
messages but row numbers and column names. Row numbers are those a spreadsheet program
shows: the header is row 1.

A row's status: ``unmatched`` (no such study of the site catalogued yet; kept for
:func:`rematch_labels`), ``matched`` (added at least one label), ``duplicate`` (repeats
labels the study already has), ``conflict`` (disagrees with a label the study already
has: the label keeps its value and is flagged ``conflict``, for a steward to decide) or
``mismatch`` (its patient id does not belong to the study's patient: nothing applied).
Rows with an empty study key or a cell that is neither a positive nor a negative spelling
are rejected: reported by row number, not stored.

Modules: ``reading`` (the sheet as text cells), ``rows`` (columns located, rows parsed),
``matching`` (the duplicate/conflict rules, re-match), ``importing`` (one sheet, one
transaction), ``status`` (where the labels stand). Names are imported on first use, so
that importing ``medai.collection.labels.cli`` (for ``medai --help``) loads no database code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medai.lazy import lazy_exports

if TYPE_CHECKING:
    from medai.collection.labels.importing import LabelImportResult, import_label_sheet
    from medai.collection.labels.matching import RematchResult, rematch_labels
    from medai.collection.labels.reading import SHEET_SUFFIXES, LabelSheet, read_label_sheet
    from medai.collection.labels.rows import (
        REF_ACCESSION,
        REF_STUDY_UID,
        ROW_STATUSES,
        RejectedRow,
        RowCounts,
        RowStatus,
    )
    from medai.collection.labels.status import (
        LabelConflict,
        LabelMismatch,
        LabelStatus,
        SiteLabelStatus,
        findings_by_site,
        label_status,
    )

__all__ = [
    "REF_ACCESSION",
    "REF_STUDY_UID",
    "ROW_STATUSES",
    "SHEET_SUFFIXES",
    "LabelConflict",
    "LabelImportResult",
    "LabelMismatch",
    "LabelSheet",
    "LabelStatus",
    "RejectedRow",
    "RematchResult",
    "RowCounts",
    "RowStatus",
    "SiteLabelStatus",
    "findings_by_site",
    "import_label_sheet",
    "label_status",
    "read_label_sheet",
    "rematch_labels",
]

_MODULES = {
    "LabelImportResult": "importing",
    "import_label_sheet": "importing",
    "RematchResult": "matching",
    "rematch_labels": "matching",
    "SHEET_SUFFIXES": "reading",
    "LabelSheet": "reading",
    "read_label_sheet": "reading",
    "REF_ACCESSION": "rows",
    "REF_STUDY_UID": "rows",
    "ROW_STATUSES": "rows",
    "RejectedRow": "rows",
    "RowCounts": "rows",
    "RowStatus": "rows",
    "LabelConflict": "status",
    "LabelMismatch": "status",
    "LabelStatus": "status",
    "SiteLabelStatus": "status",
    "findings_by_site": "status",
    "label_status": "status",
}


__getattr__ = lazy_exports(__name__, _MODULES)
