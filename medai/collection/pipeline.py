"""The ingest pipeline: every offered DICOM instance ends stored, duplicate or quarantined.

parse & validate → de-identify → pseudonymize → dedupe on the pseudonymized
SOPInstanceUID → write the de-identified bytes to the store → one catalog
transaction (patient/study/series/instance rows, the ingest event, the audit
record). The store write comes before the commit, so a crash leaves at most an
unreferenced store file (collected by ``medai collect verify --collect``), never
a row without its file; re-sending anything is harmless.

An instance a site's edge gateway de-identified (an :class:`Offer` with its
``edge_receipt_day``) is not de-identified again, which would change its UIDs: it is
re-screened (:mod:`~medai.collection.edge_screen`), quarantined if it lacks medai's
markers or still looks identified, else stored byte for byte, with an ``EdgeReceipt``
(:mod:`~medai.collection.edge_receipts`) in the same catalog transaction.

The steps sit beside it: :mod:`~medai.collection.prepare` (parse and de-identify one
input), :mod:`~medai.collection.catalog_writer` (the batch's catalog transaction, with
:mod:`~medai.collection.counters`), :mod:`~medai.collection.outcomes` (what receivers
offer and get back).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from medai.audit.actors import system
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance, Site, utcnow
from medai.collection.campaign.sites import get_site, stored_campaign
from medai.collection.catalog_writer import CatalogWriter
from medai.collection.deid import Deidentifier
from medai.collection.edge_screen import EdgeScreen
from medai.collection.identity import PatientIdentities
from medai.collection.key_guard import campaign_pseudonymizer
from medai.collection.outcomes import Offer, Outcome
from medai.collection.prepare import (
    PreparedInstance,
    prepare_edge_or_reject,
    prepare_or_reject,
)
from medai.collection.quarantine import Quarantine, QuarantinedFile
from medai.config import Settings, get_settings
from medai.dicom.inflate import DEFAULT_MAX_RATIO
from medai.errors import Rejected
from medai.store import ObjectStore

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

__all__ = ["IngestPipeline"]

logger = logging.getLogger(__name__)

_COMMIT_ATTEMPTS = 3


class IngestPipeline:
    """Takes raw bytes from any receiver and accounts for every one of them.

    Parameters
    ----------
    engine
        The catalog database (already migrated, with the campaign initialised).
    store, quarantine
        Where de-identified bytes and rejected raw bytes go.
    deidentifier
        The campaign's Annex E de-identifier (with its pseudonymizer).
    max_instance_bytes
        Inputs longer than this are quarantined as too large without parsing.
    max_inflate_ratio
        A deflated data set inflating to more than this many times its size is
        quarantined as too large (a decompression bomb), inflated no further.
    actor
        Who the audit records name; ``system:ingest`` by default.
    clock
        The time an instance is received at (UTC); the wall clock unless simulating.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: ObjectStore,
        quarantine: Quarantine,
        deidentifier: Deidentifier,
        max_instance_bytes: int,
        max_inflate_ratio: float = DEFAULT_MAX_RATIO,
        actor: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.store = store
        self.quarantine = quarantine
        self.deidentifier = deidentifier
        self.max_instance_bytes = max_instance_bytes
        self.max_inflate_ratio = max_inflate_ratio
        self.actor = actor or system("ingest")
        # When an instance counts as received (catalog rows, events, progress day). Always
        # the wall clock but in a simulation (``medai demo`` replays a campaign's past days);
        # audit records keep the real time.
        self.clock = clock
        self.writer = CatalogWriter(session_factory(engine))
        # Reads need no write lock (SQLite otherwise begins every transaction IMMEDIATE).
        self._read_sessions: sessionmaker[Session] = session_factory(
            engine.execution_options(sqlite_begin="DEFERRED")
        )
        self._known_sites: set[str] = set()
        # Which issuer each patient pseudonym keys on (the file's, the site's, or v1).
        self.identities = PatientIdentities(self._read_sessions, deidentifier.pseudonymizer)
        self._edge_screen: EdgeScreen | None = None

    @property
    def edge_screen(self) -> EdgeScreen:
        """The re-screen of instances edge gateways de-identified (built when first needed)."""
        if self._edge_screen is None:
            self._edge_screen = EdgeScreen(self.deidentifier.options)
        return self._edge_screen

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> IngestPipeline:
        """Build the pipeline of the campaign configured in ``settings``.

        Raises
        ------
        CampaignError
            When no campaign has been initialised in the catalog.
        KeyFileError
            When the campaign key file is missing.
        KeyMismatch
            When the key file is missing or is not the key the catalog's campaign uses.
        """
        settings = settings or get_settings()
        engine = create_engine_for(settings.resolved_database_url)
        with session_factory(engine)() as session:
            options = stored_campaign(session).deidentification.to_deid_options()
        # The one key check of every pseudonymizing path (receivers, STOW, pull).
        pseudonymizer = campaign_pseudonymizer(settings, engine)
        return cls(
            engine=engine,
            store=ObjectStore(settings.resolved_store_dir),
            quarantine=Quarantine(settings.resolved_quarantine_dir),
            deidentifier=Deidentifier(options, pseudonymizer),
            max_instance_bytes=settings.max_instance_bytes,
            max_inflate_ratio=settings.max_inflate_ratio,
        )

    # -- public operations ----------------------------------------------------------

    def ingest(
        self,
        data: bytes,
        site: str,
        source: str,
        *,
        run_id: int | None = None,
        original_name: str | None = None,
    ) -> Outcome:
        """Offer one input; returns its outcome once it is durably accounted for.

        Parameters
        ----------
        data
            The bytes exactly as received.
        site
            The campaign site id the input came from.
        source
            The receiver: ``folder``, ``c-store``, ``stow-rs``, ``dicomweb-pull`` ...
        run_id
            The import run this input belongs to (for the accounting check).
        original_name
            Where the input came from (a path, a zip member). Kept only in the
            quarantine record, since names may identify the patient.

        Raises
        ------
        UnknownSite
            When ``site`` is not a site of the campaign (nothing is recorded).
        """
        return self.ingest_many([Offer(data, site, source, run_id, original_name)])[0]

    def ingest_many(self, offers: Sequence[Offer]) -> list[Outcome]:
        """Offer several inputs at once; outcomes come back in the same order.

        Each input is handled exactly as :meth:`ingest` would, but the catalog
        records of the whole batch are committed in one transaction (after all
        their store writes), which is what makes bulk imports fast. A crash
        before the commit records none of the batch: re-offering it is harmless.

        Raises
        ------
        UnknownSite
            When any offer names a site the campaign does not have (nothing is recorded).
        """
        for offer in offers:
            self.check_site(offer.site)
        steps = [self._prepare(offer) for offer in offers]
        already = self._catalogued(
            [step.sop_uid for step in steps if isinstance(step, PreparedInstance)]
        )
        # Durable files first (store for accepted, quarantine for rejected), then the rows.
        to_store = [
            step.data
            for step in steps
            if isinstance(step, PreparedInstance) and step.sop_uid not in already
        ]
        stored_keys = iter(self.store.put_many(to_store))
        kept: list[str | QuarantinedFile | None] = []
        for offer, step in zip(offers, steps, strict=True):
            if isinstance(step, Rejected):
                kept.append(
                    self.quarantine.put(
                        offer.data,
                        reason=step,
                        site=offer.site,
                        source=offer.source,
                        original_name=offer.original_name,
                    )
                )
            elif step.sop_uid in already:
                kept.append(None)
            else:
                kept.append(next(stored_keys))
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                return self.writer.commit(offers, steps, kept, actor=self.actor, clock=self.clock)
            except OperationalError as exc:
                # Deadlock victims and lock time-outs roll back whole: the files are
                # already durable, so the batch's rows can simply be written again.
                if attempt == _COMMIT_ATTEMPTS:
                    raise
                logger.warning("catalog commit failed (%s); retrying", type(exc.orig).__name__)
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def check_site(self, site: str) -> None:
        """Raise :class:`UnknownSite` unless ``site`` is one of the campaign's sites."""
        if site in self._known_sites:
            return
        with self._read_sessions() as session:
            self._known_sites = set(session.scalars(select(Site.id)))
            if site not in self._known_sites:
                get_site(session, site)  # raises UnknownSite naming the campaign's sites

    # -- steps ----------------------------------------------------------------------

    def _prepare(self, offer: Offer) -> PreparedInstance | Rejected:
        """Offer's instance de-identified (or, from an edge, re-screened), or its rejection."""
        if offer.rejected is not None:
            return offer.rejected
        if offer.deidentified_by_edge:
            # Never de-identified twice: the edge used the campaign's key, so its UIDs
            # and pseudonyms are already the centre's; only checked (edge_screen).
            return prepare_edge_or_reject(
                offer.data,
                self.edge_screen,
                self.deidentifier,
                self.max_instance_bytes,
                max_inflate_ratio=self.max_inflate_ratio,
            )
        return prepare_or_reject(
            offer.data,
            offer.site,
            self.deidentifier,
            self.max_instance_bytes,
            self.identities,
            max_inflate_ratio=self.max_inflate_ratio,
        )

    def _catalogued(self, sop_uids: list[str]) -> set[str]:
        if not sop_uids:
            return set()
        with self._read_sessions() as session:
            return set(
                session.scalars(
                    select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(sop_uids))
                )
            )
