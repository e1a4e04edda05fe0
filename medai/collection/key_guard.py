"""The one check every pseudonymizing command makes: its key is the campaign's key.

The catalog holds the fingerprint of the key its campaign was set up with
(:attr:`medai.catalog.models.Campaign.key_fingerprint`). A missing or different key file is
refused here, before anything is pseudonymized, because pseudonyms made with another key
would file every patient again as new ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from medai.audit import actors, append_audit, audited_transaction
from medai.audit.security_events import KEY_MISMATCH, SecurityEventRecorder, default_recorder
from medai.catalog.db import session_factory
from medai.catalog.models import Campaign
from medai.collection.pseudonymize import Pseudonymizer
from medai.errors import CampaignError, KeyEscrowError, KeyFileError, KeyMismatch
from medai.keyfile import (
    escrow_key,
    key_fingerprint,
    load_key,
    open_escrow,
    read_escrow_header,
    restore_key_file,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from medai.config import Settings

__all__ = [
    "MIN_PASSPHRASE",
    "RESTORE_HINT",
    "campaign_key",
    "campaign_pseudonymizer",
    "check_key",
    "export_key",
    "import_key",
    "record_key_mismatch",
]

logger = logging.getLogger(__name__)

RESTORE_HINT = (
    "restore it with `medai campaign key import FILE` from the key escrow "
    "(made by `medai campaign key export`), or point MEDAI_KEY_FILE at the campaign's key"
)
"""What to do about a lost or replaced campaign key."""


def check_key(key_file: Path, recorded: str | None) -> bytes:
    """The key in ``key_file``, refused unless its fingerprint is ``recorded`` (when set).

    Raises
    ------
    KeyMismatch
        If the catalog records a fingerprint and the file is missing, unreadable or holds
        another key.
    KeyFileError
        If no fingerprint is recorded and the file is missing or malformed.
    """
    if recorded is None:
        return load_key(key_file)
    try:
        key = load_key(key_file, hint=RESTORE_HINT)
    except KeyFileError as exc:
        raise KeyMismatch(
            f"{exc} (this catalog's campaign key has fingerprint {recorded})"
        ) from None
    found = key_fingerprint(key)
    if found != recorded:
        raise KeyMismatch(
            f"pseudonymization key file {key_file} holds another key (fingerprint {found}) "
            f"than the one this catalog's campaign uses (fingerprint {recorded}); pseudonyms "
            f"made with it would split every patient: {RESTORE_HINT}"
        )
    return key


def campaign_key(settings: Settings, engine: Engine, *, actor: str | None = None) -> bytes:
    """The campaign key of ``settings``, checked against the fingerprint in the catalog.

    A catalog set up before fingerprints were kept records the present key's (audited as
    ``campaign.key-fingerprint``), so from then on only that key is accepted.

    Raises
    ------
    KeyMismatch, KeyFileError
        See :func:`check_key`.
    """
    key_file = settings.resolved_key_file
    # A plain read: the usual case (a fingerprint is there) takes no write lock.
    read = engine.execution_options(sqlite_begin="DEFERRED")
    with session_factory(read)() as session:
        row = session.execute(
            select(Campaign.name, Campaign.key_fingerprint).order_by(Campaign.id)
        ).first()
    if row is None:  # no campaign yet: nothing to compare with (the caller refuses that)
        return load_key(key_file)
    if row.key_fingerprint is not None:
        return _checked(engine, key_file, row.key_fingerprint)
    key = load_key(key_file)
    fingerprint = key_fingerprint(key)
    recorded: str | None = None  # set when another process recorded one meanwhile
    with audited_transaction(engine) as session:
        campaign = session.scalars(select(Campaign).order_by(Campaign.id)).first()
        if campaign is not None and campaign.key_fingerprint is None:
            campaign.key_fingerprint = fingerprint
            append_audit(
                session,
                actor=actor or actors.system("ingest"),
                action="campaign.key-fingerprint",
                subject=campaign.name,
                details={"fingerprint": fingerprint},
            )
        elif campaign is not None:
            recorded = campaign.key_fingerprint
    if recorded is not None:
        return _checked(engine, key_file, recorded)
    logger.info(
        "the catalog kept no campaign key fingerprint: recorded %s, the key in %s; "
        "from now on only this key is accepted",
        fingerprint,
        key_file,
    )
    return key


def _checked(engine: Engine, key_file: Path, recorded: str) -> bytes:
    """:func:`check_key`, a refusal recorded as a security event first."""
    try:
        return check_key(key_file, recorded)
    except KeyMismatch:
        record_key_mismatch(engine, key_file, recorded)
        raise


def record_key_mismatch(
    engine: Engine | None,
    key_file: Path,
    recorded: str,
    recorder: SecurityEventRecorder | None = None,
) -> None:
    """Record ``security.key-mismatch``: ``key_file`` was refused for this catalog.

    Details name both fingerprints (the refused one is None when the file is missing or
    unreadable: reason ``no-key``; another key: ``other-key``), never the key. Repeats
    (a readiness probe every few seconds) are folded, one record a minute (see
    :class:`~medai.audit.security_events.SecurityEventRecorder`).
    """
    try:
        found: str | None = key_fingerprint(load_key(key_file))
    except KeyFileError:
        found = None
    (recorder or default_recorder()).record(
        engine,
        KEY_MISMATCH,
        source=f"key-file:{key_file}",
        reason="no-key" if found is None else "other-key",
        details={"recorded_fingerprint": recorded, "refused_fingerprint": found},
    )


def campaign_pseudonymizer(settings: Settings, engine: Engine) -> Pseudonymizer:
    """The campaign's pseudonymizer, with its key checked by :func:`campaign_key`."""
    return Pseudonymizer(campaign_key(settings, engine))


