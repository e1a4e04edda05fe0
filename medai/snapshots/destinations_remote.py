"""Export destinations over the network: a DICOMweb server (STOW-RS) and a DICOM node (C-STORE).

Each instance's Part 10 bytes are sent as stored (never re-encoded), and confirmed only on
the receiver's word: for STOW-RS the response's ReferencedSOPSequence (an instance in
FailedSOPSequence, or in neither, is not confirmed); for C-STORE a Success or Warning
status of its own request. Dropped connections and server errors are retried with the
pull's back-off (:class:`~medai.collection.receivers.dicomweb_retry.Retrying`).
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from medai.collection.receivers.dicomweb_archive import TrustingAdapter, split_credentials
from medai.collection.receivers.dicomweb_retry import Retrying, RetryPolicy
from medai.collection.receivers.dimse_pull import DimsePeer, no_delay
from medai.errors import PullError, SnapshotError
from medai.snapshots.destinations import ExportItem, PartialSend, Sent

__all__ = ["CStoreDestination", "StowDestination"]

logger = logging.getLogger(__name__)

_REFERENCED, _FAILED = "00081199", "00081198"
_SOP_INSTANCE, _FAILURE_REASON = "00081155", "00081197"
_OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # Success, and Warnings (stored, coerced)


class StowDestination:
    """A DICOMweb server's STOW-RS: one multipart request per batch."""

    kind = "stow-rs"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] = (10.0, 120.0),
        ca_file: Path | None = None,
    ) -> None:
        # The same URL checks (password never echoed) and CA pinning as the DICOMweb pull's.
        try:
            self.url, auth = split_credentials(url)
        except PullError as exc:
            raise SnapshotError(str(exc)) from None
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(dict(headers or {}))
        if ca_file is not None:
            self.session.mount("https://", TrustingAdapter(str(ca_file)))
        self.timeout = timeout
        self.retrying = Retrying(self.url, retry or RetryPolicy())

    def describe(self) -> str:
        return self.url

    def send(self, items: list[ExportItem]) -> list[Sent]:
        boundary = secrets.token_hex(16)
        chunks: list[bytes] = []
        for item in items:
            chunks += [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                item.data,
                b"\r\n",
            ]
        chunks.append(f"--{boundary}--\r\n".encode())
        body = b"".join(chunks)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }

        def post() -> Any:
            response = self.session.post(
                f"{self.url}/studies", data=body, headers=headers, timeout=self.timeout
            )
            if response.status_code not in (200, 202, 409):  # 409: some failed, listed
                response.raise_for_status()
            return response.json() if response.content else {}

        try:
            answer = self.retrying(post, "STOW-RS upload")
        except PullError as exc:
            raise SnapshotError(str(exc)) from None
        referenced = {_uid(entry) for entry in _sequence(answer, _REFERENCED)}
        failed = {_uid(entry): _reason(entry) for entry in _sequence(answer, _FAILED)}
        sent = []
        for item in items:
            if item.sop_uid in referenced:
                sent.append(Sent(item.key, True))
            else:
                why = failed.get(item.sop_uid, "not in the server's answer")
                sent.append(Sent(item.key, False, why))
        return sent

    def close(self) -> None:
        self.session.close()

    @property
    def retries(self) -> int:
        return self.retrying.retries


def _sequence(answer: Any, tag: str) -> list[Any]:
    if not isinstance(answer, dict):
        return []
    value = answer.get(tag, {}).get("Value", [])
    return value if isinstance(value, list) else []


