"""Security events: folded so a flood never floods the chain, throttled per source, summed up
by `medai security status` (counts, sources, key mismatches, gate overrides, rejected
associations, quarantine spikes, a missing backup)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from medai.audit import append_audit, audited_transaction, verify_audit_chain
from medai.audit.security_events import AUTH_FAILED, KEY_MISMATCH, SecurityEventRecorder
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, QuarantineEntry
from medai.cli import app
from medai.collection.key_guard import campaign_key
from medai.collection.receivers.cstore_rejections import RejectionRecorder
from medai.config import Settings
from medai.errors import KeyMismatch
from medai.keyfile import create_key_file
from medai.ops.security import (
    AuthFailureLimiter,
    SecurityMonitor,
    SpikeRule,
    security_status,
    security_summary,
)
from tests.utils.campaign import init_example_campaign

NOW = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.UTC)


class Clock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _records(engine: Engine, action: str | None = None) -> list[AuditRecord]:
    with session_factory(engine)() as session:
        query = select(AuditRecord).order_by(AuditRecord.seq)
        if action is not None:
            query = query.where(AuditRecord.action == action)
        return list(session.scalars(query))


def _count(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def test_a_flood_of_one_event_is_one_record_a_minute(engine: Engine) -> None:
    clock = Clock()
    recorder = SecurityEventRecorder(clock=clock)
    written = [
        recorder.record(engine, AUTH_FAILED, source="10.0.0.9", reason="unknown")
        for _ in range(500)
    ]
    assert written.count(True) == 1 and _count(engine) == 1
    # Another source or another reason is another key: recorded at once.
    assert recorder.record(engine, AUTH_FAILED, source="10.0.0.8", reason="unknown")
    assert recorder.record(engine, AUTH_FAILED, source="10.0.0.9", reason="malformed")
    clock.now += 61  # a minute later the next record carries the folded ones
    assert recorder.record(engine, AUTH_FAILED, source="10.0.0.9", reason="unknown")
    last = _records(engine, AUTH_FAILED)[-1]
    assert last.actor == "system:security"
    assert last.details == {"source": "10.0.0.9", "reason": "unknown", "repeated": 499}
    assert recorder.counts() == {AUTH_FAILED: 503}
    assert recorder.written == 4 and recorder.folded == 499
    with session_factory(engine)() as session:
        assert verify_audit_chain(session).ok


def test_the_throttle_starts_past_the_limit_and_ends_after_a_minute() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(3, clock=clock)
    assert [limiter.failed("a") for _ in range(3)] == [False, False, False]
    assert limiter.retry_after("a") is None
    assert limiter.failed("a") is True  # the fourth in the minute
    assert limiter.failed("a") is False  # throttled once, not again
    wait = limiter.retry_after("a")
    assert wait is not None and 59 <= wait <= 60
    assert limiter.retry_after("b") is None and limiter.throttled_sources() == 1
    clock.now += 60
    assert limiter.retry_after("a") is None and limiter.throttled_sources() == 0
    # Failures spread over minutes never throttle.
    for _ in range(10):
        assert limiter.failed("c") is False
        clock.now += 30
        limiter.failed("c")
        clock.now += 31
    assert AuthFailureLimiter(0).failed("x") is False  # 0: no limit


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


@pytest.fixture
def catalog(campaign: Settings) -> Any:
    engine = create_engine_for(campaign.resolved_database_url)
    yield engine
    engine.dispose()


def _quarantine(engine: Engine, site: str, reason: str, day: dt.date, n: int) -> None:
    with session_factory(engine).begin() as session:
        for _ in range(n):
            sha = secrets.token_hex(32)
            session.add(
                QuarantineEntry(
                    raw_sha256=sha,
                    site_id=site,
                    source="import",
                    reason_code=reason,
                    reason="synthetic",
                    relative_path=f"{sha[:2]}/{sha}.raw",
                    byte_size=10,
                    received_at=dt.datetime.combine(day, dt.time(9), dt.UTC),
                )
            )


def test_a_summary_counts_every_kind_by_source(campaign: Settings, catalog: Engine) -> None:
    monitor = SecurityMonitor(20)
    for _ in range(500):  # a burst of wrong keys: 21 checked, then throttled
        if monitor.retry_after("203.0.113.7") is None:
            monitor.auth_failed(catalog, "203.0.113.7", "unknown", prefix="medai_AAAAAA")
    monitor.auth_failed(catalog, "198.51.100.2", "revoked", prefix="medai_xyz", key_name="old")
    rejections = RejectionRecorder(catalog, "MEDAI", {"SITEA": "site-a"})
    for _ in range(3):
        rejections.record("INTRUDER", "MEDAI", "192.0.2.5", 4000)
    with audited_transaction(catalog) as session:
        for overridden in (True, False):
            append_audit(
                session,
                actor="user:alice" if overridden else "user:bob",
                action="model.promote",
                subject="models:/m/1",
                details={"gate": {"overridden": overridden, "reason": "pilot"}},
            )
    # Not flooded: a burst of 500 wrong keys is a handful of records.
    assert len(_records(catalog, "security.auth-failed")) == 1
    assert len(_records(catalog, "security.rate-limited")) == 1
    assert monitor.auth_failures == 22 and monitor.throttled_requests == 479

    with session_factory(catalog)() as session:
        summary = security_summary(session, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert summary.events == {
        "auth-failed": 21,  # the rate-limited record carries the 20 folded into it
        "revoked-key-used": 1,
        "rate-limited": 1,
        "key-mismatch": 0,
        "association-rejected": 1,  # one record a minute per peer and reason
        "gate-override": 1,  # the promotion that passed its gate is not one
    }
    top = summary.top_sources[0]
    assert (top.source, top.events) == ("203.0.113.7", 22)
    assert top.kinds == ["auth-failed", "rate-limited"]
    sources = {s.source for s in summary.top_sources}
    assert {"198.51.100.2", "192.0.2.5", "user:alice"} <= sources
    assert summary.last_seen["gate-override"] is not None
    assert summary.last_seen["key-mismatch"] is None
    assert summary.backup.status == "missing"
    assert summary.alerts == ["rate-limited", "revoked-key-used", "backup-missing"]
    document = summary.to_dict()
    assert document["total"] == 25 and document["backup"]["last"] is None
    json.dumps(document)  # JSON-ready
    revoked = _records(catalog, "security.revoked-key-used")[0]
    assert revoked.subject == "old" and revoked.details["key_prefix"] == "medai_xyz"


def test_quarantine_spikes_by_site_and_reason(campaign: Settings, catalog: Engine) -> None:
    today = NOW.date()
    for back in range(1, 15):  # site-a: 2 not-dicom a day for two weeks
        _quarantine(catalog, "site-a", "not-dicom", today - dt.timedelta(days=back), 2)
    _quarantine(catalog, "site-a", "not-dicom", today, 5)  # 2.5x the mean: not a spike
    _quarantine(catalog, "site-b", "burned-in-annotation", today - dt.timedelta(days=1), 12)
    _quarantine(catalog, "site-c", "truncated", today, 9)  # under the minimum
    with session_factory(catalog)() as session:
        summary = security_summary(session, NOW - dt.timedelta(days=7), now=NOW)
        spikes = [
            (s.site, s.reason, s.day, s.count, s.baseline_mean) for s in summary.quarantine_spikes
        ]
        assert spikes == [("site-b", "burned-in-annotation", today - dt.timedelta(days=1), 12, 0.0)]
        assert "quarantine-spike" in summary.alerts
        # A stricter rule: site-a's day of 5 is a spike at twice its mean with a minimum of 5.
        strict = security_summary(
            session, NOW - dt.timedelta(days=1), now=NOW, spike=SpikeRule(factor=2, minimum=5)
        )
    # The window's days are those it touches: yesterday's spike of site-b is in it too.
    assert [(s.site, s.count) for s in strict.quarantine_spikes] == [
        ("site-a", 5),
        ("site-b", 12),
        ("site-c", 9),
    ]


def test_a_refused_campaign_key_is_recorded_once_a_minute(
    campaign: Settings, catalog: Engine
) -> None:
    other = campaign.resolved_home / "other.key"
    create_key_file(other)
    wrong = campaign.model_copy(update={"key_file": other})
    for _ in range(5):
        with pytest.raises(KeyMismatch):
            campaign_key(wrong, catalog)
    records = _records(catalog, KEY_MISMATCH)
    assert len(records) == 1
    details = records[0].details
    assert details["reason"] == "other-key" and details["source"] == f"key-file:{other}"
    assert details["refused_fingerprint"] != details["recorded_fingerprint"]
    campaign_key(campaign, catalog)  # the right key is not an event
    assert len(_records(catalog, KEY_MISMATCH)) == 1


def test_security_status_on_the_command_line(campaign: Settings, catalog: Engine) -> None:
    monitor = SecurityMonitor(5)
    for _ in range(50):
        if monitor.retry_after("203.0.113.7") is None:
            monitor.auth_failed(catalog, "203.0.113.7", "malformed")
    runner = CliRunner()
    result = runner.invoke(app, ["security", "status", "--json"])
    assert result.exit_code == 0, result.output
    windows = json.loads(result.output)
    assert set(windows) == {"24h", "7d"}
    for window in windows.values():
        assert window["events"]["auth-failed"] == 6 and window["events"]["rate-limited"] == 1
        assert window["top_sources"][0]["source"] == "203.0.113.7"
        assert window["backup"]["status"] == "missing"
    text = runner.invoke(app, ["security", "status"], env={"COLUMNS": "200"})
    assert text.exit_code == 0 and "203.0.113.7" in text.output
    assert "auth-failed" in text.output and "backup: none recorded" in text.output
    strict = runner.invoke(app, ["security", "status", "--strict"])
    assert strict.exit_code == 1 and "alerts (24 h): rate-limited" in strict.output
    with session_factory(catalog)() as session:
        assert set(security_status(session, campaign)) == {"24h", "7d"}
