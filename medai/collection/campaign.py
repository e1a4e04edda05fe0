"""The campaign definition: the TOML file a data steward edits, validated into typed models.

Also the campaign's API for the rest of medai: :func:`load_campaign`, :func:`init_campaign`
(from :mod:`medai.collection.campaign_setup`) and the site look-ups the receivers use.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import select

from medai.catalog.models import Campaign, Site
from medai.collection.campaign_setup import InitResult, init_campaign
from medai.errors import CampaignError, UnknownSite

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from medai.collection.deid import DeidOptions

__all__ = [
    "CampaignDefinition",
    "DeidentificationOptions",
    "InitResult",
    "SafePrivateTag",
    "SiteDefinition",
    "Target",
    "get_site",
    "init_campaign",
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


class CampaignDefinition(_Model):
    """A whole campaign file: when it runs, who sends what, and how data is de-identified.

    ``labels`` is the label-sheet column mapping (which column of a site's sheet holds the
    study key and each finding). It is kept as written for now; the 90-day campaign issue
    gives it a schema for label import.
    """

    name: str = Field(min_length=1, max_length=200)
    start_date: dt.date
    length_days: int = Field(default=90, ge=1, le=3650)
    sites: list[SiteDefinition] = Field(min_length=1)
    deidentification: DeidentificationOptions = Field(default_factory=DeidentificationOptions)
    labels: dict[str, Any] = Field(default_factory=dict)

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
        return self

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


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = _field_path(tuple(error["loc"]))
        extra = (error.get("ctx") or {}).get("field")
        if extra:
            loc = f"{loc}.{extra}" if loc and not extra.startswith("[") else loc + extra
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling)"
        lines.append(f"{source}: {loc or '(top level)'}: {message}")
    return "\n".join(lines)


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
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CampaignError(f"{source}: no such campaign file") from None
    except OSError as exc:
        raise CampaignError(f"{source}: cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{source}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError:
        raise CampaignError(f"{source}: TOML syntax error: the file is not UTF-8") from None
    try:
        return CampaignDefinition.model_validate(data)
    except ValidationError as exc:
        raise CampaignError(_format_errors(source, exc)) from None


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
    return CampaignDefinition.model_validate(row.definition)


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
