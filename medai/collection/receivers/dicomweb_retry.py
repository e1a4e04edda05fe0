"""Retries of a DICOMweb archive's requests: back-off with jitter, and errors that name no UID.

:class:`RetryPolicy` says how long to wait; :class:`Retrying` runs one request under it,
retrying what is transient (connection errors, time-outs, HTTP 429 and 5xx, answers that
end early) and turning the rest into :class:`~medai.errors.PullError`. Exception texts of
requests and dicomweb-client are never shown: they quote URLs, and the URLs of DICOMweb
hold the archive's original UIDs.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests

from medai.errors import IncompleteResponse, PullError

__all__ = ["RetryPolicy", "Retrying"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_MAX_RETRY_AFTER = 300.0  # seconds: a server asking for longer is not waited for

_HINTS = {
    400: "the server did not accept the query",
    401: "authentication is required: pass --token or --header",
    403: "access is denied to these credentials: check --token or --header",
    404: "check that the URL is the DICOMweb root (e.g. http://host:8042/dicom-web)",
}

# Everything that means "the bytes did not (all) arrive": retried.
_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.InvalidJSONError,  # a QIDO answer cut before its end
    IncompleteResponse,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter for transient failures.

    Attempt ``n`` (from 1) that fails waits between half and all of
    ``min(max_delay, base_delay * 2**(n - 1))`` seconds (the random half spreads
    clients that failed together), or longer when the server's ``Retry-After``
    asks so (up to five minutes).

    Parameters
    ----------
    max_attempts
        Attempts per request before the pull stops, the first one included.
    base_delay, max_delay
        Seconds; see above.
    """

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("max_attempts must be >= 1 and the delays >= 0")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter: no secrecy needed
        if retry_after is not None:
            wait = max(wait, min(retry_after, _MAX_RETRY_AFTER))
        return wait


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _transient_status(status: int) -> bool:
    return status == 429 or status >= 500


class Retrying:
    """Runs the requests to one archive under a :class:`RetryPolicy`.

    Parameters
    ----------
    url
        The archive's DICOMweb root, without credentials: what error messages name.
    policy
        The retry policy.

    Attributes
    ----------
    retries
        Retries made so far, over every request.
    reached
        Whether the archive ever answered (an error then says the request kept failing,
        not that the archive cannot be reached).
    """

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        self.url = url
        self.policy = policy
        self.retries = 0
        self.reached = False

    def __call__(self, operation: Callable[[], _T], what: str) -> _T:
        """Run ``operation``, retrying transient failures; clear errors for the rest.

        Raises
        ------
        PullError
            When the archive refuses (4xx but 429), sends an answer dicomweb-client
            cannot use, or fails on every attempt.
        """
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                result = operation()
                self.reached = True
                return result
            except requests.exceptions.SSLError:
                # An untrusted or mismatched certificate does not heal with time: say so now.
                raise PullError(
                    f"cannot verify the TLS certificate of {self.url}: pass --ca-file with "
                    "the CA (or the archive's own certificate) that signs it"
                ) from None
            except requests.HTTPError as exc:
                self.reached = True
                status = exc.response.status_code if exc.response is not None else 0
                if not _transient_status(status):
                    hint = _HINTS.get(status, "the request was refused")
                    raise PullError(
                        f"{self.url} answered the {what} with HTTP {status}: {hint}"
                    ) from None
                problem = f"HTTP {status}"
                retry_after = _retry_after(exc.response)
            except _TRANSIENT_ERRORS as exc:
                problem = type(exc).__name__
            except ValueError:
                # dicomweb-client's own checks (UIDs, media types) quote the values.
                raise PullError(f"{self.url} sent an unusable answer to the {what}") from None
            if attempt >= self.policy.max_attempts:
                tried = f"{problem} on each of {attempt} attempts"
                if self.reached:
                    raise PullError(f"the {what} at {self.url} kept failing ({tried})") from None
                raise PullError(
                    f"cannot reach {self.url} ({tried}): check the URL and the network"
                ) from None
            wait = self.policy.delay(attempt, retry_after)
            self.retries += 1
            logger.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                what,
                problem,
                attempt,
                self.policy.max_attempts - 1,
                wait,
            )
            time.sleep(wait)
