"""Label sheets: a site's RIS export of report findings, matched to catalogued studies.

A label sheet (CSV or .xlsx) is PHI by nature: accession numbers, study UIDs, patient ids
and names, report text, reader names. Import reads it through the campaign's ``[labels]``
mapping (:class:`medai.collection.campaign.definition.LabelMapping`) and keeps, per row, only

- ``ref``: the keyed hash of the site's accession number or the pseudonymized study UID,
  computed exactly as the ingest pipeline computes them for the images;
- ``findings``: ``{finding: 1 | 0}`` for the findings the row reports (blank cells are
  "not reported"), and, when the mapping names a patient id column, the patient's
  pseudonym under the reserved key ``"@patient"`` (finding names cannot start with
  ``@``) so the patient check can be made when the study arrives;
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
"""

from __future__ import annotations

import getpass
import hashlib
import io
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, func, insert, select, union_all, update

from medai.audit import append_audit, lock_audit_chain
from medai.catalog.db import add_to_counters, create_engine_for, session_factory
from medai.catalog.models import (
    LabelCount,
    LabelImport,
    LabelRow,
    Patient,
    Site,
    Study,
    StudyLabel,
    utcnow,
)
from medai.collection.campaign.definition import SiteLabelMapping, get_site, stored_campaign
from medai.collection.pseudonymize import Pseudonymizer, load_key
from medai.config import Settings, get_settings
from medai.errors import CampaignError, LabelSheetError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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

logger = logging.getLogger(__name__)

REF_ACCESSION = "accession"
"""``LabelRow.ref_kind`` of a row keyed by the keyed hash of an accession number."""
REF_STUDY_UID = "study_uid"
"""``LabelRow.ref_kind`` of a row keyed by the pseudonymized StudyInstanceUID."""

RowStatus = Literal["matched", "duplicate", "conflict", "mismatch", "unmatched"]
ROW_STATUSES: tuple[RowStatus, ...] = ("matched", "duplicate", "conflict", "mismatch", "unmatched")
SHEET_SUFFIXES = (".csv", ".xlsx")

_PATIENT_KEY = "@patient"
# Rows per round trip: bounded IN lists and executemany batches on both databases.
_CHUNK = 500
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64
# Excel writes a whole number it stored as a float as "1.0".
_WHOLE_FLOAT = re.compile(r"([0-9]+)\.0+")


# -- reading a sheet ----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSheet:
    """A sheet as read: its header, its non-blank rows (with row numbers) and its sha256."""

    header: list[str]
    rows: list[tuple[int, list[str]]]
    sha256: str


def read_label_sheet(path: Path | str) -> LabelSheet:
    """Read a label sheet (``.csv`` or ``.xlsx``), every cell as text.

    Cells are read as written (``dtype=str``), so accession numbers keep their leading
    zeros and nothing is taken for "missing". A CSV may be UTF-8 (with or without BOM)
    or Windows-1252, separated by commas, semicolons or tabs (as the header shows); of a
    workbook the first worksheet is read. Wholly blank rows are skipped.

    Raises
    ------
    LabelSheetError
        If the file does not exist, cannot be read, has another extension, is empty or
        is not a valid CSV file or workbook.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SHEET_SUFFIXES:
        hint = " (re-save the old .xls workbook as .xlsx)" if suffix == ".xls" else ""
        raise LabelSheetError(
            f"unsupported label sheet type {suffix or '(no extension)'!r}: export the sheet "
            f"as .csv (UTF-8) or .xlsx{hint}"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LabelSheetError("the label sheet does not exist: check the path") from None
    except IsADirectoryError:
        raise LabelSheetError("the label sheet path is a folder: give the file") from None
    except OSError as exc:
        raise LabelSheetError(
            f"cannot read the label sheet ({exc.strerror}): check its permissions"
        ) from None
    table = _read_csv(data) if suffix == ".csv" else _read_xlsx(data)
    if not table or not any(table[0]):
        raise LabelSheetError("the label sheet is empty: its first row must be the header")
    rows = [(number, cells) for number, cells in enumerate(table[1:], start=2) if any(cells)]
    return LabelSheet(header=table[0], rows=rows, sha256=hashlib.sha256(data).hexdigest())


def _cells(frame: Any) -> list[list[str]]:
    import pandas as pd

    return [
        ["" if pd.isna(value) else str(value).strip() for value in row]
        for row in frame.itertuples(index=False, name=None)
    ]


def _read_csv(data: bytes) -> list[list[str]]:
    import pandas as pd

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")  # what Excel on Windows writes as plain "CSV"
        except UnicodeDecodeError:
            raise LabelSheetError(
                "the CSV file is neither UTF-8 nor Windows-1252 text: save it as 'CSV UTF-8'"
            ) from None
    if not text.strip():
        raise LabelSheetError("the label sheet is empty: its first row must be the header")
    first_line = text.split("\n", 1)[0]
    separator = max((",", ";", "\t"), key=first_line.count)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=separator,
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        # pandas' message may quote the offending text: keep only where it is.
        where = re.search(r"line (\d+)", str(exc))
        at = f" near line {where.group(1)}" if where else ""
        raise LabelSheetError(
            f"the CSV file cannot be parsed{at}: a row has more fields than the header, or a "
            "quote is not closed"
        ) from None
    return _cells(frame)


def _read_xlsx(data: bytes) -> list[list[str]]:
    import pandas as pd

    try:
        frame = pd.read_excel(
            io.BytesIO(data),
            sheet_name=0,
            header=None,
            dtype=str,
            keep_default_na=False,
            engine="openpyxl",
        )
    except ImportError:
        raise LabelSheetError(
            "reading .xlsx sheets needs openpyxl: install it, or export the sheet as CSV"
        ) from None
    except Exception as exc:  # noqa: BLE001 - broken workbooks fail deep in zip/XML readers
        raise LabelSheetError(
            f"the file is not a readable .xlsx workbook ({type(exc).__name__}): save it "
            "again from the spreadsheet program, or export it as CSV"
        ) from None
    return _cells(frame)


# -- columns and rows ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    """Where each mapped column is in a sheet's header."""

    study_key: int
    patient_id: int | None
    findings: dict[str, int]
    names: list[str]


