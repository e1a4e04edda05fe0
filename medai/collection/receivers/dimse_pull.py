"""DIMSE pull: fetch a site's studies from a PACS that speaks only DIMSE (C-FIND, C-MOVE/C-GET).

The PACS is searched with study-level C-FINDs (Study Root), one per date window from
``since`` to ``until`` (or today), and each study is retrieved by C-MOVE to medai's own
storage SCP (the PACS must know medai's AE title, host and port) or by C-GET on the same
association: whole, or, when part of it is catalogued already (a retrieve cut off earlier),
instance by instance for what is missing (IMAGE-level C-FIND, then one retrieve per
instance). Every instance received goes to the
:class:`~medai.collection.pipeline.IngestPipeline` (source ``dimse-pull``) through the
batches, checkpoint and accounting shared with the DICOMweb pull
(:mod:`~medai.collection.receivers.pull_run`); the pipeline's de-duplication keeps a
re-run idempotent even when the PACS sends an instance twice.

A study is done (in the checkpoint) only when its retrieve succeeded and at least as many
instances arrived as the PACS announced (NumberOfStudyRelatedInstances, else the
retrieve's completed sub-operations). A retrieve cut off, refused part-way or short of
instances is retried under the :class:`RetryPolicy`; then the pull stops with
:class:`~medai.errors.PullStopped`, and running it again resumes: windows and studies done
are skipped. Errors and logs name the PACS, never a patient or an original UID.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    build_context,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from medai.catalog.models import Instance, Series, Study
from medai.collection.outcomes import Offer, Outcome
from medai.collection.pipeline import IngestPipeline
from medai.collection.pseudonymize import Pseudonymizer
from medai.collection.receivers.dicomweb_retry import RetryPolicy
from medai.collection.receivers.pull_checkpoint import PullCheckpoint
from medai.collection.receivers.pull_run import (
    PullBatches,
    PullSummary,
    finish_run,
    resume_checkpoint,
    start_run,
    stopped_run,
)
from medai.config import Settings, get_settings
from medai.errors import PullError

__all__ = ["SOURCE", "DimsePeer", "Retrieve", "no_delay", "pull_site_dimse"]

logger = logging.getLogger(__name__)

SOURCE = "dimse-pull"
Retrieve = Literal["move", "get"]

_SUCCESS, _WARNING, _CANCEL = 0x0000, 0xB000, 0xFE00
_PENDING = (0xFF00, 0xFF01)
_STORE_OK, _STORE_REFUSED = 0x0000, 0xA700
_PEER = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[^:@\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})")
_MAX_PDU = 1024 * 1024
_SAVE_SECONDS = 5.0
_T = TypeVar("_T")
_FIND = str(StudyRootQueryRetrieveInformationModelFind)


class _Transient(Exception):
    """The association dropped or timed out: worth retrying (the text names no UID)."""


@dataclass(frozen=True)
class DimsePeer:
    """A DICOM node given as ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DimsePeer:
        """Read ``AE@HOST:PORT``.

        Raises
        ------
        PullError
            When the text is not of that form, the AE title is not 1-16 printable
            characters without a backslash, or the port is not 1-65535.
        """
        match = _PEER.fullmatch(text.strip())
        ae = match["ae"].strip() if match else ""
        if (
            match is None
            or not ae
            or "\\" in ae
            or not ae.isprintable()
            or not 0 < int(match["port"]) < 65536
        ):
            raise PullError(
                f"{text!r} is not a DICOM node: give it as AE@HOST:PORT, e.g. PACS@10.0.0.5:104"
            )
        return cls(ae, match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The pull's identity for the checkpoint (no credentials exist in DIMSE)."""
        return f"dimse://{self}"


def _windows(since: dt.date, until: dt.date, days: int) -> Iterator[tuple[dt.date, dt.date]]:
    first = since
    while first <= until:
        last = min(until, first + dt.timedelta(days=days - 1))
        yield first, last
        first = last + dt.timedelta(days=1)


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: send requests at once (Nagle's delay would cost ~40 ms a message)."""
    wrapper = event.assoc.dul.socket
    sock = wrapper.socket if wrapper is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _count(identifier: Dataset) -> int | None:
    """NumberOfStudyRelatedInstances as announced, or None when absent or unusable."""
    try:
        value = identifier.get("NumberOfStudyRelatedInstances")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


@dataclass
class _Retrieval:
    """The instances arriving for the study being retrieved (the storage handler's state)."""

    study: str = ""  # pseudonymized
    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _DimsePull(PullBatches):
    """One run: C-FINDs per window, one retrieve per study, instances into the batches."""

    def __init__(
        self,
        *,
        pipeline: IngestPipeline,
        peer: DimsePeer,
        ae_title: str,
        retrieve: Retrieve,
        pseudonymizer: Pseudonymizer,
        site: str,
        checkpoint: PullCheckpoint,
        summary: PullSummary,
        retry: RetryPolicy,
        timeout: float,
        on_outcome: Callable[[Outcome], None] | None,
    ) -> None:
        super().__init__(
            pipeline=pipeline, checkpoint=checkpoint, summary=summary, on_outcome=on_outcome
        )
        self.peer = peer
        self.retrieve_by = retrieve
        self.pseudo = pseudonymizer
        self.site = site
        self.retry = retry
        self.retries = 0
        self.current = _Retrieval()
        self._search: Association | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.maximum_pdu_size = _MAX_PDU
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.roles: list[SCP_SCU_RoleSelectionNegotiation] = []
        if retrieve == "get":
            # C-GET: the PACS sends the instances back on this association, so medai
            # offers the storage contexts as SCP (at most 128 contexts in all).
            self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for context in StoragePresentationContexts[:125]:
                assert context.abstract_syntax is not None
                self.ae.add_requested_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
                self.roles.append(build_role(context.abstract_syntax, scp_role=True))
        else:
            self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            for context in AllStoragePresentationContexts:  # an SCP has no 128 limit
                assert context.abstract_syntax is not None
                self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
            self.ae.require_calling_aet = [peer.ae_title]  # only the PACS may store here

    # -- the storage side (C-MOVE's SCP, or C-GET's sub-operations) ----------------------

    def handle_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: offer the instance to the pipeline's batches; Success once queued.

        Success before the batch commits is safe for a pull: an instance lost to a crash
        is not catalogued, so the next run retrieves it again.
        """
        try:
            data = event.encoded_dataset(include_meta=True)
            request = event.request
            assert isinstance(request, C_STORE)
            sop = str(request.AffectedSOPInstanceUID or "")
        except Exception as exc:  # a dataset pynetdicom cannot encode: the PACS may retry
            logger.error("could not read an instance from the PACS: %s", type(exc).__name__)
            return _STORE_REFUSED
        with self.current.lock:
            try:
                self.add(self.current.study, self.pseudo.uid(sop) if sop else "", self._offer(data))
            except Exception as exc:  # not in custody: the retrieve comes up short, retried
                logger.error("could not take a pulled instance: %s", type(exc).__name__)
                return _STORE_REFUSED
            self.current.received += 1
        return _STORE_OK

    def _offer(self, data: bytes) -> Offer:
        return Offer(data, self.site, SOURCE, self.summary.run_id)

    def start_storage(self, host: str, port: int) -> ThreadedAssociationServer:
        """C-MOVE's destination: medai's storage SCP, for the length of the pull."""
        try:
            server = self.ae.start_server(
                (host, port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self.handle_store)],
            )
        except OSError as exc:
            raise PullError(
                f"cannot listen on {host}:{port} for the C-MOVE's instances ({exc.strerror}): "
                "choose another --store-port"
            ) from None
        assert server is not None  # block=False returns it
        return server

    # -- associations and retries --------------------------------------------------------

    def associate(self, *, search: bool = False) -> Association:
        """An association for a search (C-FIND only) or a retrieve (with C-GET's roles)."""
        if search:
            contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
            assoc = self.ae.associate(
                self.peer.host,
                self.peer.port,
                contexts,
                ae_title=self.peer.ae_title,
                evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
            )
        else:
            handlers: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, no_delay)]
            if self.roles:  # C-GET: the instances come back on this association
                handlers.append((evt.EVT_C_STORE, self.handle_store))
            assoc = self.ae.associate(
                self.peer.host,
                self.peer.port,
                [c for c in self.ae.requested_contexts if c.abstract_syntax != _FIND],
                ae_title=self.peer.ae_title,
                ext_neg=list(self.roles) or None,
                evt_handlers=handlers,
            )
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise PullError(
                f"{self.peer} rejected the association: check that it knows medai's AE "
                f"title {self.ae.ae_title} and that {self.peer.ae_title} is its AE title"
            )
        raise _Transient("association not established")

    def attempts(self, what: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation`` under the retry policy; PullError when attempts run out."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except _Transient as exc:
                problem = str(exc)
            if attempt >= self.retry.max_attempts:
                raise PullError(
                    f"the {what} at {self.peer} kept failing ({problem} on each of "
                    f"{attempt} attempts): check the PACS and the network"
                )
            wait = self.retry.delay(attempt)
            self.retries += 1
            logger.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                what,
                problem,
                attempt,
                self.retry.max_attempts - 1,
                wait,
            )
            time.sleep(wait)

    # -- searching ------------------------------------------------------------------------

    def find(self, first: dt.date, last: dt.date) -> list[tuple[str, int | None]]:
        """The window's studies as (original StudyInstanceUID, announced instance count)."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyDate = _da(first) if first == last else f"{_da(first)}-{_da(last)}"
        query.StudyInstanceUID = ""
        query.NumberOfStudyRelatedInstances = ""
        found = []
        for identifier in self.attempts("study search", lambda: self._c_find(query)):
            uid = str(identifier.get("StudyInstanceUID", "") or "")
            if uid:
                found.append((uid, _count(identifier)))
        return found

    def _c_find(self, query: Dataset) -> list[Dataset]:
        """One C-FIND's matches; the search association serves every search in turn."""
        if self._search is None or not self._search.is_established:
            self._search = self.associate(search=True)
        assoc, found, finished = self._search, [], False
        try:
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = int(status.get("Status", -1)) if status else -1
                if code in _PENDING and identifier is not None:
                    found.append(identifier)
                elif code == _SUCCESS:
                    finished = True
                    return found
                elif code == -1:
                    raise _Transient("the association dropped during the C-FIND")
                else:
                    raise PullError(f"{self.peer} refused the search (status 0x{code:04X})")
            raise _Transient("the C-FIND ended without a final status")
        finally:
            if not finished:  # a failed association is dropped, the next search makes one
                self.close_search()

    def close_search(self) -> None:
        """Release the search association (abort it when it is not well)."""
        assoc, self._search = self._search, None
        if assoc is not None:
            assoc.release() if assoc.is_established else assoc.abort()

    # -- retrieving -----------------------------------------------------------------------

    def study(self, uid: str, announced: int | None) -> None:
        """Retrieve what is missing of one study; mark it done once all of it arrived.

        A study none of which is catalogued is retrieved whole. One partly catalogued (a
        retrieve cut off earlier) is listed instance by instance (IMAGE-level C-FIND) and
        only the instances neither catalogued nor quarantined are retrieved, one by one.
        """
        key = self.pseudo.uid(uid)
        done = self.checkpoint.done.get(key)
        if done is not None and (announced is None or announced <= done):
            self.summary.studies_skipped += 1
            return

        def once() -> int:
            if not self.catalogued_in_study(key):
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                query.StudyInstanceUID = uid
                received = self._retrieve(query, key, announced or 0)
                self.summary.instances_found += received
                return received
            return self._retrieve_missing(uid, key)

        count = self.attempts("retrieve", once)
        self.checkpoint.done[key] = count
        self.summary.studies_pulled += 1
        self.save()
        logger.info("pulled study %s: %d instances", key, count)

    def _retrieve_missing(self, uid: str, key: str) -> int:
        """Retrieve the instances of a partly catalogued study that are missing; its size."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        listed = {}
        for identifier in self._c_find(query):
            series, sop = identifier.get("SeriesInstanceUID"), identifier.get("SOPInstanceUID")
            if series and sop:
                listed[self.pseudo.uid(str(sop))] = (str(series), str(sop))
        skip = self.catalogued(list(listed)) | set(self.checkpoint.quarantined.get(key, ()))
        missing = [uids for sop_key, uids in listed.items() if sop_key not in skip]
        self.summary.instances_found += len(listed)
        self.summary.instances_skipped += len(listed) - len(missing)
        for series, sop in missing:
            instance = Dataset()
            instance.QueryRetrieveLevel = "IMAGE"
            instance.StudyInstanceUID = uid
            instance.SeriesInstanceUID = series
            instance.SOPInstanceUID = sop
            self._retrieve(instance, key, 1)
        return len(listed)

    def _retrieve(self, query: Dataset, key: str, announced: int) -> int:
        """One C-MOVE or C-GET; the instances received, all of those it announced.

        Raises
        ------
        _Transient
            The association dropped, sub-operations failed, or fewer instances arrived
            than announced (by the search, or the retrieve's completed count).
        PullError
            The PACS refused the retrieve itself.
        """
        with self.current.lock:
            self.current.study, self.current.received = key, 0
        assoc = self.associate()
        final: Dataset | None = None
        try:
            if self.retrieve_by == "get":
                responses = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            else:
                responses = assoc.send_c_move(
                    query, self.ae.ae_title, StudyRootQueryRetrieveInformationModelMove
                )
            for status, _identifier in responses:
                code = int(status.get("Status", -1)) if status else -1
                if code not in _PENDING:
                    final = status if code != -1 else None
                    break
        finally:
            assoc.release() if assoc.is_established else assoc.abort()
        with self.current.lock:
            self.flush()
            received = self.current.received
        if final is None:
            raise _Transient("the association dropped during the retrieve")
        code = int(final.Status)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
        if code not in (_SUCCESS, _WARNING):
            if code in (0xA701, 0xA702, 0xC000) or failed:  # sub-operations failed
                raise _Transient(f"the retrieve ended with status 0x{code:04X}")
            raise PullError(
                f"{self.peer} refused the retrieve (status 0x{code:04X}): check that it "
                f"knows medai's AE title {self.ae.ae_title} as a move destination"
            )
        expected = max(announced, completed)
        if failed or received < expected:
            raise _Transient(f"{received} of {expected} instances arrived")
        return received

    def catalogued_in_study(self, key: str) -> bool:
        """Whether any instance of this (pseudonymized) study is catalogued."""
        with self._reads() as session:
            found = session.scalar(
                select(Instance.id)
                .join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_uid == key)
                .limit(1)
            )
        return found is not None


def pull_site_dimse(
    site: str,
    peer: DimsePeer | str,
    since: dt.date,
    until: dt.date | None = None,
    *,
    settings: Settings | None = None,
    retrieve: Retrieve = "move",
    ae_title: str = "MEDAI",
    store_host: str = "0.0.0.0",
    store_port: int = 11113,
    window_days: int = 1,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
    fresh: bool = False,
    on_total: Callable[[int], None] | None = None,
    on_study: Callable[[], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> PullSummary:
    """Pull ``site``'s studies dated ``since``..``until`` from its PACS over DIMSE.

    Parameters
    ----------
    site
        The campaign site id the PACS belongs to.
    peer
        The PACS, as a :class:`DimsePeer` or ``AE@HOST:PORT``.
    since, until
        The StudyDate window, both days included; ``until`` None means today.
    retrieve
        ``move`` (C-MOVE to medai's storage SCP on ``store_host:store_port``, which the
        PACS must know as ``ae_title``) or ``get`` (C-GET, on the same association).
    ae_title
        medai's AE title: the calling AE title, and the C-MOVE destination.
    window_days
        Days per C-FIND (the search is paged by date).
    retry, timeout
        Back-off for dropped associations and short retrieves; seconds to wait for the
        PACS on each message.
    fresh
        Ignore earlier checkpoints of this pull.
    on_total, on_study, on_outcome
        Progress: the number of date windows, each window searched and its studies
        retrieved, and each instance's outcome.

    Raises
    ------
    UnknownSite, CampaignError, KeyFileError, PullError
        Before anything is fetched (a bad peer, ``until`` before ``since``, a port in use).
    PullStopped
        When the PACS refuses, or fails through every retry. What was pulled until then
        is kept and accounted for; the same pull run again resumes.
    """
    settings = settings or get_settings()
    node = peer if isinstance(peer, DimsePeer) else DimsePeer.parse(peer)
    last_day = until or dt.date.today()
    if last_day < since:
        raise PullError(f"--until {last_day} is before --since {since}")
    if window_days < 1:
        raise PullError("--window-days must be at least 1")
    pipeline = IngestPipeline.from_settings(settings)  # fails early on set-up problems
    pipeline.check_site(site)
    checkpoint = resume_checkpoint(pipeline, site, SOURCE, node.url, since, until, fresh=fresh)
    started = time.perf_counter()
    summary = PullSummary(run_id=start_run(pipeline, site, SOURCE, checkpoint))
    pull = _DimsePull(
        pipeline=pipeline,
        peer=node,
        ae_title=ae_title,
        retrieve=retrieve,
        pseudonymizer=pipeline.deidentifier.pseudonymizer,
        site=site,
        checkpoint=checkpoint,
        summary=summary,
        retry=retry or RetryPolicy(),
        timeout=timeout,
        on_outcome=on_outcome,
    )
    server = None
    try:
        if retrieve == "move":
            server = pull.start_storage(store_host, store_port)
        windows = list(_windows(since, last_day, window_days))
        if on_total:
            on_total(len(windows))
        today, saved = dt.date.today(), time.monotonic()
        for first, last in windows:
            name = f"{first.isoformat()}/{last.isoformat()}"
            if name not in checkpoint.windows_done:
                studies = pull.find(first, last)
                summary.studies_found += len(studies)
                for uid, announced in studies:
                    pull.study(uid, announced)
                if last < today:  # a window that includes today may still grow
                    checkpoint.windows_done.append(name)
                    # Empty windows are many (nights, weekends): saved with the next study
                    # or every few seconds, not one catalog write each.
                    if studies or time.monotonic() - saved > _SAVE_SECONDS:
                        pull.save()
                        saved = time.monotonic()
            if on_study:
                on_study()
    except PullError as exc:
        with pull.current.lock:
            pull.flush()  # keep what arrived; the run ends balanced
        checkpoint.studies_found = summary.studies_found
        raise stopped_run(pull, exc, time.perf_counter() - started, pull.retries) from None
    finally:
        pull.close_search()
        if server is not None:
            server.shutdown()
    checkpoint.studies_found = summary.studies_found
    checkpoint.complete = summary.complete = True
    finish_run(pull, time.perf_counter() - started, pull.retries)
    return summary
