"""The C-STORE SCP: sites' PACS and modalities push DICOM to medai over the network.

The calling AE title identifies the site (from the campaign); unknown callers, and
associations addressed to another called AE title than medai's own, are rejected at
association (A-ASSOCIATE-RJ), and each rejection is recorded when it happens (a WARNING
log line and a ``cstore.association-rejected`` audit record, see
:class:`RejectionRecorder`; the listener serves no metrics endpoint, so there is no
Prometheus counter). Every received instance goes through
:class:`~medai.collection.pipeline.IngestPipeline`; an instance that ends stored,
duplicate or quarantined is in medai's custody, so the response is Success
(PS3.4 B.2.3). Only when the instance could not be taken into custody at all (the
catalog or the disk failed) is a failure status returned, so the sender retries.

The event handlers are plain functions (``handle_store``, ``handle_echo`` ...), as in
pynetdicom's own apps, given the state they need as handler arguments, so each can be
called on its own; :func:`build_storage_scp` registers them on the AE.

:class:`StorageListener` runs the SCP with a study-completion sweeper beside it
and stops gracefully: it stops accepting associations, lets those in flight
finish (up to a bound), then aborts the rest. An aborted instance was never
acknowledged, so its sender retries it; one whose ingest had already committed
becomes a harmless duplicate on that retry.

TLS (DICOM PS3.15 B.1, the secure transport connection profile). Given an
:class:`ssl.SSLContext` (:mod:`medai.tls`), the listener speaks TLS only. The handshake is
done in the association's own thread (:class:`TlsAssociationServer`), never in the thread
that accepts connections, so a peer that connects and stalls holds nothing but its own
thread, for at most the network time-out; a failed handshake (a plaintext sender, a
missing or untrusted client certificate) is rejected like an association, logged and
audited (reason ``tls-handshake-failed``). A site whose campaign entry lists
``tls_clients`` is bound to those client certificates: an association from one of its AE
titles that comes without TLS, or with another certificate, is rejected at A-ASSOCIATE
(``client-certificate-not-allowed``), before any instance is read.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from medai.catalog.db import session_factory
from medai.catalog.models import Site
from medai.collection.campaign.sites import stored_campaign
from medai.collection.pipeline import IngestPipeline
from medai.collection.receivers.cstore_rejections import REJECTED_ACTION, RejectionRecorder
from medai.collection.receivers.study_completion import CompletionSweeper
from medai.tls import peer_matches

__all__ = [
    "SOURCE",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "DrainResult",
    "ListenerCounts",
    "REJECTED_ACTION",
    "RejectionRecorder",
    "StorageListener",
    "TlsAssociationServer",
    "build_storage_scp",
    "handle_aborted",
    "handle_accepted",
    "handle_conn_open",
    "handle_echo",
    "handle_rejected",
    "handle_requested",
    "handle_store",
    "site_by_ae_title",
    "site_client_identities",
]

logger = logging.getLogger(__name__)

SOURCE = "c-store"
STATUS_SUCCESS = 0x0000
# PS3.4 Table B.2-1: "Refused: Out of Resources" — the sender should retry later.
STATUS_OUT_OF_RESOURCES = 0xA700
MAX_ASSOCIATIONS = 16
MAX_PDU_BYTES = 256 * 1024
# Like Orthanc's DicomScpTimeout and pynetdicom's own default.
DEFAULT_NETWORK_TIMEOUT = 60.0
# After an abort, how long an association thread may take to finish the ingest it
# was running (its commit decides whether the retry is a duplicate or a store).
_ABORT_JOIN_SECONDS = 60.0


class ListenerCounts:
    """What a listener did since it started; updated from every association thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.associations = 0
        self.rejected = 0
        self.aborted = 0
        self.stored = 0
        self.duplicate = 0
        self.quarantined = 0
        self.failed = 0  # not taken into custody: answered Out of Resources

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    @property
    def instances(self) -> int:
        return self.stored + self.duplicate + self.quarantined + self.failed


def site_by_ae_title(pipeline: IngestPipeline) -> dict[str, str]:
    """The campaign's AE titles, each mapped to its site id."""
    with session_factory(pipeline.engine)() as session:
        sites = session.scalars(select(Site)).all()
    return {str(title).strip(): site.id for site in sites for title in site.ae_titles}


