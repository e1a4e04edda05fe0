"""The C-STORE SCP: sites' PACS and modalities push DICOM to medai over the network.

The calling AE title identifies the site (from the campaign); unknown callers are
rejected at association. Every received instance goes through
:class:`~medai.collection.pipeline.IngestPipeline`; an instance that ends stored,
duplicate or quarantined is in medai's custody, so the response is Success
(PS3.4 B.2.3). Only when the instance could not be taken into custody at all (the
catalog or the disk failed) is a failure status returned, so the sender retries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from medai.catalog.db import session_factory
from medai.catalog.models import Site
from medai.collection.pipeline import IngestPipeline

__all__ = ["SOURCE", "build_storage_scp", "site_by_ae_title"]

logger = logging.getLogger(__name__)

SOURCE = "c-store"
STATUS_SUCCESS = 0x0000
# PS3.4 Table B.2-1: "Refused: Out of Resources" — the sender should retry later.
STATUS_OUT_OF_RESOURCES = 0xA700


def site_by_ae_title(pipeline: IngestPipeline) -> dict[str, str]:
    """The campaign's AE titles, each mapped to its site id."""
    with session_factory(pipeline.engine)() as session:
        sites = session.scalars(select(Site)).all()
    return {str(title).strip(): site.id for site in sites for title in site.ae_titles}


def build_storage_scp(
    pipeline: IngestPipeline, ae_title: str, sites: Mapping[str, str]
) -> tuple[AE, list[EventHandlerType]]:
    """An AE accepting Verification and every storage SOP class from the campaign's AEs.

    Returns
    -------
    (AE, handlers)
        Start it with ``ae.start_server((host, port), evt_handlers=handlers)``.
    """
    ae = AE(ae_title=ae_title)
    ae.require_calling_aet = sorted(sites)  # anyone else is rejected at association
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    def on_echo(event: evt.Event) -> int:
        return STATUS_SUCCESS

    def on_store(event: evt.Event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        site = sites.get(calling)
        if site is None:  # the association check makes this unreachable; be safe anyway
            return STATUS_OUT_OF_RESOURCES
        try:
            data = event.encoded_dataset(include_meta=True)
            outcome = pipeline.ingest(data, site, SOURCE)
        except Exception as exc:  # noqa: BLE001 - any failure: not in custody, sender retries
            logger.error(
                "could not take an instance from %s into custody: %s", site, type(exc).__name__
            )
            return STATUS_OUT_OF_RESOURCES
        logger.debug("C-STORE from %s: %s", site, outcome.kind)
        return STATUS_SUCCESS

    handlers: list[EventHandlerType] = [
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_C_STORE, on_store),
    ]
    return ae, handlers
