"""The campaign definition: the TOML file a data steward edits, validated into typed models.

A pure model: no database. The campaign as set up in the catalog, and the site look-ups
the receivers use, are :mod:`medai.collection.campaign.sites`; setting it up is
:mod:`medai.collection.campaign.setup`.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator, model_validator

from medai.collection.campaign.base import StrictModel, error_at
from medai.collection.campaign.label_mapping import LabelMapping
from medai.errors import CampaignError
from medai.tomlfile import format_validation_errors, read_toml

if TYPE_CHECKING:
    from medai.collection.deid import DeidOptions

__all__ = [
    "CampaignDefinition",
    "DeidentificationOptions",
    "SafePrivateTag",
    "SiteDefinition",
    "Target",
    "load_campaign",
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


class Target(StrictModel):
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


class SiteDefinition(StrictModel):
    """A hospital taking part: a short id, a display name, the AE titles it sends from.

    ``issuer`` names who assigns the PatientIDs in the site's files when they carry no
    IssuerOfPatientID: the site id by default, so two sites' ``1001`` are two patients.
    Sites sharing one MRN domain (or sending a national identifier) declare the same
    issuer, and the same ID there is then one patient.
    """

    id: str
    name: str = Field(min_length=1, max_length=200)
    ae_titles: list[str] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)
    issuer: str | None = Field(default=None, min_length=1, max_length=64)
    # Client certificates the site's AE titles must present over DICOM TLS (medai.tls:
    # "sha256:<fingerprint>" or "CN=<common name>"); empty: not bound to a certificate.
    tls_clients: list[str] = Field(default_factory=list)

    @field_validator("tls_clients")
    @classmethod
    def _tls_clients(cls, value: list[str]) -> list[str]:
        from medai.tls import parse_client_identity

        return [parse_client_identity(item) for item in value]

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("issuer must not be blank (leave it out to use the site id)")
        return value

    @property
    def patient_issuer(self) -> str:
        """The issuer as compared (upper case): the declared one, else the site id."""
        return (self.issuer or self.id).strip().upper()

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
                    raise error_at(f"[{index}]", str(exc)) from None
                if title in titles:
                    raise error_at(f"[{index}]", f"AE title {title!r} is listed twice")
            titles.append(title)
        return titles


class SafePrivateTag(StrictModel):
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


class DeidentificationOptions(StrictModel):
    """PS3.15 Annex E options of the campaign; all on unless the file turns them off."""

    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    retain_device_identity: bool = True
    clean_descriptors: bool = True
    safe_private_tags: list[SafePrivateTag] = Field(default_factory=list)
    # Clean Descriptors: clinical terms to keep beyond medai's vocabulary, and narrative
    # attributes (DICOM keywords, e.g. "ImageComments") cleaned instead of removed.
    extra_vocabulary: list[str] = Field(default_factory=list)
    keep_narrative: list[str] = Field(default_factory=list)

    @field_validator("extra_vocabulary")
    @classmethod
    def _terms(cls, value: list[str]) -> list[str]:
        for index, term in enumerate(value):
            if not term.strip():
                raise error_at(f"[{index}]", "a vocabulary term must not be empty")
        return value

    @field_validator("keep_narrative")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        if value:
            # Imported only when used: a campaign without it never loads the DICOM stack.
            from medai.collection.deid.narrative import kept_narrative_tags

            for index, keyword in enumerate(value):
                try:
                    kept_narrative_tags([keyword])
                except ValueError as exc:
                    raise error_at(f"[{index}]", str(exc)) from None
        return value

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
            extra_vocabulary=frozenset(self.extra_vocabulary),
            keep_narrative=frozenset(self.keep_narrative),
        )


class CampaignDefinition(StrictModel):
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
                raise error_at(
                    f"sites[{i}].id", f"duplicate site id {site.id!r} (also sites[{ids[site.id]}])"
                )
            ids[site.id] = i
            for j, title in enumerate(site.ae_titles):
                if title in owners:
                    raise error_at(
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
                raise error_at(
                    f"labels.sites.{site_id}",
                    f"no site {site_id!r} in this campaign (its sites: {', '.join(ids)})",
                )
        for i, site in enumerate(self.sites):
            mapped = self.labels.for_site(site.id).findings
            for j, target in enumerate(site.targets):
                if target.finding is not None and target.finding not in mapped:
                    where = f"labels.sites.{site.id}" if site.id in self.labels.sites else "labels"
                    raise error_at(
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
