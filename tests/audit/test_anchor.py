"""Anchoring the audit chain: a kept head reveals truncation and rewrites that the chain hides."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from medai.audit import (
    GENESIS_HASH,
    append_audit_many,
    audit_head,
    compute_record_hash,
    parse_anchor,
    verify_against_anchor,
    verify_audit_chain,
)
from medai.audit.chain import AuditEntry
from medai.catalog.models import AuditRecord
from medai.cli import app
from medai.config import Settings
from medai.errors import BadAuditAnchor

Factory = sessionmaker[Session]
runner = CliRunner()


def _append(factory: Factory, count: int) -> None:
    entries = [
        AuditEntry("system:test", "ingest.stored", f"2.25.{n}", {"n": n}) for n in range(count)
    ]
    with factory.begin() as session:
        append_audit_many(session, entries)


def _head(factory: Factory) -> str:
    with factory() as session:
        return str(audit_head(session))


def _delete_newest(factory: Factory, count: int) -> None:
    with factory.begin() as session:
        top = session.scalar(sa.select(sa.func.max(AuditRecord.seq)))
        session.execute(sa.delete(AuditRecord).where(AuditRecord.seq > (top or 0) - count))


def test_head_of_an_empty_chain_is_genesis(session_factory: Factory) -> None:
    assert _head(session_factory) == f"0:{GENESIS_HASH}"
    with session_factory() as session:
        assert verify_against_anchor(session, parse_anchor(f"0:{GENESIS_HASH}")).ok


def test_deleting_the_newest_50_records_is_seen_only_with_the_anchor(
    session_factory: Factory,
) -> None:
    _append(session_factory, 120)
    anchor = parse_anchor(_head(session_factory))
    assert anchor.seq == 120
    with session_factory() as session:
        assert verify_against_anchor(session, anchor).ok
    _delete_newest(session_factory, 50)
    with session_factory() as session:
        plain = verify_audit_chain(session)
        anchored = verify_against_anchor(session, anchor)
    assert plain.ok and plain.records == 70  # the chain alone cannot see the cut
    assert not anchored.ok and anchored.first_bad_seq == 71
    assert anchored.problem is not None and "truncated" in anchored.problem
    assert "71 to 120" in anchored.problem


def test_a_chain_recomputed_from_an_earlier_record_is_seen_with_the_anchor(
    session_factory: Factory,
) -> None:
    _append(session_factory, 60)
    anchor = parse_anchor(_head(session_factory))
    _append(session_factory, 5)  # the chain grows after the anchor: still fine
    with session_factory() as session:
        assert verify_against_anchor(session, anchor).ok
    # Someone with write access edits record 30 and recomputes every hash after it.
    with session_factory.begin() as session:
        rows = session.scalars(
            sa.select(AuditRecord).where(AuditRecord.seq >= 30).order_by(AuditRecord.seq)
        ).all()
        prev = rows[0].prev_hash
        for record in rows:
            if record.seq == 30:
                record.details = {"n": 999}
            record.prev_hash = prev
            record.record_hash = compute_record_hash(
                prev,
                seq=record.seq,
                at=record.at,
                actor=record.actor,
                action=record.action,
                subject=record.subject,
                details=record.details,
            )
            prev = record.record_hash
    with session_factory() as session:
        assert verify_audit_chain(session).ok  # a consistent forgery
        report = verify_against_anchor(session, anchor)
    assert not report.ok and report.first_bad_seq == 60
    assert report.problem is not None and "rewritten" in report.problem


@pytest.mark.parametrize("text", ["", "12", "12:abc", "x:" + "0" * 64, "-1:" + "0" * 64])
def test_malformed_anchor_is_refused(text: str) -> None:
    with pytest.raises(BadAuditAnchor, match="SEQ:HASH"):
        parse_anchor(text)


def test_cli_anchor_and_verify_with_anchor(settings: Settings, session_factory: Factory) -> None:
    _append(session_factory, 80)
    head = _head(session_factory)
    printed = runner.invoke(app, ["audit", "anchor"])
    assert printed.exit_code == 0, printed.output
    anchor = printed.stdout.strip()
    assert anchor == head and anchor.startswith("80:")
    # The anchoring is recorded after the printed head, naming it (`medai doctor` reads it).
    with session_factory() as session:
        newest = session.scalars(sa.select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    assert newest is not None and newest.seq == 81
    assert newest.action == "audit.anchored" and newest.details == {"anchor": anchor}
    as_json = json.loads(runner.invoke(app, ["audit", "anchor", "--json"]).stdout)
    assert as_json["seq"] == 81 and as_json["anchor"] == f"81:{newest.record_hash}"

    _delete_newest(session_factory, 50)  # 82 records: 80, and two anchorings
    plain = runner.invoke(app, ["audit", "verify"])
    assert plain.exit_code == 0 and "chain intact" in plain.stdout
    anchored = runner.invoke(app, ["audit", "verify", "--anchor", anchor])
    assert anchored.exit_code == 1
    assert "truncated" in anchored.stderr and "33 to 80" in anchored.stderr
    report = json.loads(
        runner.invoke(app, ["audit", "verify", "--anchor", anchor, "--json"]).stdout
    )
    assert report["ok"] is False and report["first_bad_seq"] == 33

    bad = runner.invoke(app, ["audit", "verify", "--anchor", "latest"])
    assert bad.exit_code == 2 and "SEQ:HASH" in bad.stderr
