"""The campaign's ``[labels]`` table: how each site's label sheet (RIS export) is read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medai.collection.campaign.base import StrictModel, error_at

__all__ = [
    "DEFAULT_NEGATIVE",
    "DEFAULT_POSITIVE",
    "LabelMapping",
    "LabelSiteOverride",
    "SiteLabelMapping",
    "StudyKeyKind",
    "infer_study_key_kind",
]

StudyKeyKind = Literal["accession_number", "study_uid"]
"""What a label sheet's study key column holds: RIS accession numbers or StudyInstanceUIDs."""

DEFAULT_POSITIVE = ("1", "yes", "true", "positive", "present")
"""Cell values read as "finding present" unless the mapping lists its own (case is ignored)."""
DEFAULT_NEGATIVE = ("0", "no", "false", "negative", "absent")
"""Cell values read as "finding absent" unless the mapping lists its own (case is ignored)."""

# Finding names are catalog keys (study_labels.finding) and target names: short slugs.
_FINDING = re.compile(r"[a-z][a-z0-9_]{0,63}")
_COLUMN_MAX = 200


def infer_study_key_kind(column: str) -> StudyKeyKind | None:
    """Tell from a column's name whether it holds accession numbers or study UIDs.

    ``accession_number``, ``Accession No.``, ``ACC`` name accession numbers;
    ``study_instance_uid``, ``StudyInstanceUID``, ``Study UID`` name study UIDs. Any other
    name gives None: the mapping must then say ``study_key_kind``.
    """
    name = re.sub(r"[^a-z0-9]", "", column.casefold())
    if "accession" in name or name in {"acc", "accno", "accnr", "accnum"}:
        return "accession_number"
    if "study" in name and "uid" in name:
        return "study_uid"
    return None


