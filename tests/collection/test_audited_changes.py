"""Changes of state outside ingest leave their audit record: the campaign key, orphan and
quarantine deletions (both databases)."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from sqlalchemy import select

from medai.audit import actors, verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.collection.accounting import ORPHAN_DELETE_ACTION, collect_orphans, verify_collection
from medai.collection.pipeline import IngestPipeline
from medai.collection.retention import purge_expired
from medai.config import Settings
from medai.keyfile import key_fingerprint, load_key
from medai.store import ObjectStore
from tests.utils.campaign import init_example_campaign


def _records(settings: Settings, action: str) -> list[Any]:
    """The ``action`` records of the catalog, oldest first, after checking the chain."""
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert verify_audit_chain(session).ok
            return list(
                session.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.action == action)
                    .order_by(AuditRecord.seq)
                )
            )
    finally:
        engine.dispose()


def test_creating_the_campaign_key_is_audited_once(settings: Settings) -> None:
    init_example_campaign(settings)
    [record] = _records(settings, "campaign.key-create")
    assert record.actor == actors.operator()
    key = load_key(settings.resolved_key_file)
    # Which key, without the key: an auditor holding the file can check it is the same one.
    assert record.details == {"fingerprint": key_fingerprint(key)}
    assert key.hex() not in repr(record.details)

    init_example_campaign(settings)  # the key is reused: nothing new to record
    assert len(_records(settings, "campaign.key-create")) == 1
    assert len(_records(settings, "campaign.init")) == 2


def test_deleting_orphan_store_files_is_audited(settings: Settings) -> None:
    init_example_campaign(settings)
    store = ObjectStore(settings.resolved_store_dir)
    young = store.put(b"written by an ingest still in flight")
    old = store.put(b"left behind by a crash")
    hour_ago = dt.datetime.now().timestamp() - 7200
    os.utime(store.path(old), (hour_ago, hour_ago))

    report = verify_collection(settings)
    assert sorted(report.orphan_files) == sorted([young, old])
    assert collect_orphans(report, settings, actor=actors.system("demo")) == 1
    assert not store.exists(old) and store.exists(young)
    [record] = _records(settings, ORPHAN_DELETE_ACTION)
    assert (record.actor, record.subject) == ("system:demo", old)
    assert record.details == {"bytes": len(b"left behind by a crash")}


def test_an_orphan_gone_before_the_collection_records_nothing(settings: Settings) -> None:
    init_example_campaign(settings)
    store = ObjectStore(settings.resolved_store_dir)
    key = store.put(b"an orphan")
    report = verify_collection(settings)
    assert report.orphan_files == [key]
    store.delete(key)  # gone before the collection runs: nothing to delete, nothing to record
    assert collect_orphans(report, settings, min_age_seconds=0) == 0
    assert _records(settings, ORPHAN_DELETE_ACTION) == []


def test_purging_the_quarantine_is_audited_by_the_operator(settings: Settings) -> None:
    init_example_campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    assert pipeline.ingest(b"not an image at all", "site-b", "folder").kind == "quarantined"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=settings.quarantine_retention_days + 1)
    assert purge_expired(settings, now=later) == 1
    [record] = _records(settings, "quarantine.purge")
    assert record.actor == actors.operator()
    assert record.details == {
        "purged": 1,
        "retention_days": settings.quarantine_retention_days,
    }