def _locate(header: Sequence[str], mapping: SiteLabelMapping, site: str) -> _Columns:
    positions: dict[str, list[int]] = defaultdict(list)
    for position, name in enumerate(header):
        if name.strip():
            positions[name.strip().casefold()].append(position)
    wanted = [("study_key", mapping.study_key)]
    if mapping.patient_id:
        wanted.append(("patient_id", mapping.patient_id))
    wanted += [(f"findings.{f}", column) for f, column in mapping.findings.items()]
    missing = [(role, column) for role, column in wanted if column.casefold() not in positions]
    if missing:
        names = ", ".join(f"{column!r} ({role})" for role, column in missing)
        if len(missing) == len(wanted):
            # Not one mapped column: the first row may be data (a sheet exported without its
            # header), so its cells are not shown.
            found = "none of the mapped ones (is the first row the header?)"
        else:
            found = ", ".join(repr(name) for name in header if name.strip())
        raise LabelSheetError(
            f"the sheet lacks the column(s) {names} that the campaign's label mapping for site "
            f"{site!r} requires; columns found: {found}. Fix the sheet's header, or the "
            "[labels] mapping in the campaign file and run `medai campaign init FILE` again"
        )
    for _role, column in wanted:
        if len(positions[column.casefold()]) > 1:
            raise LabelSheetError(
                f"column {column!r} appears {len(positions[column.casefold()])} times in the "
                "sheet's header: keep one"
            )
    index = {role: positions[column.casefold()][0] for role, column in wanted}
    return _Columns(
        study_key=index["study_key"],
        patient_id=index.get("patient_id"),
        findings={f: index[f"findings.{f}"] for f in mapping.findings},
        names=list(header),
    )


@dataclass(frozen=True)
class RejectedRow:
    """A sheet row that was not imported, and why (no value from the sheet)."""

    row: int
    reason: str


@dataclass(frozen=True)
class _Row:
    number: int
    ref: str
    findings: dict[str, int]
    patient: str | None

    def stored_findings(self) -> dict[str, Any]:
        stored: dict[str, Any] = dict(self.findings)
        if self.patient is not None:
            stored[_PATIENT_KEY] = self.patient
        return stored


def _split_findings(stored: dict[str, Any]) -> tuple[dict[str, int], str | None]:
    """A stored row's findings and its patient pseudonym (None without a patient column)."""
    findings = {k: int(v) for k, v in stored.items() if not k.startswith("@")}
    patient = stored.get(_PATIENT_KEY)
    return findings, str(patient) if patient is not None else None


def _cell_value(cell: str, mapping: SiteLabelMapping) -> int | None:
    """1, 0 or None (blank); raises ValueError for anything else."""
    word = cell.strip().casefold()
    if not word:
        return None
    whole = _WHOLE_FLOAT.fullmatch(word)
    if whole:
        word = whole.group(1)
    if word in mapping.positive:
        return 1
    if word in mapping.negative:
        return 0
    raise ValueError("not a positive or negative spelling")