def site_client_identities(pipeline: IngestPipeline) -> dict[str, frozenset[str]]:
    """Calling AE title → the client certificates allowed for it (its site's ``tls_clients``).

    Only the AE titles of sites that list ``tls_clients`` are keys: the others are bound to
    no certificate.
    """
    with session_factory(pipeline.engine)() as session:
        campaign = stored_campaign(session)
    return {
        title.strip(): frozenset(site.tls_clients)
        for site in campaign.sites
        if site.tls_clients
        for title in site.ae_titles
    }


def _peer(requestor: Any) -> tuple[str, int]:
    try:
        return str(requestor.address), int(requestor.port)
    except (AttributeError, TypeError, ValueError):  # no address info: still record it
        return "unknown", 0


# -- event handlers: plain functions, registered with their state as arguments -----------------


def handle_conn_open(event: evt.Event, network_timeout: float) -> None:
    """EVT_CONN_OPEN: bound the accepted socket's reads, keep it alive, send replies at once."""
    wrapper = event.assoc.dul.socket
    sock = wrapper.socket if wrapper is not None else None
    if sock is None:  # already closed
        return
    # pynetdicom reads the rest of a PDU with a blocking recv() on the accepted
    # socket, which has no timeout: a peer that vanishes mid-PDU without a FIN
    # or RST (a dropped link, a NAT forgetting the flow) would hold the
    # association thread forever. With a timeout the read fails, and the
    # association is aborted; the sender retries what was not acknowledged.
    sock.settimeout(network_timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Responses are single small writes the sender waits for: send them at once.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: Success; the association check already admitted the caller."""
    return STATUS_SUCCESS


def handle_store(
    event: evt.Event, pipeline: IngestPipeline, sites: Mapping[str, str], counts: ListenerCounts
) -> int:
    """EVT_C_STORE: offer the instance, as sent, to the pipeline; the DIMSE status to answer.

    Stored, duplicate and quarantined are all Success: the instance is in medai's
    custody (PS3.4 B.2.3), and sending it again would change nothing. Only when it could
    not be taken into custody (the catalog or the store failed) is the answer Out of
    Resources, so that the sender retries it.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    site = sites.get(calling)
    if site is None:  # the association check makes this unreachable; be safe anyway
        counts.add("failed")
        return STATUS_OUT_OF_RESOURCES
    try:
        data = event.encoded_dataset(include_meta=True)
        outcome = pipeline.ingest(data, site, SOURCE)
    except Exception as exc:  # whatever failed, the instance is not in custody: the sender retries
        logger.error(
            "could not take an instance from %s into custody: %s", site, type(exc).__name__
        )
        counts.add("failed")
        return STATUS_OUT_OF_RESOURCES
    counts.add(outcome.kind)
    logger.debug("C-STORE from %s: %s", site, outcome.kind)
    return STATUS_SUCCESS


def handle_requested(
    event: evt.Event,
    identities: Mapping[str, frozenset[str]],
    counts: ListenerCounts,
    recorder: RejectionRecorder | None = None,
) -> None:
    """EVT_REQUESTED: a calling AE title bound to client certificates must come with one.

    An association from an AE title of a site with ``tls_clients`` is rejected (calling AE
    title not recognised, as for an unknown caller) unless it came over TLS with a verified
    client certificate that is one of them; other AE titles are left to the usual checks.
    """
    request = event.assoc.requestor.primitive
    if request is None or not identities:
        return
    calling = str(request.calling_ae_title).strip()
    allowed = identities.get(calling)
    if not allowed:
        return
    wrapper = event.assoc.dul.socket
    sock = wrapper.socket if wrapper is not None else None
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    if peer_matches(der, allowed):
        return
    event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent; calling AE not recognised
    counts.add("rejected")
    if recorder is not None:
        host, port = _peer(event.assoc.requestor)
        called = str(request.called_ae_title)
        recorder.record(calling, called, host, port, reason="client-certificate-not-allowed")
    event.assoc.kill()


def handle_accepted(event: evt.Event, counts: ListenerCounts) -> None:
    """EVT_ACCEPTED: one more association."""
    counts.add("associations")


def handle_rejected(
    event: evt.Event, counts: ListenerCounts, recorder: RejectionRecorder | None = None
) -> None:
    """EVT_REJECTED: an association refused (a wrong calling or called AE title, mostly)."""
    counts.add("rejected")
    if recorder is None:
        return
    requestor = event.assoc.requestor
    request = requestor.primitive  # the A-ASSOCIATE request that was refused
    called = str(request.called_ae_title) if request is not None else ""
    host, port = _peer(requestor)
    recorder.record(str(requestor.ae_title), called, host, port)


def handle_aborted(event: evt.Event, counts: ListenerCounts) -> None:
    """EVT_ABORTED: an association aborted (its unacknowledged instance is the sender's)."""
    counts.add("aborted")


def build_storage_scp(
    pipeline: IngestPipeline,
    ae_title: str,
    sites: Mapping[str, str],
    counts: ListenerCounts | None = None,
    *,
    network_timeout: float = DEFAULT_NETWORK_TIMEOUT,
    client_identities: Mapping[str, frozenset[str]] | None = None,
    recorder: RejectionRecorder | None = None,
) -> tuple[AE, list[EventHandlerType]]:
    """An AE accepting Verification and every storage SOP class from the campaign's AEs.

    Parameters
    ----------
    pipeline
        Where received instances go.
    ae_title
        medai's own AE title.
    sites
        Calling AE title → site id; other callers are rejected, and so are associations
        whose called AE title is not ``ae_title``; each rejection is logged and audited.
    counts
        Updated with every association and instance outcome, if given.
    network_timeout
        Seconds an association may stay idle, or a PDU stall half-received,
        before the association is aborted.
    client_identities
        Calling AE title → the client certificates it must present
        (:func:`site_client_identities`); see :func:`handle_requested`.
    recorder
        Records rejections; default one on the pipeline's catalog.

    Returns
    -------
    (AE, handlers)
        Start it with ``ae.start_server((host, port), evt_handlers=handlers)``.
    """
    ae = AE(ae_title=ae_title)
    ae.require_calling_aet = sorted(sites)  # anyone else is rejected at association
    # An association addressed to another AE title was meant for another system (a
    # misconfigured peer): refuse it with "called AE title not recognised".
    ae.require_called_aet = True
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.network_timeout = network_timeout
    # Larger PDUs than pynetdicom's 16 KiB default: fewer PDUs to decode in Python
    # per instance (dcmtk senders then use up to 128 KiB), still a bounded buffer.
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    tally = counts or ListenerCounts()
    recorder = recorder or RejectionRecorder(pipeline.engine, ae_title, sites)
    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, handle_conn_open, [network_timeout]),
        (evt.EVT_REQUESTED, handle_requested, [dict(client_identities or {}), tally, recorder]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [pipeline, sites, tally]),
        (evt.EVT_ACCEPTED, handle_accepted, [tally]),
        (evt.EVT_REJECTED, handle_rejected, [tally, recorder]),
        (evt.EVT_ABORTED, handle_aborted, [tally]),
    ]
    return ae, handlers


