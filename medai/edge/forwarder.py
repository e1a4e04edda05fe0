"""Forwarding the outbox to the centre: STOW-RS batches that survive anything the link does.

Each batch is one receipt day's oldest unacknowledged instances (:meth:`Outbox.next_batch`),
sent as one ``multipart/related`` STOW-RS request to ``<centre>/dicomweb/studies?site=SITE``
with the edge key and ``Medai-Receipt-Day``. The body is streamed from the edge's store
files (one file read at a time, through a token bucket when a bandwidth cap is set), so the
forwarder never holds more than a chunk of a batch. Only what the centre's response lists
is acknowledged (ReferencedSOPSequence: stored or duplicate; FailedSOPSequence: quarantined
centrally, with its reason); any other answer, a cut connection or a time-out acknowledges
nothing and the batch is sent again after an exponential backoff with jitter (or the
centre's ``Retry-After``). Re-sending is harmless: the centre dedupes on the pseudonymized
SOP Instance UID and answers a re-sent instance as referenced.

Once a study's instances are acknowledged, its keys (the keyed hashes of the accession
number and the site's PatientID, which the edge computed before de-identification removed
them) are posted to ``<centre>/v1/edge/study-keys``, so that the site's label sheets find
the study at the centre. The outbox keeps them until the centre answers; a failed post is
tried again after its own backoff, without holding up the instances.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medai.errors import EdgeError
from medai.store import ObjectStore

if TYPE_CHECKING:
    import httpx

    from medai.edge.outbox import Outbox, OutboxItem

__all__ = [
    "Backoff",
    "BatchResult",
    "Forwarder",
    "TimeWindows",
    "TokenBucket",
    "parse_windows",
    "stow_outcomes",
]

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
REFERENCED = "00081199"
FAILED = "00081198"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
STUDY_KEYS_PATH = "/v1/edge/study-keys"
STUDY_KEYS_PER_POST = 500
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


# -- time windows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeWindows:
    """Local times of day forwarding is allowed in; none means always.

    A window whose end is before its start crosses midnight (``22:00-06:00``).
    """

    windows: tuple[tuple[dt.time, dt.time], ...] = ()

    def open_at(self, moment: dt.datetime) -> bool:
        """Whether forwarding is allowed at ``moment`` (a local time)."""
        if not self.windows:
            return True
        now = moment.time()
        for start, end in self.windows:
            if start <= end:
                if start <= now < end:
                    return True
            elif now >= start or now < end:
                return True
        return False

    def __str__(self) -> str:
        if not self.windows:
            return "always"
        return ",".join(f"{s:%H:%M}-{e:%H:%M}" for s, e in self.windows)


def parse_windows(text: str) -> TimeWindows:
    """``"22:00-06:00[,HH:MM-HH:MM]"`` as :class:`TimeWindows` (empty text: always).

    Raises
    ------
    EdgeError
        For a window that is not ``HH:MM-HH:MM`` or is empty (start = end).
    """
    windows = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _WINDOW.match(part)
        if match is None:
            raise EdgeError(
                f"MEDAI_EDGE_WINDOWS: {part.strip()!r} is not a window HH:MM-HH:MM "
                '(e.g. "22:00-06:00")'
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise EdgeError(f"MEDAI_EDGE_WINDOWS: {part.strip()!r} is not a time of day")
        start, end = dt.time(h1, m1), dt.time(h2, m2)
        if start == end:
            raise EdgeError(f"MEDAI_EDGE_WINDOWS: {part.strip()!r} is empty (start = end)")
        windows.append((start, end))
    return TimeWindows(tuple(windows))


# -- bandwidth and backoff -------------------------------------------------------------------


class TokenBucket:
    """A bandwidth cap: :meth:`take` blocks until ``n`` bytes may be sent.

    Parameters
    ----------
    rate
        Bytes per second; 0 means unlimited.
    burst
        Bytes that may go at once after a pause (default: one second's worth, at least a chunk).
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(rate, CHUNK))
        self.tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Wait until ``n`` bytes fit under the cap, then spend them."""
        if self.rate <= 0:
            return
        with self._lock:
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
                self._last = now
                # A request larger than the bucket waits until the bucket is full.
                need = min(float(n), self.capacity)
                if self.tokens >= need:
                    self.tokens -= n
                    return
                self._sleep((need - self.tokens) / self.rate)


@dataclass
class Backoff:
    """Exponential backoff with full jitter, capped; reset by a success."""

    base: float = 1.0
    cap: float = 300.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, retry_after: float | None = None) -> float:
        """Count a failure and return how long to wait before the next attempt.

        The centre's ``Retry-After`` is honoured (never waited less than, capped by ``cap``).
        """
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        delay = self.rng.uniform(min(self.base, ceiling) / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def reset(self) -> None:
        self.failures = 0


# -- the STOW-RS request ---------------------------------------------------------------------


def stow_outcomes(body: Any) -> dict[str, str]:
    """The instances a STOW-RS response (DICOM JSON) answers for: UID -> outcome.

    ``"referenced"`` for ReferencedSOPSequence items (stored or duplicate at the centre),
    ``"failed:<reason>"`` for FailedSOPSequence items (quarantined centrally). Anything the
    response does not list is not in the centre's custody.
    """
    outcomes: dict[str, str] = {}
    if not isinstance(body, dict):
        return outcomes
    for tag, label in ((FAILED, "failed"), (REFERENCED, "referenced")):
        element = body.get(tag)
        items = element.get("Value", []) if isinstance(element, dict) else []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            uid = ((item.get(_SOP_INSTANCE) or {}).get("Value") or [None])[0]
            if not isinstance(uid, str):
                continue
            if label == "failed":
                reason = ((item.get(_FAILURE_REASON) or {}).get("Value") or [""])[0]
                outcomes[uid] = f"failed:{reason}"
            else:
                outcomes[uid] = "referenced"
    return outcomes


class _Body:
    """A batch's multipart/related body, streamed from the store (its length known first)."""

    def __init__(self, store: ObjectStore, items: list[OutboxItem], bucket: TokenBucket) -> None:
        self.boundary = f"medai-edge-{secrets.token_hex(12)}"
        self.parts = []
        length = 0
        for item in items:
            path = store.path(item.store_key)
            size = path.stat().st_size  # FileNotFoundError: the caller skips the item
            head = (
                f"--{self.boundary}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {size}\r\n\r\n"
            ).encode("ascii")
            self.parts.append((head, path, size))
            length += len(head) + size + 2
        self.tail = f"--{self.boundary}--\r\n".encode("ascii")
        self.length = length + len(self.tail)
        self.bucket = bucket

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __iter__(self) -> Iterator[bytes]:
        for head, path, size in self.parts:
            yield head
            sent = 0
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    self.bucket.take(len(chunk))
                    sent += len(chunk)
                    yield chunk
            if sent != size:  # changed under us: a short body fails the request, retried
                raise OSError(f"store file {path.name} changed while it was sent")
            yield b"\r\n"
        yield self.tail