# -- escrow ------------------------------------------------------------------------------

MIN_PASSPHRASE = 12
"""Shortest passphrase an escrow is written under (scrypt slows guessing; length matters)."""


def _campaign_row(engine: Engine) -> tuple[str, str | None]:
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        row = session.execute(
            select(Campaign.name, Campaign.key_fingerprint).order_by(Campaign.id)
        ).first()
    if row is None:
        raise CampaignError("no campaign in this catalog: run `medai campaign init FILE` first")
    return row.name, row.key_fingerprint


def export_key(settings: Settings, engine: Engine, out: Path, passphrase: str, actor: str) -> str:
    """Write the campaign key, checked and encrypted under ``passphrase``, to a new file ``out``.

    Audited as ``campaign.key-export`` (the fingerprint and the file, never the key).
    Returns the key's fingerprint.

    Raises
    ------
    KeyEscrowError
        If the passphrase is too short or ``out`` exists (an escrow is never overwritten).
    KeyMismatch, KeyFileError, CampaignError
        If the key is not the campaign's (see :func:`campaign_key`) or there is no campaign.
    """
    if len(passphrase) < MIN_PASSPHRASE:
        raise KeyEscrowError(
            f"the passphrase is shorter than {MIN_PASSPHRASE} characters: choose a longer one "
            "(a few unrelated words)"
        )
    name, _ = _campaign_row(engine)
    key = campaign_key(settings, engine, actor=actor)
    fingerprint = key_fingerprint(key)
    document = escrow_key(key, passphrase, campaign=name)
    out = Path(out)
    with audited_transaction(engine) as session:
        append_audit(
            session,
            actor=actor,
            action="campaign.key-export",
            subject=name,
            details={"fingerprint": fingerprint, "file": str(out.absolute())},
        )
        # Written inside the transaction: no escrow exists that the audit log does not name.
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyEscrowError(
                f"{out} already exists; choose another --out (an escrow is never overwritten)"
            ) from None
        except OSError as exc:
            raise KeyEscrowError(f"cannot write {out} ({exc.strerror}); check the folder") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, document)
            os.fsync(fd)
        finally:
            os.close(fd)
    logger.info("campaign key (fingerprint %s) exported to escrow file %s", fingerprint, out)
    return fingerprint


def check_escrow(engine: Engine, data: bytes) -> str:
    """Refuse an escrow of another campaign before any passphrase is asked; its fingerprint.

    Raises
    ------
    KeyEscrowError
        If ``data`` is not an escrow, or holds the key of another campaign or another key
        than the one the catalog records.
    """
    header = read_escrow_header(data)
    name, recorded = _campaign_row(engine)
    theirs = f"campaign {header['campaign']!r}, key fingerprint {header['fingerprint']}"
    if header["campaign"] != name or (recorded is not None and header["fingerprint"] != recorded):
        raise KeyEscrowError(
            f"this escrow holds the key of {theirs}, not of this catalog's campaign {name!r} "
            f"(key fingerprint {recorded or 'not recorded'}): use the escrow exported from "
            "this campaign; nothing was restored"
        )
    return str(header["fingerprint"])


def import_key(
    settings: Settings, engine: Engine, data: bytes, passphrase: str, actor: str
) -> bool:
    """Restore the campaign key file from an escrow; return whether the file was written.

    Nothing is written unless the passphrase opens the escrow and the key is the one the
    catalog records (a catalog that records none records this one). Audited as
    ``campaign.key-import``.

    Raises
    ------
    KeyEscrowError
        Wrong passphrase, altered file, another campaign's escrow.
    KeyFileError
        If the key file exists and holds another key (it is never overwritten).
    """
    check_escrow(engine, data)
    key = open_escrow(data, passphrase)
    fingerprint = key_fingerprint(key)
    key_file = settings.resolved_key_file
    with audited_transaction(engine) as session:
        campaign = session.scalars(select(Campaign).order_by(Campaign.id)).one()
        if campaign.key_fingerprint is None:
            campaign.key_fingerprint = fingerprint
        elif campaign.key_fingerprint != fingerprint:  # changed since check_escrow
            raise KeyEscrowError("the catalog's campaign key changed meanwhile: run it again")
        written = restore_key_file(key_file, key)
        append_audit(
            session,
            actor=actor,
            action="campaign.key-import",
            subject=campaign.name,
            details={"fingerprint": fingerprint, "key_file_written": written},
        )
    return written