def _check_column(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > _COLUMN_MAX:
        raise ValueError(f"column name longer than {_COLUMN_MAX} characters")
    return value


def _check_findings(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    findings: dict[str, str] = {}
    for name, column in value.items():
        finding = name.strip().lower()
        if not _FINDING.fullmatch(finding):
            raise error_at(
                name,
                "finding name must be 1-64 lowercase letters, digits or '_', starting with a "
                "letter (e.g. 'nodule')",
            )
        if finding in findings:
            raise error_at(name, f"finding {finding!r} is listed twice")
        if not isinstance(column, str) or not column.strip():
            raise error_at(name, "the column name is empty")
        findings[finding] = _check_column(column) or ""
    return findings


def _check_spellings(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    spellings: list[str] = []
    for index, spelling in enumerate(value):
        word = spelling.strip().casefold()
        if not word:
            raise error_at(
                f"[{index}]", "a spelling is empty (blank cells already mean 'not reported')"
            )
        if word in spellings:
            raise error_at(f"[{index}]", f"spelling {word!r} is listed twice")
        spellings.append(word)
    return spellings


@dataclass(frozen=True)
class SiteLabelMapping:
    """The label mapping that applies to one site's sheets (overrides resolved).

    ``findings`` maps each finding name to the column holding it; ``positive`` and
    ``negative`` are the accepted cell values, case-folded. Column names are matched
    against a sheet's header ignoring case and surrounding spaces.
    """

    study_key: str
    study_key_kind: StudyKeyKind
    patient_id: str | None
    findings: dict[str, str]
    positive: frozenset[str]
    negative: frozenset[str]


class LabelSiteOverride(StrictModel):
    """What differs in one site's label sheets; each field given replaces the campaign-wide one.

    ``findings``, when given, replaces the whole findings table (so a site may report fewer
    findings); ``patient_id = ""`` says the site's sheets have no patient id column. A site
    giving its own ``study_key`` gives its own ``study_key_kind`` too, or has it inferred
    from the column name: the campaign-wide kind belongs to the campaign-wide column.
    """

    study_key: str | None = Field(default=None, min_length=1)
    study_key_kind: StudyKeyKind | None = None
    patient_id: str | None = None
    findings: dict[str, str] | None = Field(default=None, min_length=1)
    positive: list[str] | None = Field(default=None, min_length=1)
    negative: list[str] | None = Field(default=None, min_length=1)

    _columns = field_validator("study_key", "patient_id")(_check_column)
    _findings = field_validator("findings")(_check_findings)
    _spellings = field_validator("positive", "negative")(_check_spellings)


class LabelMapping(StrictModel):
    """How to read the sites' label sheets (RIS exports): the ``[labels]`` table.

    ``study_key`` is the column linking a row to its study and ``study_key_kind`` what it
    holds (``accession_number`` or ``study_uid``; inferred from the column name when left
    out). ``patient_id``, if given, names a column whose value must belong to the study's
    patient (checked through the pseudonym), else the row is refused as a mismatch.
    ``findings`` maps finding name to column; a cell is positive or negative when it is one
    of ``positive`` / ``negative`` (case ignored), not reported when blank, and any other
    value rejects the row. ``sites`` holds per-site overrides (:class:`LabelSiteOverride`).
    """

    study_key: str = Field(min_length=1)
    study_key_kind: StudyKeyKind | None = None
    patient_id: str | None = Field(default=None, min_length=1)
    findings: dict[str, str] = Field(min_length=1)
    positive: list[str] = Field(default_factory=lambda: list(DEFAULT_POSITIVE), min_length=1)
    negative: list[str] = Field(default_factory=lambda: list(DEFAULT_NEGATIVE), min_length=1)
    sites: dict[str, LabelSiteOverride] = Field(default_factory=dict)

    _columns = field_validator("study_key", "patient_id")(_check_column)
    _findings = field_validator("findings")(_check_findings)
    _spellings = field_validator("positive", "negative")(_check_spellings)

    @model_validator(mode="after")
    def _resolvable(self) -> LabelMapping:
        self._resolve(None)
        for site_id in self.sites:
            self._resolve(site_id)
        return self

    def for_site(self, site_id: str) -> SiteLabelMapping:
        """The mapping for ``site_id``'s sheets: the campaign-wide one with its override."""
        return self._resolve(site_id)

    def _resolve(self, site_id: str | None) -> SiteLabelMapping:
        override = self.sites.get(site_id) if site_id is not None else None
        prefix = f"sites.{site_id}." if override is not None else ""

        def pick(name: str) -> Any:
            given = getattr(override, name) if override is not None else None
            return given if given is not None else getattr(self, name)

        study_key: str = pick("study_key")
        if not study_key:
            raise error_at(prefix + "study_key", "the column name is empty")
        # The kind goes with the column: a site naming its own key column does not inherit
        # the campaign-wide kind (it says its own, or it is inferred from the name).
        kind: StudyKeyKind | None = (
            override.study_key_kind
            if override is not None and override.study_key is not None
            else pick("study_key_kind")
        )
        if kind is None:
            kind = infer_study_key_kind(study_key)
            if kind is None:
                raise error_at(
                    prefix + "study_key_kind",
                    f"cannot tell from the column name {study_key!r} whether it holds accession "
                    'numbers or study UIDs: set study_key_kind = "accession_number" or '
                    '"study_uid"',
                )
        patient: str | None = pick("patient_id") or None
        findings: dict[str, str] = pick("findings")
        roles = [("study_key", study_key)]
        if patient:
            roles.append(("patient_id", patient))
        roles += [(f"findings.{name}", column) for name, column in findings.items()]
        seen: dict[str, str] = {}
        for role, column in roles:
            folded = column.casefold()
            if folded in seen:
                raise error_at(
                    prefix + role, f"column {column!r} is already the {seen[folded]} column"
                )
            seen[folded] = role
        positive, negative = frozenset(pick("positive")), frozenset(pick("negative"))
        both = sorted(positive & negative)
        if both:
            raise error_at(
                prefix + "negative", f"{both[0]!r} is both a positive and a negative spelling"
            )
        return SiteLabelMapping(
            study_key=study_key,
            study_key_kind=kind,
            patient_id=patient,
            findings=dict(findings),
            positive=positive,
            negative=negative,
        )