@dataclass(frozen=True)
class BatchResult:
    """What one attempt did."""

    sent: int
    acknowledged: int
    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# How long one STOW-RS request should take: the batch size adapts to keep requests near it.
BATCH_TARGET_SECONDS = 1.0


class Forwarder:
    """Sends the outbox to the centre until stopped.

    Parameters
    ----------
    outbox
        The edge's outbox.
    store
        The edge's object store (the de-identified files).
    client
        An ``httpx.Client`` with the centre's base URL, the edge key and TLS settings.
    site
        The edge's site id.
    fill
        Called before each batch to enqueue new catalog instances (returns how many).
    """

    def __init__(
        self,
        outbox: Outbox,
        store: ObjectStore,
        client: httpx.Client,
        site: str,
        *,
        fill: Callable[[], int] = lambda: 0,
        batch_instances: int = 32,
        batch_bytes: int = 32 * 1024**2,
        bandwidth: int = 0,
        windows: TimeWindows | None = None,
        backoff_max: float = 300.0,
        idle_seconds: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone(),
    ) -> None:
        self.outbox, self.store, self.client, self.site = outbox, store, client, site
        self.fill = fill
        self.batch_instances, self.batch_bytes = batch_instances, batch_bytes
        self.bucket = TokenBucket(bandwidth)
        self.windows = windows or TimeWindows()
        self.backoff = Backoff(cap=backoff_max)
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.forwarded = 0
        self.keys_backoff = Backoff(cap=backoff_max)
        self._keys_due = 0.0  # time.monotonic() of the next study-keys post
        # Instances per request now: halved after a link failure; after a success, doubled
        # while a request takes under half of BATCH_TARGET_SECONDS and halved when it takes
        # over twice that. A cut loses the whole request in flight (nothing is acknowledged
        # until the centre answers), so short requests lose little on a link that drops.
        self.current_batch = batch_instances
        self.probe_seconds = min(2.0, max(idle_seconds, 0.05))

    def send_batch(self, items: list[OutboxItem]) -> BatchResult:
        """Send ``items`` in one STOW-RS request and acknowledge what the centre answers for."""
        import httpx

        present: list[OutboxItem] = []
        for item in items:
            if self.store.exists(item.store_key):
                present.append(item)
            else:
                # Its file is gone (a store fault): nothing to send; `collect verify` names it.
                logger.error(
                    "store file of outbox instance %d is missing; it stays unsent",
                    item.instance_id,
                )
        if not present:
            return BatchResult(0, 0, None, error="store files missing")
        try:
            body = _Body(self.store, present, self.bucket)
        except OSError as exc:
            return BatchResult(0, 0, None, error=f"store read failed ({exc.__class__.__name__})")
        self.outbox.record_attempt(present)
        headers = {
            "Content-Type": body.content_type,
            "Content-Length": str(body.length),
            "Accept": "application/dicom+json",
            "Medai-Receipt-Day": present[0].receipt_day,
        }
        try:
            response = self.client.post(
                "/dicomweb/studies", params={"site": self.site}, headers=headers, content=body
            )
        except (httpx.HTTPError, OSError) as exc:
            return BatchResult(len(present), 0, None, error=exc.__class__.__name__)
        if response.status_code not in (200, 202, 409):
            return BatchResult(
                len(present),
                0,
                response.status_code,
                error=f"HTTP {response.status_code}",
                retry_after=_retry_after(response),
            )
        try:
            answered = stow_outcomes(response.json())
        except ValueError:
            return BatchResult(len(present), 0, response.status_code, error="unreadable answer")
        ours = {item.sop_instance_uid for item in present}
        acked = self.outbox.acknowledge({u: o for u, o in answered.items() if u in ours})
        self.forwarded += acked
        missing = len(ours - set(answered))
        error = f"{missing} instance(s) not answered for" if missing else None
        return BatchResult(len(present), acked, response.status_code, error=error)

    def post_study_keys(self) -> BatchResult | None:
        """Post the keys of acknowledged studies the centre has not received; None: none due.

        The centre records them where its study has none and matches the label rows
        waiting for those studies. Any error posts nothing (the keys stay pending); posting
        again is harmless (the centre answers them as unchanged).
        """
        import httpx

        pending = self.outbox.pending_study_keys(limit=STUDY_KEYS_PER_POST)
        if not pending:
            return None
        body = {
            "studies": [
                {"study_uid": uid, "accession_key": accession, "patient_key": patient}
                for uid, accession, patient in pending
            ]
        }
        try:
            response = self.client.post(STUDY_KEYS_PATH, json=body)
        except (httpx.HTTPError, OSError) as exc:
            return BatchResult(len(pending), 0, None, error=exc.__class__.__name__)
        if response.status_code != 200:
            return BatchResult(
                len(pending),
                0,
                response.status_code,
                error=f"HTTP {response.status_code}",
                retry_after=_retry_after(response),
            )
        try:
            answer = response.json()
        except ValueError:
            return BatchResult(len(pending), 0, 200, error="unreadable answer")
        posted = self.outbox.study_keys_posted(uid for uid, _, _ in pending)
        state = {"posted_at": dt.datetime.now(dt.UTC).isoformat(), "studies": posted}
        if isinstance(answer, dict):  # counts only (updated, conflicts, labels_matched, ...)
            state["answer"] = {k: v for k, v in answer.items() if isinstance(v, (int, str))}
        self.outbox.put_state("study_keys", state)
        return BatchResult(len(pending), posted, 200)

    def _keys_step(self) -> None:
        """Post pending study keys when due; a failure waits its own backoff."""
        if time.monotonic() < self._keys_due:
            return
        try:
            result = self.post_study_keys()
        except Exception as exc:  # the outbox busy: next loop
            logger.warning("study keys post failed (%s); retrying", exc.__class__.__name__)
            result = BatchResult(0, 0, None, error=exc.__class__.__name__)
        if result is None or result.ok:
            self.keys_backoff.reset()
            self._keys_due = 0.0
            return
        delay = self.keys_backoff.next_delay(result.retry_after)
        self._keys_due = time.monotonic() + delay
        logger.warning(
            "posting the keys of %d studies to the centre failed (%s); next try in %.1f s",
            result.sent,
            result.error,
            delay,
        )

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set; every failure is retried after a backoff."""
        while not stop.is_set():
            try:
                self.fill()
            except Exception as exc:  # the catalog busy or down: try again shortly
                logger.warning("outbox fill failed (%s); retrying", exc.__class__.__name__)
                stop.wait(self.idle_seconds)
                continue
            if not self.windows.open_at(self.clock()):
                stop.wait(min(30.0, self.idle_seconds * 5))
                continue
            self._keys_step()  # the studies of the batches acknowledged so far
            items = self.outbox.next_batch(
                max_instances=self.current_batch, max_bytes=self.batch_bytes
            )
            if not items:
                stop.wait(self.idle_seconds)
                continue
            started = time.monotonic()
            result = self.send_batch(items)
            took = time.monotonic() - started
            self._record(result)
            if result.ok:
                self.backoff.reset()
                if took < BATCH_TARGET_SECONDS / 2:
                    self.current_batch = min(self.batch_instances, self.current_batch * 2)
                elif took > BATCH_TARGET_SECONDS * 2:
                    self.current_batch = max(1, self.current_batch // 2)
                continue
            delay = self.backoff.next_delay(result.retry_after)
            link_failed = result.status is None and result.sent > 0
            logger.warning(
                "forwarding %d instance(s) to the centre failed (%s); next try in %.1f s",
                result.sent,
                result.error,
                delay,
            )
            if link_failed:
                self.current_batch = max(1, self.current_batch // 2)
                self._wait_for_link(stop, delay)
                if not stop.is_set():
                    try:
                        self.acknowledge_held(items)
                    except Exception as exc:  # only spares a re-send: never stop forwarding
                        logger.warning("receipts check failed (%s)", exc.__class__.__name__)
            else:
                stop.wait(delay)  # the centre answered (busy, refusing): its pace, not ours

    def acknowledge_held(self, items: list[OutboxItem]) -> int:
        """After a cut, acknowledge what of ``items`` the centre already holds; return how many.

        A cut loses the centre's answer, not always its work: it may have stored the batch
        before the link dropped. Asking for the day's receipts (one small GET per receipt
        day) spares re-sending those instances, which the centre would only parse, screen and
        answer as duplicates. Any failure here changes nothing: the batch is simply re-sent.
        """
        import httpx

        held = 0
        for day in sorted({item.receipt_day for item in items}):
            try:
                answer = self.client.get(
                    "/v1/edge/receipts", params={"site": self.site, "day": day}, timeout=30.0
                )
                uids = set(answer.json().get("sop_instance_uids") or [])
            except (httpx.HTTPError, OSError, ValueError, AttributeError):
                break
            if answer.status_code != 200:
                break
            at_centre = {
                item.sop_instance_uid: "referenced"
                for item in items
                if item.receipt_day == day and item.sop_instance_uid in uids
            }
            held += self.outbox.acknowledge(at_centre)
        self.forwarded += held
        return held

    def _wait_for_link(self, stop: threading.Event, delay: float) -> None:
        """Wait up to ``delay`` after a link failure, ending early once the centre answers.

        The backoff protects a centre that is down; a link that was cut and is back should
        not leave the outbox idle for the rest of a long backoff. A probe is one small GET of
        ``/healthz`` every ``probe_seconds``; a centre that answers it is reachable again.
        """
        import httpx

        deadline = time.monotonic() + delay
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(self.probe_seconds, remaining)):
                return
            try:
                answer = self.client.get("/healthz", timeout=min(5.0, self.probe_seconds * 2))
            except (httpx.HTTPError, OSError):
                continue
            if answer.status_code == 200:
                return

    def _record(self, result: BatchResult) -> None:
        now = dt.datetime.now(dt.UTC).isoformat()
        state = self.outbox.get_state("forward") or {}
        state.update({"last_attempt_at": now, "last_status": result.status})
        if result.ok:
            state.update({"last_success_at": now, "last_error": None, "failures": 0})
            state["last_batch"] = result.acknowledged
        else:
            state.update({"last_error": result.error, "failures": self.backoff.failures + 1})
        self.outbox.put_state("forward", state)