def _parse_rows(
    sheet: LabelSheet,
    columns: _Columns,
    mapping: SiteLabelMapping,
    site: str,
    pseudonymizer: Pseudonymizer,
) -> tuple[list[_Row], list[RejectedRow]]:
    rows: list[_Row] = []
    rejected: list[RejectedRow] = []
    key_name = columns.names[columns.study_key]
    accepted = (
        f"accepted: {', '.join(sorted(mapping.positive))} / "
        f"{', '.join(sorted(mapping.negative))}, or blank"
    )
    for number, cells in sheet.rows:
        key = cells[columns.study_key]
        if not key:
            rejected.append(RejectedRow(number, f"empty study key (column {key_name!r})"))
            continue
        if mapping.study_key_kind == "study_uid":
            if len(key) > _UID_MAX or not _UID.fullmatch(key):
                rejected.append(RejectedRow(number, f"column {key_name!r} is not a DICOM UID"))
                continue
            ref = pseudonymizer.uid(key)
        else:
            ref = pseudonymizer.accession_key(site, key)
        patient = None
        if columns.patient_id is not None:
            patient_id = cells[columns.patient_id]
            if not patient_id:
                name = columns.names[columns.patient_id]
                rejected.append(RejectedRow(number, f"empty patient id (column {name!r})"))
                continue
            patient = pseudonymizer.patient_pseudonym(patient_id)
        findings: dict[str, int] = {}
        unreadable: list[str] = []
        for finding, index in columns.findings.items():
            try:
                value = _cell_value(cells[index], mapping)
            except ValueError:
                unreadable.append(repr(columns.names[index]))
                continue
            if value is not None:
                findings[finding] = value
        if unreadable:
            reason = f"unrecognized value in column {', '.join(unreadable)} ({accepted})"
            rejected.append(RejectedRow(number, reason))
        elif not findings:
            rejected.append(RejectedRow(number, "no finding reported (every finding cell blank)"))
        else:
            rows.append(_Row(number, ref, findings, patient))
    return rows, rejected


# -- applying labels ----------------------------------------------------------------------


@dataclass
class RowCounts:
    """How many rows ended in each status."""

    matched: int = 0
    duplicate: int = 0
    conflict: int = 0
    mismatch: int = 0
    unmatched: int = 0

    def add(self, status: RowStatus, count: int = 1) -> None:
        setattr(self, status, getattr(self, status) + count)

    @property
    def total(self) -> int:
        return self.matched + self.duplicate + self.conflict + self.mismatch + self.unmatched


@dataclass
class _Label:
    site: str
    value: int
    conflict: bool
    id: int | None = None  # None: added in this transaction
    row_ref: int = 0  # for a new label: the row that set it (see _Labeller.write)
    flagged: bool = False  # conflict set in this transaction