def _uid(entry: Any) -> str:
    try:
        return str(entry[_SOP_INSTANCE]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return ""


def _reason(entry: Any) -> str:
    try:
        return f"refused (failure reason 0x{int(entry[_FAILURE_REASON]['Value'][0]):04X})"
    except (KeyError, IndexError, TypeError, ValueError):
        return "refused"


class CStoreDestination:
    """A DICOM node's storage SCP: one association, one C-STORE per instance."""

    kind = "c-store"

    def __init__(
        self,
        node: str,
        *,
        ae_title: str = "MEDAI",
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
    ) -> None:
        try:
            self.peer = DimsePeer.parse(node)
        except PullError as exc:
            raise SnapshotError(str(exc)) from None
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.retry = retry or RetryPolicy()
        self.retries = 0
        self.assoc: Association | None = None
        self.contexts: set[tuple[str, str]] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="medai-export-")
        self._scratch = Path(self._tmp.name) / "instance.dcm"

    def describe(self) -> str:
        return str(self.peer)

    def _associate(self, items: list[ExportItem]) -> Association:
        """An association with a context for each (SOP class, transfer syntax) it needs."""
        needed = {(item.sop_class, item.transfer_syntax) for item in items}
        if self.assoc is not None and self.assoc.is_established and needed <= self.contexts:
            return self.assoc
        self.release()
        self.contexts |= needed
        if len(self.contexts) > 128:
            self.contexts = needed
        self.ae.requested_contexts = []
        for sop_class, syntax in sorted(self.contexts):
            self.ae.add_requested_context(sop_class, [syntax])
        assoc = self.ae.associate(
            self.peer.host,
            self.peer.port,
            ae_title=self.peer.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
        )
        if assoc.is_rejected:
            raise SnapshotError(
                f"{self.peer} rejected the association: check that it accepts the calling "
                f"AE title {self.ae.ae_title} and that {self.peer.ae_title} is its AE title"
            )
        if not assoc.is_established:
            raise _Dropped("association not established")
        self.assoc = assoc
        return assoc

    def send(self, items: list[ExportItem]) -> list[Sent]:
        sent: list[Sent] = []
        for item in items:
            try:
                sent.append(self._send_one(item, items))
            except SnapshotError as exc:  # the ones acknowledged so far stay confirmed
                raise PartialSend(sent, exc) from None
        return sent

    def _send_one(self, item: ExportItem, batch: list[ExportItem]) -> Sent:
        attempt = 0
        while True:
            attempt += 1
            try:
                assoc = self._associate(batch)
                # From a file, pynetdicom sends the data set's bytes as they are.
                self._scratch.write_bytes(item.data)
                status = assoc.send_c_store(self._scratch)
                code = int(status.Status) if status and "Status" in status else -1
                if code == -1:
                    raise _Dropped("no answer to a C-STORE")
                if code in _OK_STATUSES:
                    return Sent(item.key, True)
                return Sent(item.key, False, f"refused (status 0x{code:04X})")
            except _Dropped as exc:
                problem = str(exc)
            except ValueError as exc:  # no accepted context for this SOP class / syntax
                return Sent(item.key, False, f"not accepted by the node ({type(exc).__name__})")
            self.release()
            if attempt >= self.retry.max_attempts:
                raise SnapshotError(
                    f"C-STORE to {self.peer} kept failing ({problem} on each of {attempt} "
                    "attempts): check the node and the network, then run the export again"
                )
            self.retries += 1
            time.sleep(self.retry.delay(attempt))

    def find_back(self, study_uid: str) -> set[tuple[str, str]]:
        """The (series, SOP Instance UID) pairs the node holds of a study (IMAGE C-FIND).

        Raises
        ------
        SnapshotError
            When the node does not answer the search (not every storage SCP does).
        """
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        assoc = self.ae.associate(
            self.peer.host,
            self.peer.port,
            [build_context(StudyRootQueryRetrieveInformationModelFind)],
            ae_title=self.peer.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
        )
        if not assoc.is_established:
            raise SnapshotError(f"{self.peer} does not accept a C-FIND to check the export")
        found: set[tuple[str, str]] = set()
        try:
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = int(status.Status) if status and "Status" in status else -1
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    series = str(identifier.get("SeriesInstanceUID", ""))
                    found.add((series, str(identifier.get("SOPInstanceUID", ""))))
                elif code != 0x0000:
                    raise SnapshotError(
                        f"{self.peer} did not answer the C-FIND that checks the export"
                        + (f" (status 0x{code:04X})" if code != -1 else "")
                    )
        finally:
            assoc.release() if assoc.is_established else assoc.abort()
        return found

    def release(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            assoc.release() if assoc.is_established else assoc.abort()

    def close(self) -> None:
        self.release()
        self._tmp.cleanup()


class _Dropped(Exception):
    """The association dropped or was never made: retried."""
