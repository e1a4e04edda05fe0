"""Setting up a campaign: migrate the catalog, make the key, record the campaign and its sites.

Use it through :mod:`medai.collection.campaign.definition`, which re-exports :func:`init_campaign`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import create_engine_for, session_factory, upgrade
from medai.catalog.models import Campaign, Patient, Site, Study
from medai.collection.campaign.definition import CampaignDefinition, SiteDefinition
from medai.collection.key_guard import RESTORE_HINT, check_key
from medai.errors import CampaignError, KeyMismatch
from medai.keyfile import ensure_key_file, key_fingerprint, load_key

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from medai.config import Settings

__all__ = ["InitResult", "init_campaign"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitResult:
    """What :func:`init_campaign` did; every list holds site ids.

    ``database`` is the catalog URL with any password hidden, safe to print.
    """

    campaign: str
    campaign_created: bool
    campaign_updated: bool
    sites_created: list[str]
    sites_updated: list[str]
    sites_unchanged: list[str]
    # Sites in the catalog that the file no longer lists; kept, as data may refer to them.
    sites_not_in_definition: list[str]
    key_file: Path
    key_created: bool
    database: str
    definition_sha256: str


def _site_values(site: SiteDefinition) -> dict[str, Any]:
    return {
        "name": site.name,
        "ae_titles": list(site.ae_titles),
        # The column is a JSON object, so the target list sits under one key.
        "targets": {"items": [t.model_dump(mode="json") for t in site.targets]},
        # Normalized, so the catalog holds the issuer exactly as pseudonyms compare it.
        "issuer": site.patient_issuer,
    }


def _check_issuer_change(session: Session, site: Site, issuer: str) -> None:
    """Refuse a new issuer for a site whose patients are already pseudonymized under the old.

    The issuer is part of every patient pseudonym: changing it would make the site's
    next studies new patients, split from their earlier ones. Patients catalogued
    before 0006 ("v1") do not count: they keep their pseudonyms whatever the issuer.
    """
    if (site.issuer or site.id.upper()) == issuer:
        return
    used = session.scalar(
        select(Study.id)
        .join(Patient, Patient.id == Study.patient_id)
        .where(Study.site_id == site.id, Patient.scheme != "v1")
        .limit(1)
    )
    if used is not None:
        raise CampaignError(
            f"site {site.id!r} already sent patients under issuer {site.issuer or site.id!r}: "
            f"changing it to {issuer!r} would split each of them into two patients; keep the "
            "issuer (or set up a new campaign)"
        )


def init_campaign(
    definition: CampaignDefinition, settings: Settings, *, actor: str | None = None
) -> InitResult:
    """Set up (or bring up to date) the campaign in the catalog of ``settings``.

    Upgrades the catalog schema, creates the pseudonymization key file if there is none and
    the catalog has no campaign yet (an existing key is reused, never overwritten), records
    the key's fingerprint, inserts or updates the campaign row and the site rows, and appends
    a ``campaign.init`` audit record (and ``campaign.key-create`` when the key was created).
    Running it again with the same definition changes nothing but the audit log.

    Parameters
    ----------
    definition
        The validated campaign, from :func:`~medai.collection.campaign.definition.load_campaign`.
    settings
        Where the catalog and the key file are.
    actor
        Who is recorded in the audit log; :func:`medai.audit.actors.operator` by default.

    Returns
    -------
    InitResult
        What was created, updated or reused.

    Raises
    ------
    CampaignError
        If the catalog already serves a campaign with another name.
    KeyFileError
        If an existing key file cannot be read or is malformed.
    KeyMismatch
        If the catalog already has a campaign and the key file is missing or is not the key
        whose fingerprint the catalog holds: a new key is never made for an existing campaign.
    """
    # A new home is private (0700): it holds the catalog and the key files (`medai doctor`).
    if not settings.resolved_home.exists():
        settings.resolved_home.mkdir(parents=True, mode=0o700)
    url = settings.resolved_database_url
    engine = create_engine_for(url)
    try:
        upgrade(engine)
        key_file = settings.resolved_key_file
        key_created, fingerprint, recording = _campaign_key(engine, key_file, definition.name)
        document = definition.model_dump(mode="json")
        digest = hashlib.sha256(
            json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        created: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        actor = actor or actors.operator()
        with audited_transaction(engine) as session:
            rows = list(session.scalars(select(Campaign).order_by(Campaign.id)))
            others = [r.name for r in rows if r.name != definition.name]
            if others:
                raise CampaignError(
                    f"this catalog already serves campaign {others[0]!r}; use another "
                    "MEDAI_HOME or MEDAI_DATABASE_URL for a new campaign, or keep its name"
                )
            row = rows[0] if rows else None
            campaign_created = row is None
            campaign_updated = row is not None and (
                row.definition != document
                or row.start_date != definition.start_date
                or row.length_days != definition.length_days
            )
            if row is None:
                row = Campaign(name=definition.name)
                session.add(row)
            if row.key_fingerprint is None:
                row.key_fingerprint = fingerprint
            elif row.key_fingerprint != fingerprint:  # another init won a race with its key
                raise KeyMismatch(
                    f"this catalog's campaign uses another key (fingerprint "
                    f"{row.key_fingerprint}) than {key_file} ({fingerprint}): {RESTORE_HINT}"
                )
            row.start_date = definition.start_date
            row.length_days = definition.length_days
            row.definition = document

            existing = {s.id: s for s in session.scalars(select(Site))}
            for site in definition.sites:
                values = _site_values(site)
                current = existing.get(site.id)
                if current is None:
                    session.add(Site(id=site.id, **values))
                    created.append(site.id)
                elif {k: getattr(current, k) for k in values} != values:
                    _check_issuer_change(session, current, values["issuer"])
                    for key, value in values.items():
                        setattr(current, key, value)
                    updated.append(site.id)
                else:
                    unchanged.append(site.id)
            stale = sorted(set(existing) - {s.id for s in definition.sites})
            if key_created:
                # The key decides every pseudonym from now on: its creation is on the record
                # (by fingerprint; the key itself never leaves its file).
                append_audit(
                    session,
                    actor=actor,
                    action="campaign.key-create",
                    subject=definition.name,
                    details={"fingerprint": fingerprint},
                )
            elif recording:
                append_audit(
                    session,
                    actor=actor,
                    action="campaign.key-fingerprint",
                    subject=definition.name,
                    details={"fingerprint": fingerprint},
                )
            append_audit(
                session,
                actor=actor,
                action="campaign.init",
                subject=definition.name,
                details={
                    "definition_sha256": digest,
                    "campaign_created": campaign_created,
                    "campaign_updated": campaign_updated,
                    "sites_created": created,
                    "sites_updated": updated,
                    "key_file_created": key_created,
                },
            )
    finally:
        engine.dispose()
    if recording and not key_created:
        logger.info(
            "the catalog kept no campaign key fingerprint: recorded %s, the key in %s; "
            "from now on only this key is accepted",
            fingerprint,
            key_file,
        )
    result = InitResult(
        campaign=definition.name,
        campaign_created=campaign_created,
        campaign_updated=campaign_updated,
        sites_created=created,
        sites_updated=updated,
        sites_unchanged=unchanged,
        sites_not_in_definition=stale,
        key_file=key_file,
        key_created=key_created,
        database=make_url(url).render_as_string(hide_password=True),
        definition_sha256=digest,
    )
    logger.info(
        "campaign %r set up: %d site(s) created, %d updated; key file %s",
        definition.name,
        len(created),
        len(updated),
        "created" if key_created else "reused",
    )
    return result


def _campaign_key(engine: Engine, key_file: Path, name: str) -> tuple[bool, str, bool]:
    """(key created, its fingerprint, fingerprint to be recorded) for an init of ``name``.

    A catalog without a campaign gets a key (made if the file is missing). A catalog with
    one never does: its key must be present and, if the catalog records a fingerprint,
    match it, so a lost key is restored from the escrow instead of silently replaced.
    """
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        existing = session.execute(
            select(Campaign.name, Campaign.key_fingerprint).order_by(Campaign.id)
        ).first()
    if existing is None:
        created = ensure_key_file(key_file)
        return created, key_fingerprint(load_key(key_file)), True
    if existing.name != name:  # refused with its own message in the transaction
        return False, "", False
    if existing.key_fingerprint is None and not key_file.exists():
        raise KeyMismatch(
            f"pseudonymization key file {key_file} not found, and this catalog already "
            f"serves campaign {name!r}: a new key would file every patient again; "
            f"{RESTORE_HINT}"
        )
    key = check_key(key_file, existing.key_fingerprint)
    return False, key_fingerprint(key), existing.key_fingerprint is None
