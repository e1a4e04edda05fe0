"""A sheet's rows through the label mapping: columns located, cells parsed, keys hashed."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from medai.collection.campaign.label_mapping import SiteLabelMapping
from medai.collection.labels.reading import LabelSheet
from medai.collection.pseudonymize import Pseudonymizer
from medai.errors import LabelSheetError

__all__ = [
    "CHUNK",
    "PSEUDONYMIZED_STUDY_UID",
    "REF_ACCESSION",
    "REF_STUDY_UID",
    "ROW_STATUSES",
    "Columns",
    "ParsedRow",
    "RejectedRow",
    "RowCounts",
    "RowPatient",
    "RowStatus",
    "locate_columns",
    "parse_rows",
    "split_findings",
]

REF_ACCESSION = "accession"
"""``LabelRow.ref_kind`` of a row keyed by the keyed hash of an accession number."""
REF_STUDY_UID = "study_uid"
"""``LabelRow.ref_kind`` of a row keyed by the pseudonymized StudyInstanceUID."""
PSEUDONYMIZED_STUDY_UID = "PseudonymizedStudyInstanceUID"
"""A sheet column holding study UIDs pseudonymized already (a clinician feedback export):
used as they are, never hashed again, and preferred to the mapping's study key column."""

RowStatus = Literal["matched", "duplicate", "conflict", "mismatch", "unmatched"]
ROW_STATUSES: tuple[RowStatus, ...] = ("matched", "duplicate", "conflict", "mismatch", "unmatched")

# The row's patient, kept for the check when its study arrives: the keyed hash of the site's
# own PatientID (what the study keeps, migration 0006), and the ID-only pseudonym of before
# 0006 (rows imported before then hold only that one, under the old key).
_PATIENT_KEY = "@patient"
_SITE_PATIENT_KEY = "@site_patient"
# Rows per round trip: bounded IN lists and executemany batches on both databases.
CHUNK = 500
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64
# Excel writes a whole number it stored as a float as "1.0".
_WHOLE_FLOAT = re.compile(r"([0-9]+)\.0+")


@dataclass(frozen=True)
class Columns:
    """Where each mapped column is in a sheet's header."""

    study_key: int
    patient_id: int | None
    findings: dict[str, int]
    names: list[str]
    pseudonymized: bool = False  # study_key is the PSEUDONYMIZED_STUDY_UID column


def locate_columns(header: Sequence[str], mapping: SiteLabelMapping, site: str) -> Columns:
    """Find the mapped columns in ``header`` (case and spaces ignored).

    Raises :class:`LabelSheetError` naming the missing or repeated columns.
    """
    positions: dict[str, list[int]] = defaultdict(list)
    for position, name in enumerate(header):
        if name.strip():
            positions[name.strip().casefold()].append(position)
    pseudonymized = PSEUDONYMIZED_STUDY_UID.casefold() in positions
    if pseudonymized:
        # A feedback export: keyed by research pseudonyms, no patient column, and a
        # finding's column named as the mapping says or by the finding itself.
        # Findings the export lacks are left out (their columns would be blank anyway).
        findings = [
            (f"findings.{f}", column if column.casefold() in positions else f)
            for f, column in mapping.findings.items()
        ]
        present = [(role, column) for role, column in findings if column.casefold() in positions]
        wanted = [("study_key", PSEUDONYMIZED_STUDY_UID), *(present or findings)]
    else:
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
    return Columns(
        study_key=index["study_key"],
        patient_id=index.get("patient_id"),
        findings={f: index[f"findings.{f}"] for f in mapping.findings if f"findings.{f}" in index},
        names=list(header),
        pseudonymized=pseudonymized,
    )


@dataclass(frozen=True)
class RejectedRow:
    """A sheet row that was not imported, and why (no value from the sheet)."""

    row: int
    reason: str


@dataclass(frozen=True)
class RowPatient:
    """Who a row says the patient is: the site's ID, keyed-hashed two ways (None: unknown)."""

    site_key: str | None = None
    legacy: str | None = None

    def matches(self, study_patient_key: str | None, patient_pseudonym: str) -> bool:
        """Whether a study of this patient may take the row's labels.

        A study catalogued since migration 0006 keeps the site-PatientID hash; one from
        before has only its patient's ID-only (``v1``) pseudonym. When neither side
        carries what the other has, nothing can be checked and the row is taken.
        """
        if study_patient_key is not None and self.site_key is not None:
            return study_patient_key == self.site_key
        if study_patient_key is None and self.legacy is not None:
            return patient_pseudonym == self.legacy
        return True


@dataclass(frozen=True)
class ParsedRow:
    """An accepted row: its number, its study key's hash, its findings, its patient."""

    number: int
    ref: str
    findings: dict[str, int]
    patient: RowPatient | None

    def stored_findings(self) -> dict[str, Any]:
        stored: dict[str, Any] = dict(self.findings)
        if self.patient is not None:
            stored[_PATIENT_KEY] = self.patient.legacy
            stored[_SITE_PATIENT_KEY] = self.patient.site_key
        return stored


def split_findings(stored: dict[str, Any]) -> tuple[dict[str, int], RowPatient | None]:
    """A stored row's findings and its patient (None without a patient column)."""
    findings = {k: int(v) for k, v in stored.items() if not k.startswith("@")}
    legacy, site_key = stored.get(_PATIENT_KEY), stored.get(_SITE_PATIENT_KEY)
    if legacy is None and site_key is None:
        return findings, None
    return findings, RowPatient(
        site_key=str(site_key) if site_key is not None else None,
        legacy=str(legacy) if legacy is not None else None,
    )


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


def parse_rows(
    sheet: LabelSheet,
    columns: Columns,
    mapping: SiteLabelMapping,
    site: str,
    pseudonymizer: Pseudonymizer,
) -> tuple[list[ParsedRow], list[RejectedRow]]:
    """The sheet's rows, hashed through ``pseudonymizer``: accepted, and rejected with why."""
    rows: list[ParsedRow] = []
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
        if columns.pseudonymized:
            if len(key) > _UID_MAX or not _UID.fullmatch(key):
                rejected.append(RejectedRow(number, f"column {key_name!r} is not a DICOM UID"))
                continue
            ref = key  # pseudonymized already: hashing it again would match nothing
        elif mapping.study_key_kind == "study_uid":
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
            patient = RowPatient(
                site_key=pseudonymizer.site_patient_key(site, patient_id),
                legacy=pseudonymizer.patient_pseudonym(None, patient_id),
            )
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
            rows.append(ParsedRow(number, ref, findings, patient))
    return rows, rejected


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
