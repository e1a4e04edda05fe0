"""A site's DICOMweb archive: QIDO-RS searches and WADO-RS retrievals, retried.

:class:`DicomwebSource` lists studies in a StudyDate window and the instances of a
study with ``dicomweb_client.DICOMwebClient`` (QIDO-RS, paged with
``offset``/``limit`` since servers cap their answers), and fetches each instance
by WADO-RS, one request per instance, as stored (``transfer-syntax=*``).

Faults. Connection errors, time-outs, HTTP 429 and 5xx, and answers that end
early are retried with exponential back-off and jitter
(:mod:`~medai.collection.receivers.dicomweb_retry`). An instance is returned only
once its whole multipart answer, closing delimiter included, has arrived
(:func:`part10_from_response`, on :func:`medai.dicom.multipart.split_multipart`), so a
cut download is retried rather than handed on truncated. Other 4xx answers, and
retries exhausted, raise :class:`~medai.errors.PullError` with a message that names
the operation and the server (without credentials), never a UID: the URLs of this API
hold the archive's original UIDs, so no exception text of requests or dicomweb-client
is ever shown, and their debug logs are kept quiet (:func:`quiet_identifying_loggers`).

Why WADO-RS goes through our own request on the client's session rather than
``DICOMwebClient.retrieve_instance``: the latter returns a parsed pydicom
dataset, not the bytes as sent (which the quarantine must keep, and which a
file pydicom cannot read would never reach the pipeline as), and its multipart
decoder hands back whatever it holds when a body ends without its closing
delimiter.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
from dicomweb_client import DICOMwebClient

from medai.collection.receivers.dicomweb_retry import Retrying, RetryPolicy
from medai.dicom.multipart import DICOM_MEDIA_TYPE, parse_content_type, split_multipart
from medai.errors import MalformedMultipart, PullError, TooLarge

__all__ = [
    "DicomwebSource",
    "RemoteInstance",
    "RemoteStudy",
    "RetryPolicy",
    "TrustingAdapter",
    "part10_from_response",
    "quiet_identifying_loggers",
    "redact_url",
    "split_credentials",
]

logger = logging.getLogger(__name__)

# DICOM JSON tags of the attributes read from QIDO-RS answers.
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances

# As stored: no transcoding on the server, the pipeline reads every syntax it can.
_ACCEPT_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# Multipart framing around one instance (boundaries, part headers) is far below this.
_FRAMING_SLACK = 64 * 1024


# -- URLs -------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without credentials, query or fragment: what may be shown and stored."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its ``user:password@`` part, and those credentials.

    Raises
    ------
    PullError
        When the URL is not an http(s) URL with a host, or carries a query.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PullError(
            f"{redact_url(url)!r} is not a DICOMweb URL: give the service root, "
            "e.g. http://pacs.example.org:8042/dicom-web"
        )
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise PullError(f"{redact_url(url)!r} has an invalid port number") from None
    if parts.query or parts.fragment:
        raise PullError(
            "the DICOMweb URL must not carry a query or fragment; "
            "pass credentials with --token or --header"
        )
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return redact_url(url.strip()), auth


# -- WADO-RS answers --------------------------------------------------------------------


def part10_from_response(body: bytes, content_type: str) -> bytes:
    """The one instance in a WADO-RS Retrieve Instance answer (PS3.18 8.6.1.1).

    Parameters
    ----------
    body
        The answer's body, as received.
    content_type
        Its ``Content-Type`` header: ``multipart/related`` with a boundary (or a
        bare ``application/dicom``, which some servers send).

    Returns
    -------
    bytes
        The instance's Part 10 bytes.

    Raises
    ------
    IncompleteResponse
        When the body ends before the part's declared length, or before the
        multipart closing delimiter: the download was cut.
    PullError
        When the answer is not one instance (another media type, a malformed body,
        no part, several).
    """
    try:
        media_type, params = parse_content_type(content_type)
    except MalformedMultipart:
        raise PullError(
            "the server answered an instance retrieval with a malformed Content-Type"
        ) from None
    if media_type == DICOM_MEDIA_TYPE:
        return body  # no framing to check: the HTTP layer checked Content-Length
    boundary = params.get("boundary")
    if media_type != "multipart/related" or not boundary:
        raise PullError(f"the server answered an instance retrieval with {media_type!r}")
    try:
        parts = split_multipart(body, boundary)
    except MalformedMultipart as exc:
        raise PullError(
            f"the server's answer to an instance retrieval is malformed: {exc}"
        ) from None
    if not parts:
        raise PullError("the server answered an instance retrieval with no instance")
    if len(parts) > 1:
        raise PullError("the server answered an instance retrieval with several parts")
    return parts[0].data


# -- the remote archive -----------------------------------------------------------------


@dataclass(frozen=True)
class RemoteStudy:
    """A study found by QIDO-RS (original UID: never stored or logged)."""

    uid: str
    instances: int | None  # NumberOfStudyRelatedInstances, when the server gives it


@dataclass(frozen=True)
class RemoteInstance:
    """An instance found by QIDO-RS (original UIDs: never stored or logged)."""

    study_uid: str
    series_uid: str
    sop_uid: str


def _first(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _count(item: Mapping[str, Any], tag: str) -> int | None:
    try:
        return int(_first(item, tag))
    except (TypeError, ValueError):
        return None


def _date_range(since: dt.date, until: dt.date | None) -> str:
    return f"{since:%Y%m%d}-{until:%Y%m%d}" if until else f"{since:%Y%m%d}-"


class TrustingAdapter(requests.adapters.HTTPAdapter):
    """Verifies every HTTPS request against one CA file, whatever the environment says."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self._ca_file = ca_file

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(request, stream, timeout, self._ca_file, cert, proxies)