# An OpenSSL reason of a failed handshake → the reason recorded (else tls-handshake-failed).
_HANDSHAKE_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "tls-client-certificate-missing",
    "CERTIFICATE_VERIFY_FAILED": "tls-client-certificate-untrusted",
    "TLSV1_ALERT_UNKNOWN_CA": "tls-server-certificate-untrusted",
    "SSLV3_ALERT_BAD_CERTIFICATE": "tls-server-certificate-untrusted",
    "WRONG_VERSION_NUMBER": "tls-plaintext-client",
    "HTTP_REQUEST": "tls-plaintext-client",
}


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with each TLS handshake in its association's thread.

    pynetdicom's own server completes the handshake in the thread that accepts
    connections, where one peer that connects and sends nothing would stop the listener
    accepting anyone else. Here the socket is wrapped without a handshake, and the
    association's thread makes it, bounded by ``handshake_timeout``; a failed handshake
    is recorded as a rejection and the connection closed.
    """

    handshake_timeout: float = DEFAULT_NETWORK_TIMEOUT
    recorder: RejectionRecorder | None = None
    counts: ListenerCounts | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; wrap it for TLS, the handshake left to its thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        """Make the TLS handshake, then run the association as pynetdicom does."""
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
            except (OSError, ValueError) as exc:  # SSLError, a time-out, a reset
                self._refused(client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def _refused(self, client_address: tuple[str, int] | str, exc: BaseException) -> None:
        if self.counts is not None:
            self.counts.add("rejected")
        code = getattr(exc, "reason", None) or type(exc).__name__
        reason = _HANDSHAKE_REASONS.get(str(code), "tls-handshake-failed")
        host, port = (
            (str(client_address[0]), int(client_address[1]))
            if isinstance(client_address, tuple)
            else (str(client_address), 0)
        )
        logger.info("TLS handshake with %s:%d failed: %s", host, port, code)
        if self.recorder is not None:
            self.recorder.record("", "", host, port, reason=reason)


@dataclass(frozen=True)
class DrainResult:
    """How a listener's stop went."""

    drained: int  # associations still in flight at the stop that then finished
    aborted: int  # associations still in flight at the bound, aborted
    seconds: float