class _Labeller:
    """Applies rows to studies' labels inside one transaction: the duplicate/conflict rules.

    Rows must be offered in the order they should win: the first value of a label is kept.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._labels: dict[tuple[int, str], _Label] = {}
        self._loaded: set[int] = set()
        self.added = 0
        self.flagged = 0

    def load(self, study_ids: Iterable[int]) -> None:
        """Read the existing labels of these studies (once per study)."""
        wanted = sorted(set(study_ids) - self._loaded)
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for label in self._session.execute(
                select(
                    StudyLabel.id,
                    StudyLabel.study_id,
                    StudyLabel.site_id,
                    StudyLabel.finding,
                    StudyLabel.value,
                    StudyLabel.conflict,
                ).where(StudyLabel.study_id.in_(chunk))
            ):
                self._labels[(label.study_id, label.finding)] = _Label(
                    label.site_id, label.value, label.conflict, id=label.id
                )
            self._loaded.update(chunk)

    def apply(self, row_ref: int, study_id: int, site: str, findings: dict[str, int]) -> RowStatus:
        """Apply one row's findings to its (loaded) study; returns the row's status."""
        added = conflicting = False
        for finding, value in findings.items():
            label = self._labels.get((study_id, finding))
            if label is None:
                self._labels[(study_id, finding)] = _Label(site, value, False, row_ref=row_ref)
                self.added += 1
                added = True
            elif label.value != value:
                conflicting = True
                if not label.conflict:
                    label.conflict = label.flagged = True
                    self.flagged += 1
        if conflicting:
            return "conflict"
        return "matched" if added else "duplicate"

    def write(self, row_id: Callable[[int], int]) -> None:
        """Insert the new labels and flag the conflicting ones; ``row_id`` maps row refs."""
        now = utcnow()
        new = [
            {
                "study_id": study_id,
                "site_id": label.site,
                "finding": finding,
                "value": label.value,
                "label_row_id": row_id(label.row_ref),
                "conflict": label.conflict,
                "updated_at": now,
            }
            for (study_id, finding), label in self._labels.items()
            if label.id is None
        ]
        flagged = [
            {"id": label.id, "conflict": True, "updated_at": now}
            for label in self._labels.values()
            if label.id is not None and label.flagged
        ]
        for start in range(0, len(new), _CHUNK):
            self._session.execute(insert(StudyLabel), new[start : start + _CHUNK])
        if flagged:
            self._session.execute(update(StudyLabel), flagged)
        self._count(new)

    def _count(self, new: list[dict[str, Any]]) -> None:
        """Add the new labels to :class:`LabelCount` (conflicts keep the first value)."""
        if not new:
            return
        previously_labelled = {
            study_id
            for (study_id, _finding), label in self._labels.items()
            if label.id is not None
        }
        kinds: dict[int, tuple[Any, str, str]] = {}
        study_ids = sorted({row["study_id"] for row in new})
        for start in range(0, len(study_ids), _CHUNK):
            chunk = study_ids[start : start + _CHUNK]
            for study_id, received, modality, body_part in self._session.execute(
                select(Study.id, Study.first_received_at, Study.modality, Study.body_part).where(
                    Study.id.in_(chunk)
                )
            ):
                kinds[study_id] = (received.date(), modality or "", body_part or "")
        counts: dict[tuple[str, Any, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        newly_labelled: set[int] = set()
        for row in new:
            day, modality, body_part = kinds[row["study_id"]]
            entry = counts[(row["site_id"], day, modality, body_part, row["finding"])]
            entry[0] += 1
            entry[1] += int(row["value"] == 1)
            if row["study_id"] not in previously_labelled and row["study_id"] not in newly_labelled:
                newly_labelled.add(row["study_id"])
                counts[(row["site_id"], day, modality, body_part, "")][0] += 1
        add_to_counters(
            self._session,
            LabelCount,
            ("site_id", "day", "modality", "body_part", "finding"),
            [
                {
                    "site_id": site,
                    "day": day,
                    "modality": modality,
                    "body_part": body_part,
                    "finding": finding,
                    "labelled": labelled,
                    "positives": positives,
                }
                for (site, day, modality, body_part, finding), (labelled, positives) in sorted(
                    counts.items()
                )
            ],
        )


def _studies_by_ref(
    session: Session, site: str, kind: str, refs: Sequence[str]
) -> dict[str, tuple[int, str]]:
    """``ref -> (study id, patient pseudonym)`` for the site's studies with these refs.

    An accession number may cover several studies; the row goes to the first catalogued.
    """
    column = Study.accession_key if kind == REF_ACCESSION else Study.study_uid
    found: dict[str, tuple[int, str]] = {}
    for ref, study_id, pseudonym in session.execute(
        select(column, Study.id, Patient.pseudonym)
        .join(Patient, Patient.id == Study.patient_id)
        .where(Study.site_id == site, column.in_(sorted(set(refs))))
        .order_by(Study.id)
    ):
        if ref is not None:  # the IN list never holds None; this is for the type checker
            found.setdefault(ref, (study_id, pseudonym))
    return found


# -- import -------------------------------------------------------------------------------


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


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


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
        Who is recorded in the import and the audit log; the login name by default.
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
        columns = _locate(sheet.header, mapping, site)
        pseudonymizer = Pseudonymizer(load_key(settings.resolved_key_file))
        rows, rejected = _parse_rows(sheet, columns, mapping, site, pseudonymizer)
        with sessions.begin() as session:
            lock_audit_chain(session)  # before any row: see lock_audit_chain
            result = _import(
                session, sheet, site, mapping, rows, rejected, actor or _actor(), force, progress
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
    rows: list[_Row],
    rejected: list[RejectedRow],
    actor: str,
    force: bool,
    progress: Callable[[int, int], None] | None,
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
    kind = REF_ACCESSION if mapping.study_key_kind == "accession_number" else REF_STUDY_UID
    labeller = _Labeller(session)
    row_ids: list[int] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        studies = _studies_by_ref(session, site, kind, [row.ref for row in chunk])
        labeller.load(study_id for study_id, _ in studies.values())
        values: list[dict[str, Any]] = []
        for offset, row in enumerate(chunk):
            match = studies.get(row.ref)
            status: RowStatus
            if match is None:
                status = "unmatched"
            elif row.patient is not None and row.patient != match[1]:
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


# -- re-match -----------------------------------------------------------------------------


@dataclass
class RematchResult:
    """What :func:`rematch_labels` did, per site: rows that found their study, by status."""

    by_site: dict[str, RowCounts] = field(default_factory=dict)
    labels_added: int = 0
    conflicts_flagged: int = 0

    @property
    def rows(self) -> int:
        """Rows that found their study."""
        return sum(counts.total for counts in self.by_site.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "labels_added": self.labels_added,
            "conflicts_flagged": self.conflicts_flagged,
            "sites": {site: asdict(counts) for site, counts in sorted(self.by_site.items())},
        }


def _pending_matches(session: Session) -> list[Any]:
    """Unmatched rows whose study is now catalogued: one query over the status index."""

    def joined(column: Any, kind: str) -> Any:
        return (
            select(
                LabelRow.id.label("row_id"),
                LabelRow.site_id,
                LabelRow.findings,
                Study.id.label("study_id"),
                Patient.pseudonym,
            )
            .join(Study, and_(Study.site_id == LabelRow.site_id, column == LabelRow.ref))
            .join(Patient, Patient.id == Study.patient_id)
            .where(LabelRow.status == "unmatched", LabelRow.ref_kind == kind)
        )

    both = union_all(
        joined(Study.accession_key, REF_ACCESSION), joined(Study.study_uid, REF_STUDY_UID)
    ).subquery()
    return list(session.execute(select(both).order_by(both.c.row_id, both.c.study_id)))


def rematch_labels(session: Session, *, actor: str = "system:labels") -> RematchResult:
    """Match the kept ``unmatched`` rows whose studies have arrived since, inside the
    caller's write transaction (the caller commits).

    The same rules as at import apply (patient check, duplicates, conflicts); rows are
    taken in import order, so the earliest row's value wins. When nothing is pending this
    is a single indexed query that writes nothing; otherwise it takes the audit chain's
    lock, matches, and appends one ``labels.rematch`` audit record. Receivers call it
    after an ingest; ``medai labels rematch`` runs it by hand.

    Parameters
    ----------
    session
        A session whose transaction may write (the caller commits or rolls back).
    actor
        Who is recorded in the audit log.

    Returns
    -------
    RematchResult
        Rows matched per site and status (empty when nothing was pending).
    """
    result = RematchResult()
    if not _pending_matches(session):
        return result
    lock_audit_chain(session)
    # Again under the lock: a concurrent re-match may have taken these rows meanwhile.
    pending = _pending_matches(session)
    labeller = _Labeller(session)
    labeller.load(row.study_id for row in pending)
    updates: list[dict[str, Any]] = []
    seen: set[int] = set()
    for row in pending:
        if row.row_id in seen:
            continue  # an accession number of several studies: the first catalogued wins
        seen.add(row.row_id)
        findings, patient = _split_findings(row.findings)
        status: RowStatus
        if patient is not None and patient != row.pseudonym:
            status = "mismatch"
        else:
            status = labeller.apply(row.row_id, row.study_id, row.site_id, findings)
        result.by_site.setdefault(row.site_id, RowCounts()).add(status)
        updates.append({"id": row.row_id, "status": status, "study_id": row.study_id})
    if not updates:
        return result
    for start in range(0, len(updates), _CHUNK):
        session.execute(update(LabelRow), updates[start : start + _CHUNK])
    labeller.write(lambda ref: ref)
    result.labels_added, result.conflicts_flagged = labeller.added, labeller.flagged
    append_audit(
        session, actor=actor, action="labels.rematch", subject=None, details=result.to_dict()
    )
    logger.info(
        "re-matched %d label rows: %d labels added, %d conflicts flagged",
        result.rows,
        result.labels_added,
        result.conflicts_flagged,
    )
    return result


# -- status -------------------------------------------------------------------------------


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
    for start in range(0, len(study_ids), _CHUNK):
        for study_id, stored in session.execute(
            select(LabelRow.study_id, LabelRow.findings).where(
                LabelRow.study_id.in_(study_ids[start : start + _CHUNK]),
                LabelRow.status.in_(("matched", "duplicate", "conflict")),
            )
        ):
            for finding, value in _split_findings(stored)[0].items():
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