class DicomwebSource:
    """A site's DICOMweb archive, every request retried per :class:`RetryPolicy`.

    Parameters
    ----------
    url
        The DICOMweb root (``http://host:8042/dicom-web``); ``user:password@``
        in it becomes HTTP basic authentication.
    headers
        Extra request headers (e.g. ``Authorization``).
    retry
        The retry policy.
    timeout
        Seconds to connect, and to wait for each read.
    page_size
        QIDO-RS ``limit``: results asked for per request.
    ca_file
        PEM CA certificate(s) (or the archive's self-signed certificate) that an
        ``https://`` archive's certificate is verified against, instead of the system's.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] = (10.0, 120.0),
        page_size: int = 200,
        ca_file: Path | None = None,
    ) -> None:
        self.url, auth = split_credentials(url)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.page_size = page_size
        self._retrying = Retrying(self.url, self.retry)
        self.session = requests.Session()
        if ca_file is not None:
            # Not session.verify: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override it.
            self.session.mount("https://", TrustingAdapter(str(ca_file)))
        if auth is not None:
            self.session.auth = auth
        try:
            self.client = DICOMwebClient(
                url=self.url,
                session=self.session,
                headers=dict(headers or {}),
                timeout=timeout,
                # Real archives hold non-conformant UIDs; refusing them would stall the pull.
                permissive_uid=True,
            )
        except ValueError:
            self.session.close()
            raise PullError(f"dicomweb-client cannot use the URL {self.url}") from None
        self.client.set_http_retry_params(retry=False)  # ours has jitter and more causes

    @property
    def retries(self) -> int:
        """Retries made so far, over every request."""
        return self._retrying.retries

    def close(self) -> None:
        self.session.close()

    # -- QIDO-RS ------------------------------------------------------------------------

    def studies(self, since: dt.date, until: dt.date | None) -> list[RemoteStudy]:
        """Every study with a StudyDate in the window, each once."""
        items = self._paged(
            lambda offset, limit: self.client.search_for_studies(
                search_filters={"StudyDate": _date_range(since, until)},
                fields=["NumberOfStudyRelatedInstances"],
                offset=offset,
                limit=limit,
            ),
            key=_STUDY_UID,
            what="study search",
        )
        return [RemoteStudy(str(_first(i, _STUDY_UID)), _count(i, _STUDY_INSTANCES)) for i in items]

    def instances(self, study: RemoteStudy) -> list[RemoteInstance]:
        """Every instance of ``study``, each once."""
        items = self._paged(
            lambda offset, limit: self.client.search_for_instances(
                study_instance_uid=study.uid, offset=offset, limit=limit
            ),
            key=_SOP_UID,
            what="instance search",
            expected=study.instances,
        )
        if all(_first(item, _SERIES_UID) for item in items):
            return [
                RemoteInstance(study.uid, str(_first(i, _SERIES_UID)), str(_first(i, _SOP_UID)))
                for i in items
            ]
        # Study-level instance answers must carry the series UID, but not every server
        # sends it: fall back to series, then instances of each series.
        found: list[RemoteInstance] = []
        for series in self._paged(
            lambda offset, limit: self.client.search_for_series(
                study_instance_uid=study.uid, offset=offset, limit=limit
            ),
            key=_SERIES_UID,
            what="series search",
        ):
            found += self._series_instances(study.uid, str(_first(series, _SERIES_UID)))
        return found

    def _series_instances(self, study_uid: str, series_uid: str) -> list[RemoteInstance]:
        items = self._paged(
            lambda offset, limit: self.client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                offset=offset,
                limit=limit,
            ),
            key=_SOP_UID,
            what="instance search",
        )
        return [RemoteInstance(study_uid, series_uid, str(_first(i, _SOP_UID))) for i in items]

    def _paged(
        self,
        search: Callable[[int, int], list[dict[str, Any]]],
        *,
        key: str,
        what: str,
        expected: int | None = None,
    ) -> list[dict[str, Any]]:
        """All results of a QIDO-RS search, asking page after page.

        A short page does not mean the end (servers cap answers below ``limit``):
        only an empty page, a page with nothing new (a server ignoring ``offset``),
        or having the ``expected`` count does.
        """
        seen: dict[str, dict[str, Any]] = {}
        offset = 0
        while expected is None or len(seen) < expected:
            page = self._retrying(functools.partial(search, offset, self.page_size), what)
            new = 0
            for item in page:
                uid = _first(item, key)
                if uid and str(uid) not in seen:
                    seen[str(uid)] = item
                    new += 1
            if not new:
                break
            offset += len(page)
        return list(seen.values())

    # -- WADO-RS ------------------------------------------------------------------------

    def retrieve(self, instance: RemoteInstance, max_bytes: int) -> bytes | TooLarge:
        """The instance's Part 10 bytes, complete; or why it is too large to take."""
        url = "/".join(
            (
                self.url,
                "studies",
                quote(instance.study_uid, safe=""),
                "series",
                quote(instance.series_uid, safe=""),
                "instances",
                quote(instance.sop_uid, safe=""),
            )
        )
        limit = max_bytes + _FRAMING_SLACK

        def attempt() -> bytes | TooLarge:
            with self.session.get(
                url, headers={"Accept": _ACCEPT_INSTANCE}, stream=True, timeout=self.timeout
            ) as response:
                response.raise_for_status()
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limit:
                    return TooLarge(f"the archive sent {declared} bytes, over the limit")
                body = bytearray()
                for chunk in response.iter_content(chunk_size=1024 * 1024):
                    body += chunk
                    if len(body) > limit:
                        return TooLarge(f"the archive sent more than {max_bytes} bytes")
                content_type = response.headers.get("Content-Type", "")
            data = part10_from_response(bytes(body), content_type)
            if len(data) > max_bytes:
                return TooLarge(f"instance of {len(data)} bytes exceeds the limit of {max_bytes}")
            return data

        return self._retrying(attempt, "instance retrieval")


def quiet_identifying_loggers() -> None:
    """Keep third-party debug logs, which quote request URLs (original UIDs), out of the log."""
    for name, level in (("dicomweb_client", logging.WARNING), ("urllib3", logging.INFO)):
        third_party = logging.getLogger(name)
        if third_party.getEffectiveLevel() < level:
            third_party.setLevel(level)
