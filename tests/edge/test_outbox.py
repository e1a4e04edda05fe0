"""The edge's outbox: filled from the catalog, batched by receipt day, acknowledged, durable."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select, update

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance
from medai.collection.edge_receipts import receipt_hash
from medai.config import Settings
from medai.edge.outbox import Outbox, outbox_path
from tests.edge.helpers import ct_instances, ingest
from tests.utils.campaign import init_example_campaign


@pytest.fixture
def edge_home(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


def _uids(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return sorted(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()


def test_fill_enqueues_each_catalogued_instance_once(edge_home: Settings) -> None:
    assert ingest(edge_home, ct_instances(5, tag="a")) == ["stored"] * 5
    engine = create_engine_for(edge_home.resolved_database_url)
    path = outbox_path(edge_home.resolved_home)
    try:
        with Outbox(path) as outbox:
            assert outbox.fill(engine) == 5
            assert outbox.fill(engine) == 0  # filled again: nothing new
            stats = outbox.stats()
            assert (stats.depth, stats.enqueued, stats.acknowledged) == (5, 5, 0)
            assert stats.oldest_unsent_seconds is not None
        assert ingest(edge_home, ct_instances(3, tag="b")) == ["stored"] * 3
        # A new process (a restart) fills what arrived in between, nothing twice.
        with Outbox(path) as outbox:
            assert outbox.fill(engine) == 3
            assert outbox.stats().depth == 8
            assert [u for day in outbox.receipts() for u in outbox.day_uids(day)] == _uids(
                edge_home
            )
    finally:
        engine.dispose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_batches_hold_one_receipt_day_within_the_limits(edge_home: Settings) -> None:
    ingest(edge_home, ct_instances(6, tag="c"))
    engine = create_engine_for(edge_home.resolved_database_url)
    try:
        with session_factory(engine)() as session, session.begin():
            ids = sorted(session.scalars(select(Instance.id)))
            # The first two arrived the day before.
            session.execute(
                update(Instance)
                .where(Instance.id.in_(ids[:2]))
                .values(received_at=dt.datetime(2026, 10, 1, 23, 59, tzinfo=dt.UTC))
            )
        with Outbox(outbox_path(edge_home.resolved_home)) as outbox:
            outbox.fill(engine)
            first = outbox.next_batch(max_instances=10, max_bytes=10**9)
            assert [i.receipt_day for i in first] == ["2026-10-01"] * 2
            outbox.acknowledge({i.sop_instance_uid: "referenced" for i in first})
            size = first[0].byte_size
            # Bytes bound the batch: room for two instances.
            second = outbox.next_batch(max_instances=10, max_bytes=2 * size + size // 2)
            assert len(second) == 2 and len({i.receipt_day for i in second}) == 1
            assert outbox.next_batch(max_instances=3, max_bytes=10**9) == [
                *second,
                outbox.next_batch(max_instances=3, max_bytes=10**9)[2],
            ]
            # One instance larger than the byte limit still travels, alone.
            assert len(outbox.next_batch(max_instances=10, max_bytes=1)) == 1
    finally:
        engine.dispose()


def test_acknowledgements_survive_a_restart_and_keep_the_first_answer(
    edge_home: Settings, tmp_path: Path
) -> None:
    ingest(edge_home, ct_instances(4, tag="d"))
    engine = create_engine_for(edge_home.resolved_database_url)
    path = outbox_path(edge_home.resolved_home)
    try:
        with Outbox(path) as outbox:
            outbox.fill(engine)
            batch = outbox.next_batch(max_instances=4, max_bytes=10**9)
            outbox.record_attempt(batch)
            outcomes = {batch[0].sop_instance_uid: "referenced"}
            outcomes[batch[1].sop_instance_uid] = "failed:272"
            outcomes["2.25.1"] = "referenced"  # not ours: ignored
            assert outbox.acknowledge(outcomes) == 2
            assert outbox.acknowledge({batch[0].sop_instance_uid: "failed:1"}) == 0
        with Outbox(path) as outbox:  # as after kill -9: the outbox is on disk
            assert outbox.fill(engine) == 0
            stats = outbox.stats()
            assert (stats.depth, stats.acknowledged, stats.quarantined_at_centre) == (2, 2, 1)
            rest = outbox.next_batch(max_instances=10, max_bytes=10**9)
            assert [i.sop_instance_uid for i in rest] == [i.sop_instance_uid for i in batch[2:]]
            assert rest[0].attempts == 1
            assert outbox.outcomes([batch[0].sop_instance_uid, batch[2].sop_instance_uid]) == {
                batch[0].sop_instance_uid: "referenced",
                batch[2].sop_instance_uid: None,
            }
            today = dt.datetime.now(dt.UTC).date()
            assert outbox.forwarded_on(today) == 2
            assert outbox.received_on(today) == 4
    finally:
        engine.dispose()


def test_receipts_hash_the_sorted_uids_of_each_day(edge_home: Settings) -> None:
    ingest(edge_home, ct_instances(3, tag="e"))
    engine = create_engine_for(edge_home.resolved_database_url)
    try:
        with Outbox(outbox_path(edge_home.resolved_home)) as outbox:
            outbox.fill(engine)
            today = dt.datetime.now(dt.UTC).date().isoformat()
            uids = _uids(edge_home)
            assert outbox.receipts() == {today: {"count": 3, "hash": receipt_hash(uids)}}
            ingest(edge_home, ct_instances(1, tag="f"))
            outbox.fill(engine)
            # The cached hash is recomputed once the day changed.
            assert outbox.receipts()[today] == {"count": 4, "hash": receipt_hash(_uids(edge_home))}
    finally:
        engine.dispose()


def test_state_is_kept(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        assert outbox.get_state("heartbeat") is None
        outbox.put_state("heartbeat", {"answer": {"server_time": "x"}})
        outbox.put_state("heartbeat", {"answer": {"server_time": "y"}})
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        assert outbox.get_state("heartbeat") == {"answer": {"server_time": "y"}}