class StorageListener:
    """The C-STORE SCP of ``medai collect listen``, with its completion sweeper.

    Parameters
    ----------
    pipeline
        Where received instances go.
    ae_title
        medai's own AE title.
    sites
        Calling AE title → site id (see :func:`site_by_ae_title`).
    quiet_seconds
        The study quiet period of the sweeper.
    sweep_interval
        Seconds between sweeps; default a quarter of the period, at most 5 s.
    network_timeout
        Seconds before an idle or stalled association is aborted (and the most a TLS
        handshake may take).
    ssl_context
        Speak DICOM TLS only, with this server context (:mod:`medai.tls`).
    client_identities
        Calling AE title → the client certificates it must present
        (:func:`site_client_identities`).

    Examples
    --------
    >>> listener = StorageListener(pipeline, "MEDAI", sites, quiet_seconds=60)  # doctest: +SKIP
    >>> listener.start("0.0.0.0", 11112)  # doctest: +SKIP
    >>> listener.stop(drain_seconds=30)  # doctest: +SKIP
    """

    def __init__(
        self,
        pipeline: IngestPipeline,
        ae_title: str,
        sites: Mapping[str, str],
        *,
        quiet_seconds: float,
        sweep_interval: float | None = None,
        network_timeout: float = DEFAULT_NETWORK_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        client_identities: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.counts = ListenerCounts()
        self.ssl_context = ssl_context
        self.network_timeout = network_timeout
        self.recorder = RejectionRecorder(pipeline.engine, ae_title, sites)
        self.ae, self._handlers = build_storage_scp(
            pipeline,
            ae_title,
            sites,
            self.counts,
            network_timeout=network_timeout,
            client_identities=client_identities,
            recorder=self.recorder,
        )
        self.sweeper = CompletionSweeper(pipeline.engine, quiet_seconds, interval=sweep_interval)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (useful after starting on port 0)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self, host: str, port: int) -> None:
        """Bind and serve in background threads.

        Raises
        ------
        OSError
            When the address cannot be bound (e.g. the port is taken).
        """
        if self.ssl_context is None:
            self._server = self.ae.start_server(
                (host, port), block=False, evt_handlers=self._handlers
            )
        else:
            server = self.ae.make_server(
                (host, port),
                ssl_context=self.ssl_context,
                evt_handlers=self._handlers,
                server_class=TlsAssociationServer,
            )
            assert isinstance(server, TlsAssociationServer)
            server.handshake_timeout = self.network_timeout
            server.recorder, server.counts = self.recorder, self.counts
            # As start_server does: the server's shutdown() removes itself from this list.
            self.ae._servers.append(server)
            threading.Thread(
                target=server.serve_forever, name="cstore-tls-acceptor", daemon=True
            ).start()
            self._server = server
        self.sweeper.start()

    def in_flight(self) -> list[Association]:
        """The associations running now."""
        return [] if self._server is None else list(self._server.active_associations)

    def stop(self, drain_seconds: float, *, hurry: threading.Event | None = None) -> DrainResult:
        """Stop accepting, drain in-flight associations, then sweep once more.

        Parameters
        ----------
        drain_seconds
            How long in-flight associations may take to finish; the rest are aborted.
        hurry
            When set during the drain (a second Ctrl-C), abort what is left at once.
        """
        started = time.monotonic()
        assert self._server is not None, "not started"
        # ThreadedAssociationServer.shutdown() only stops serve_forever and closes the
        # listening socket (joining the short-lived threads that start associations):
        # associations already running go on in their own daemon threads, which would
        # die mid-instance when the interpreter exits. So they are awaited here.
        self._server.shutdown()
        pending = self.in_flight()
        in_flight_at_stop = len(pending)
        deadline = started + drain_seconds
        while pending and time.monotonic() < deadline and not (hurry and hurry.is_set()):
            time.sleep(0.05)
            pending = [assoc for assoc in pending if assoc.is_alive()]
        for assoc in pending:
            # A-ABORT: the sender gets no response for the instance in progress and
            # sends it again later.
            assoc.abort()
        for assoc in pending:
            assoc.join(_ABORT_JOIN_SECONDS)
        self.sweeper.stop(final_sweep=True)
        return DrainResult(
            drained=in_flight_at_stop - len(pending),
            aborted=len(pending),
            seconds=time.monotonic() - started,
        )
