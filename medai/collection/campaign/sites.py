"""The campaign as set up in the catalog: its stored definition and the site look-ups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import select

from medai.catalog.models import Campaign, Site
from medai.collection.campaign.definition import CampaignDefinition, Target
from medai.errors import CampaignError, UnknownSite
from medai.tomlfile import format_validation_errors

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["get_site", "site_for_ae_title", "site_targets", "stored_campaign"]


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
