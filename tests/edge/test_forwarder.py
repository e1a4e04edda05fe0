"""The forwarder's parts: STOW-RS batches, acknowledgement, backoff, bandwidth, time windows."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest

from medai.catalog.db import create_engine_for
from medai.config import Settings
from medai.dicom.multipart import check_content_type, split_multipart
from medai.edge.forwarder import (
    FAILED,
    REFERENCED,
    Backoff,
    Forwarder,
    TokenBucket,
    parse_windows,
    stow_outcomes,
)
from medai.edge.outbox import Outbox, outbox_path
from medai.errors import EdgeError
from medai.store import ObjectStore
from tests.edge.helpers import ct_instances, ingest
from tests.utils.campaign import init_example_campaign


def _item(uid: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def stow_answer(referenced: list[str], failed: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if referenced:
        body[REFERENCED] = {"vr": "SQ", "Value": [_item(u) for u in referenced]}
    if failed:
        body[FAILED] = {"vr": "SQ", "Value": [_item(u, 272) for u in failed]}
    return body


def _centre_storing_all(
    outbox: Outbox, received: list[str], stop: threading.Event
) -> Callable[[httpx.Request], httpx.Response]:
    """A centre that stores every instance sent (into ``received``) and sets ``stop`` once
    the batch it answers empties the outbox."""

    def centre(request: httpx.Request) -> httpx.Response:
        body = request.read()
        boundary, _ = check_content_type(request.headers["content-type"])
        uids = [
            str(pydicom.dcmread(io.BytesIO(p.data), stop_before_pixels=True).SOPInstanceUID)
            for p in split_multipart(body, boundary)
        ]
        received.extend(uids)
        if outbox.stats().depth <= len(uids):
            stop.set()
        return httpx.Response(200, json=stow_answer(uids))

    return centre


def test_stow_outcomes_name_only_listed_instances() -> None:
    body = stow_answer(["2.25.1", "2.25.2"], ["2.25.3"])
    assert stow_outcomes(body) == {
        "2.25.1": "referenced",
        "2.25.2": "referenced",
        "2.25.3": "failed:272",
    }
    assert stow_outcomes({}) == {}
    assert stow_outcomes(["not", "an", "object"]) == {}
    assert stow_outcomes({REFERENCED: {"Value": [{"00081155": {}}]}}) == {}


def test_time_windows_cross_midnight_and_refuse_nonsense() -> None:
    nights = parse_windows("22:00-06:00, 12:00-13:00")

    def at(hour: int) -> dt.datetime:
        return dt.datetime(2026, 10, 1, hour, 0)

    assert [nights.open_at(at(h)) for h in (23, 3, 6, 12, 13, 18)] == [
        True, True, False, True, False, False,
    ]  # fmt: skip
    assert parse_windows("").open_at(at(15))
    assert str(nights) == "22:00-06:00,12:00-13:00"
    for bad in ("22-06", "25:00-06:00", "10:00-10:00", "nights"):
        with pytest.raises(EdgeError, match="MEDAI_EDGE_WINDOWS"):
            parse_windows(bad)


def test_token_bucket_holds_the_rate() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(100_000, clock=lambda: now[0], sleep=sleep)
    for _ in range(20):  # 1 MB through a 100 kB/s cap, after a full bucket of 100 kB
        bucket.take(50_000)
    assert now[0] == pytest.approx(9.0, rel=0.01)
    unlimited = TokenBucket(0, clock=lambda: now[0], sleep=sleep)
    unlimited.take(10**9)
    assert now[0] == pytest.approx(9.0, rel=0.01)


def test_backoff_grows_to_its_cap_with_jitter_and_honours_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(4))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0 < d <= 30.0 for d in delays)
    assert max(delays[:2]) <= 2.0 and max(delays[6:]) > 8.0
    assert len(set(delays)) == len(delays)  # jittered
    assert backoff.next_delay(retry_after=25.0) >= 25.0
    assert backoff.next_delay(retry_after=3600.0) <= 30.0  # never past the cap
    backoff.reset()
    assert backoff.next_delay() <= 1.0


@pytest.fixture
def filled(settings: Settings) -> tuple[Settings, Outbox, ObjectStore]:
    init_example_campaign(settings)
    ingest(settings, ct_instances(5, tag="fw"))
    engine = create_engine_for(settings.resolved_database_url)
    outbox = Outbox(outbox_path(settings.resolved_home))
    outbox.fill(engine)
    engine.dispose()
    return settings, outbox, ObjectStore(settings.resolved_store_dir)


def _forwarder(
    outbox: Outbox, store: ObjectStore, handler: Callable[[httpx.Request], httpx.Response]
) -> Forwarder:
    client = httpx.Client(base_url="http://centre.test", transport=httpx.MockTransport(handler))
    return Forwarder(outbox, store, client, "site-a", batch_instances=3, backoff_max=5.0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_batch_is_a_stow_request_and_only_what_the_centre_lists_is_acknowledged(
    filled: tuple[Settings, Outbox, ObjectStore],
) -> None:
    _, outbox, store = filled
    seen: list[httpx.Request] = []

    def centre(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = request.read()
        boundary, _ = check_content_type(request.headers["content-type"])
        assert len(split_multipart(body, boundary)) == 3
        assert int(request.headers["content-length"]) == len(body)
        # The centre answers for the first two only (e.g. its worker stopped mid-batch).
        batch = outbox.next_batch(max_instances=3, max_bytes=10**9)
        listed = [batch[0].sop_instance_uid]
        return httpx.Response(200, json=stow_answer(listed, [batch[1].sop_instance_uid]))

    forwarder = _forwarder(outbox, store, centre)
    batch = outbox.next_batch(max_instances=3, max_bytes=10**9)
    result = forwarder.send_batch(batch)
    assert (result.sent, result.acknowledged, result.status) == (3, 2, 200)
    assert not result.ok  # one instance not answered for: retried
    request = seen[0]
    assert request.url.path == "/dicomweb/studies"
    assert request.url.params["site"] == "site-a"
    assert request.headers["medai-receipt-day"] == batch[0].receipt_day
    assert outbox.stats().depth == 3
    again = outbox.next_batch(max_instances=1, max_bytes=10**9)[0]
    assert (again.sop_instance_uid, again.attempts) == (batch[2].sop_instance_uid, 1)
    # What the centre holds arrives as the files in the edge's store, byte for byte.
    parts = split_multipart(request.read(), check_content_type(request.headers["content-type"])[0])
    assert [p.data for p in parts] == [store.read(i.store_key) for i in batch]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("status", [401, 403, 500, 503, 429])
def test_an_error_acknowledges_nothing_and_says_when_to_retry(
    filled: tuple[Settings, Outbox, ObjectStore], status: int
) -> None:
    _, outbox, store = filled

    def centre(request: httpx.Request) -> httpx.Response:
        request.read()
        headers = {"Retry-After": "7"} if status in (429, 503) else {}
        return httpx.Response(status, json={"detail": "no"}, headers=headers)

    forwarder = _forwarder(outbox, store, centre)
    result = forwarder.send_batch(outbox.next_batch(max_instances=3, max_bytes=10**9))
    assert (result.acknowledged, result.status, result.ok) == (0, status, False)
    assert result.retry_after == (7.0 if status in (429, 503) else None)
    assert outbox.stats().depth == 5


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_cut_connection_acknowledges_nothing(
    filled: tuple[Settings, Outbox, ObjectStore],
) -> None:
    _, outbox, store = filled

    def centre(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    result = _forwarder(outbox, store, centre).send_batch(
        outbox.next_batch(max_instances=3, max_bytes=10**9)
    )
    assert (result.acknowledged, result.error) == (0, "RemoteProtocolError")
    assert outbox.stats().depth == 5


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_forwards_everything_then_idles(
    filled: tuple[Settings, Outbox, ObjectStore],
) -> None:
    _, outbox, store = filled
    received: list[str] = []
    stop = threading.Event()

    centre = _centre_storing_all(outbox, received, stop)

    forwarder = _forwarder(outbox, store, centre)
    forwarder.idle_seconds = 0.05
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert outbox.stats().depth == 0
    assert sorted(received) == sorted(
        uid for day in outbox.receipts() for uid in outbox.day_uids(day)
    )
    state = outbox.get_state("forward")
    assert state is not None and state["last_error"] is None
    assert json.dumps(state)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_after_a_cut_the_forwarder_resumes_when_the_link_is_back_not_after_its_backoff(
    filled: tuple[Settings, Outbox, ObjectStore],
) -> None:
    # The link drops the first two uploads, then is back. With a backoff cap of 300 s the
    # forwarder would sit idle for minutes; probing /healthz it resumes within seconds, and
    # the batch after a cut is smaller (halved per cut, doubled back per success).
    _, outbox, store = filled
    uploads: list[int] = []
    down_until = [0.0]  # each cut takes the link down for 0.3 s
    stop = threading.Event()

    def centre(request: httpx.Request) -> httpx.Response:
        if time.monotonic() < down_until[0]:
            raise httpx.ConnectError("link down", request=request)
        if request.url.path == "/healthz":
            return httpx.Response(200, json={})
        if request.url.path == "/v1/edge/receipts":
            return httpx.Response(200, json={"sop_instance_uids": []})  # nothing was stored
        body = request.read()
        boundary, _ = check_content_type(request.headers["content-type"])
        parts = split_multipart(body, boundary)
        uploads.append(len(parts))
        if len(uploads) <= 2:
            down_until[0] = time.monotonic() + 0.3
            raise httpx.RemoteProtocolError("link cut", request=request)
        uids = [
            str(pydicom.dcmread(io.BytesIO(p.data), stop_before_pixels=True).SOPInstanceUID)
            for p in parts
        ]
        if outbox.stats().depth <= len(uids):
            stop.set()
        return httpx.Response(200, json=stow_answer(uids))

    client = httpx.Client(base_url="http://centre.test", transport=httpx.MockTransport(centre))
    forwarder = Forwarder(outbox, store, client, "site-a", batch_instances=4, backoff_max=300.0)
    forwarder.idle_seconds = forwarder.probe_seconds = 0.05
    forwarder.backoff.base = 100.0  # every failure alone would wait 50-100 s
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    started = time.monotonic()
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), uploads
    assert time.monotonic() - started < 10
    assert outbox.stats().depth == 0
    assert uploads[:3] == [4, 2, 1]  # halved after each cut
    assert uploads[3] == 2  # doubled back after a success


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_slow_centre_gets_smaller_requests(
    filled: tuple[Settings, Outbox, ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request that takes more than twice the target halves the next one: a cut then loses
    # a short request, not a long one (the target is scaled down so the test takes a second).
    import medai.edge.forwarder as forwarder_module

    monkeypatch.setattr(forwarder_module, "BATCH_TARGET_SECONDS", 0.05)
    _, outbox, store = filled
    sizes: list[int] = []
    stop = threading.Event()

    def centre(request: httpx.Request) -> httpx.Response:
        body = request.read()
        parts = split_multipart(body, check_content_type(request.headers["content-type"])[0])
        sizes.append(len(parts))
        time.sleep(0.15)
        uids = [
            str(pydicom.dcmread(io.BytesIO(p.data), stop_before_pixels=True).SOPInstanceUID)
            for p in parts
        ]
        if outbox.stats().depth <= len(uids):
            stop.set()
        return httpx.Response(200, json=stow_answer(uids))

    client = httpx.Client(base_url="http://centre.test", transport=httpx.MockTransport(centre))
    forwarder = Forwarder(outbox, store, client, "site-a", batch_instances=4)
    forwarder.idle_seconds = 0.05
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and outbox.stats().depth == 0
    assert sizes == [4, 1]  # the five queued instances
    assert forwarder.current_batch == 1  # halved after each slow request (4 -> 2 -> 1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_after_a_lost_answer_what_the_centre_holds_is_not_sent_again(
    filled: tuple[Settings, Outbox, ObjectStore],
) -> None:
    # The centre stores the first batch, then the link drops before its answer arrives. Asked
    # for the day's receipts once the link is back, it lists them: they are acknowledged
    # without a second upload, and only the rest travels.
    _, outbox, store = filled
    held: set[str] = set()
    uploaded: list[str] = []
    stop = threading.Event()

    def centre(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={})
        if request.url.path == "/v1/edge/receipts":
            assert request.url.params["site"] == "site-a"
            return httpx.Response(200, json={"sop_instance_uids": sorted(held)})
        body = request.read()
        parts = split_multipart(body, check_content_type(request.headers["content-type"])[0])
        uids = [
            str(pydicom.dcmread(io.BytesIO(p.data), stop_before_pixels=True).SOPInstanceUID)
            for p in parts
        ]
        uploaded.extend(uids)
        held.update(uids)
        if len(uploaded) == len(uids):  # the first request: stored, then the answer is lost
            raise httpx.ReadError("link cut after the centre stored the batch", request=request)
        if outbox.stats().depth <= len(uids):
            stop.set()
        return httpx.Response(200, json=stow_answer(uids))

    client = httpx.Client(base_url="http://centre.test", transport=httpx.MockTransport(centre))
    forwarder = Forwarder(outbox, store, client, "site-a", batch_instances=3, backoff_max=1.0)
    forwarder.idle_seconds = forwarder.probe_seconds = 0.05
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert outbox.stats().depth == 0
    assert len(uploaded) == len(set(uploaded)) == 5  # nothing travelled twice


def test_a_forwarder_that_dies_of_a_surprise_is_started_again_and_forwards_everything(
    filled: tuple[Settings, Outbox, ObjectStore], caplog: pytest.LogCaptureFixture
) -> None:
    """An error the forwarder does not expect (a bug, not a link fault) kills its loop; the
    gateway's supervisor starts it again and nothing is lost or sent twice."""
    from medai.edge.gateway import supervised

    _, outbox, store = filled
    received: list[str] = []
    stop = threading.Event()
    expected = sorted(uid for day in outbox.receipts() for uid in outbox.day_uids(day))

    centre = _centre_storing_all(outbox, received, stop)

    forwarder = _forwarder(outbox, store, centre)
    forwarder.idle_seconds = 0.05
    real_record = forwarder._record
    failures = []

    def record_that_fails_once(result: Any) -> None:
        if not failures:
            failures.append(result)
            raise ZeroDivisionError("a bug after the batch was sent")
        real_record(result)

    forwarder._record = record_that_fails_once  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="medai.edge.gateway"):
        thread = threading.Thread(
            target=supervised, args=("forwarder", forwarder.run, stop), kwargs={"first_delay": 0.05}
        )
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures, "the injected failure never happened"
    assert "forwarder stopped on an unexpected ZeroDivisionError" in caplog.text
    assert "a bug after" not in caplog.text  # only the class is logged
    assert outbox.stats().depth == 0
    # The batch had been acknowledged before the bookkeeping failed: after the restart the
    # forwarder goes on with the rest, and every instance arrived exactly once.
    assert sorted(received) == expected
