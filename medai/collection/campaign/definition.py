"""The campaign definition: the TOML file a data steward edits, validated into typed models.

Also the site look-ups the receivers use; setting a campaign up in the catalog is
:mod:`medai.collection.campaign.setup`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import select

from medai.catalog.models import Campaign, Site
from medai.errors import CampaignError, UnknownSite
from medai.tomlfile import format_validation_errors, read_toml

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from medai.collection.deid import DeidOptions

__all__ = [
    "CampaignDefinition",
    "DEFAULT_NEGATIVE",
    "DEFAULT_POSITIVE",
    "DeidentificationOptions",
    "LabelMapping",
    "LabelSiteOverride",
    "SafePrivateTag",
    "SiteDefinition",
    "SiteLabelMapping",
    "StudyKeyKind",
    "Target",
    "get_site",
    "load_campaign",
    "site_for_ae_title",
    "site_targets",
    "stored_campaign",
    "validate_ae_title",
]

_SITE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_AE_TITLE_MAX = 16


def validate_ae_title(value: str) -> str:
    """Check an Application Entity title (DICOM VR AE) and return it without padding.

    Parameters
    ----------
    value
        The AE title as written in the campaign file or offered by a peer.

    Returns
    -------
    str
        The title with leading and trailing spaces removed (they are not significant).

    Raises
    ------
    ValueError
        If the title is empty, all spaces, longer than 16 characters, not ASCII, or holds a
        backslash or a control character.
    """
    if not value.strip(" "):
        raise ValueError("AE title is empty or all spaces")
    if len(value) > _AE_TITLE_MAX:
        raise ValueError(f"AE title longer than {_AE_TITLE_MAX} characters")
    if not value.isascii():
        raise ValueError("AE title must use ASCII characters only")
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("AE title must not contain a backslash or control characters")
    return value.strip(" ")


class _Model(BaseModel):
    # Unknown keys are refused so a misspelt option fails loudly instead of being ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Model):
    """How many studies a site should send that match every criterion given.

    A criterion left out matches anything; targets of one site may overlap (a CT chest study
    with a nodule counts towards both a ``CT/CHEST`` and a ``finding = "nodule"`` target).
    Modality and body part are upper-cased to match normalized DICOM metadata; findings are
    lower-cased to match label-sheet names.
    """

    modality: str | None = Field(default=None, min_length=1, max_length=16)
    body_part: str | None = Field(default=None, min_length=1, max_length=64)
    finding: str | None = Field(default=None, min_length=1, max_length=64)
    studies: int = Field(ge=0)
    instances: int | None = Field(default=None, ge=0)

    @field_validator("modality", "body_part")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.strip().upper() if value is not None else None

    @field_validator("finding")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.strip().lower() if value is not None else None


class SiteDefinition(_Model):
    """A hospital taking part: a short id, a display name, the AE titles it sends from."""

    id: str
    name: str = Field(min_length=1, max_length=200)
    ae_titles: list[str] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SITE_ID.fullmatch(value):
            raise ValueError(
                "site id must be 1-64 lowercase letters, digits or '-', starting with a letter "
                "or digit (e.g. 'site-a')"
            )
        return value

    @field_validator("ae_titles", mode="before")
    @classmethod
    def _ae_titles(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value  # pydantic reports the wrong type itself
        titles: list[Any] = []
        for index, title in enumerate(value):
            if isinstance(title, str):
                try:
                    title = validate_ae_title(title)
                except ValueError as exc:
                    raise _at(f"[{index}]", str(exc)) from None
                if title in titles:
                    raise _at(f"[{index}]", f"AE title {title!r} is listed twice")
            titles.append(title)
        return titles


class SafePrivateTag(_Model):
    """A private element known to hold no identifying data, kept by de-identification.

    ``element`` is the element's offset in its private block (``0x00``-``0xFF``); a full
    element number (``0x1000``-``0xFFFF``, e.g. ``0x1010`` of ``(0019,1010)``) is accepted
    and reduced to its offset, because the block number varies from file to file.
    """

    creator: str = Field(min_length=1, max_length=64)
    element: int

    @field_validator("element")
    @classmethod
    def _offset(cls, value: int) -> int:
        if 0 <= value <= 0xFF:
            return value
        if 0x1000 <= value <= 0xFFFF:
            return value & 0xFF
        raise ValueError("element must be 0x00-0xFF (offset in the private block) or 0x1000-0xFFFF")


class DeidentificationOptions(_Model):
    """PS3.15 Annex E options of the campaign; all on unless the file turns them off."""

    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    retain_device_identity: bool = True
    clean_descriptors: bool = True
    safe_private_tags: list[SafePrivateTag] = Field(default_factory=list)

    def to_deid_options(self) -> DeidOptions:
        """The options in the form :class:`medai.collection.deid.Deidentifier` takes."""
        # Imported here so reading a campaign file does not load the DICOM stack.
        from medai.collection.deid import DeidOptions

        return DeidOptions(
            retain_longitudinal_modified_dates=self.retain_longitudinal_modified_dates,
            retain_patient_characteristics=self.retain_patient_characteristics,
            retain_device_identity=self.retain_device_identity,
            clean_descriptors=self.clean_descriptors,
            safe_private_tags=frozenset((t.creator, t.element) for t in self.safe_private_tags),
        )


# -- label sheets -------------------------------------------------------------------------

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
            raise _at(
                name,
                "finding name must be 1-64 lowercase letters, digits or '_', starting with a "
                "letter (e.g. 'nodule')",
            )
        if finding in findings:
            raise _at(name, f"finding {finding!r} is listed twice")
        if not isinstance(column, str) or not column.strip():
            raise _at(name, "the column name is empty")
        findings[finding] = _check_column(column) or ""
    return findings


def _check_spellings(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    spellings: list[str] = []
    for index, spelling in enumerate(value):
        word = spelling.strip().casefold()
        if not word:
            raise _at(f"[{index}]", "a spelling is empty (blank cells already mean 'not reported')")
        if word in spellings:
            raise _at(f"[{index}]", f"spelling {word!r} is listed twice")
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


class LabelSiteOverride(_Model):
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


class LabelMapping(_Model):
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
            raise _at(prefix + "study_key", "the column name is empty")
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
                raise _at(
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
                raise _at(prefix + role, f"column {column!r} is already the {seen[folded]} column")
            seen[folded] = role
        positive, negative = frozenset(pick("positive")), frozenset(pick("negative"))
        both = sorted(positive & negative)
        if both:
            raise _at(
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


class CampaignDefinition(_Model):
    """A whole campaign file: when it runs, who sends what, and how data is de-identified.

    ``labels`` is the label-sheet mapping (:class:`LabelMapping`): which column of a site's
    sheet holds the study key, the patient id and each finding. A campaign without one
    cannot import label sheets; with one, every finding a target names must be mapped for
    the target's site, so no target is out of reach by a typo.
    """

    name: str = Field(min_length=1, max_length=200)
    start_date: dt.date
    length_days: int = Field(default=90, ge=1, le=3650)
    sites: list[SiteDefinition] = Field(min_length=1)
    deidentification: DeidentificationOptions = Field(default_factory=DeidentificationOptions)
    labels: LabelMapping | None = None

    @field_validator("start_date", mode="before")
    @classmethod
    def _date_only(cls, value: Any) -> Any:
        # TOML has date-times too; a start "date" with a time of day is a mistake, not a date.
        if isinstance(value, dt.datetime):
            raise ValueError("start_date must be a date (YYYY-MM-DD), not a date-time")
        return value

    @model_validator(mode="after")
    def _unique_across_sites(self) -> CampaignDefinition:
        ids: dict[str, int] = {}
        owners: dict[str, str] = {}
        for i, site in enumerate(self.sites):
            if site.id in ids:
                raise _at(
                    f"sites[{i}].id", f"duplicate site id {site.id!r} (also sites[{ids[site.id]}])"
                )
            ids[site.id] = i
            for j, title in enumerate(site.ae_titles):
                if title in owners:
                    raise _at(
                        f"sites[{i}].ae_titles[{j}]",
                        f"AE title {title!r} is already used by site {owners[title]!r}",
                    )
                owners[title] = site.id
        if self.labels is not None:
            self._labels_fit_sites(ids)
        return self

    def _labels_fit_sites(self, ids: dict[str, int]) -> None:
        assert self.labels is not None
        for site_id in self.labels.sites:
            if site_id not in ids:
                raise _at(
                    f"labels.sites.{site_id}",
                    f"no site {site_id!r} in this campaign (its sites: {', '.join(ids)})",
                )
        for i, site in enumerate(self.sites):
            mapped = self.labels.for_site(site.id).findings
            for j, target in enumerate(site.targets):
                if target.finding is not None and target.finding not in mapped:
                    where = f"labels.sites.{site.id}" if site.id in self.labels.sites else "labels"
                    raise _at(
                        f"sites[{i}].targets[{j}].finding",
                        f"finding {target.finding!r} has no column in {where}.findings, so no "
                        "study could count towards this target",
                    )

    @property
    def last_day(self) -> dt.date:
        """The last day of the campaign (``start_date`` is day 1)."""
        return self.start_date + dt.timedelta(days=self.length_days - 1)

    def site(self, site_id: str) -> SiteDefinition | None:
        """The site with this id, or None."""
        return next((s for s in self.sites if s.id == site_id), None)


def _at(field: str, message: str) -> PydanticCustomError:
    """An error for a field below the one being validated; ``field`` is its relative path."""
    return PydanticCustomError("campaign", "{message}", {"message": message, "field": field})


def load_campaign(path: Path | str) -> CampaignDefinition:
    """Read and validate a campaign TOML file.

    Parameters
    ----------
    path
        The campaign file, e.g. ``collection/example-campaign.toml``.

    Returns
    -------
    CampaignDefinition
        The validated definition.

    Raises
    ------
    CampaignError
        If the file cannot be read, is not valid TOML, or a field is missing, of the wrong
        type or invalid; the message names the file and each bad field, e.g.
        ``collection/x.toml: sites[1].ae_titles[0]: AE title longer than 16 characters``.
    """
    data = read_toml(path, error=CampaignError, missing="no such campaign file")
    try:
        return CampaignDefinition.model_validate(data)
    except ValidationError as exc:
        raise CampaignError(format_validation_errors(str(path), exc)) from None


# -- the campaign as set up in the catalog (by campaign_setup.init_campaign) -------------


def stored_campaign(session: Session) -> CampaignDefinition:
    """The definition of the campaign this catalog serves.

    Raises
    ------
    CampaignError
        If no campaign has been set up in this catalog.
    """
    row = session.scalars(select(Campaign).order_by(Campaign.id)).first()
    if row is None:
        raise CampaignError("no campaign in this catalog: run `medai campaign init FILE` first")
    try:
        return CampaignDefinition.model_validate(row.definition)
    except ValidationError as exc:
        # Set up by an older medai whose campaign file format has since changed.
        raise CampaignError(
            format_validation_errors("the campaign stored in the catalog", exc)
            + "\nrun `medai campaign init FILE` again with the current campaign file"
        ) from None


def _unknown(session: Session, what: str) -> UnknownSite:
    known = ", ".join(session.scalars(select(Site.id).order_by(Site.id))) or (
        "none (run `medai campaign init FILE` first)"
    )
    return UnknownSite(f"{what}; the campaign's sites are: {known}")


def get_site(session: Session, site_id: str) -> Site:
    """The catalog row of the site with this campaign id.

    Raises
    ------
    UnknownSite
        If the campaign has no such site; the message lists the known site ids.
    """
    site = session.get(Site, site_id)
    if site is None:
        raise _unknown(session, f"unknown site {site_id!r}")
    return site


def site_for_ae_title(session: Session, ae_title: str) -> Site:
    """The site that sends from this AE title (as a C-STORE peer's calling AE title).

    Leading and trailing spaces are ignored, as the standard says; case is significant.

    Raises
    ------
    UnknownSite
        If no site of the campaign lists this AE title; the message lists the known site ids.
    """
    wanted = ae_title.strip(" ")
    # A handful of sites: reading them all is cheaper than a dialect-specific JSON query.
    for site in session.scalars(select(Site).order_by(Site.id)):
        if wanted in site.ae_titles:
            return site
    raise _unknown(session, f"no site sends from AE title {wanted!r}")


def site_targets(site: Site) -> list[Target]:
    """The targets of a catalog site row (stored as ``{"items": [...]}``)."""
    return [Target.model_validate(t) for t in site.targets.get("items", [])]
