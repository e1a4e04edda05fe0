"""audited_transaction: a change and its record commit together or not at all; the actor names."""

from __future__ import annotations

import getpass
import multiprocessing
import time
import traceback
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from medai.audit import actors, append_audit, audited_transaction, verify_audit_chain
from medai.catalog import db
from medai.catalog.models import ApiKey, AuditRecord


def _key_row(name: str) -> ApiKey:
    return ApiKey(name=name, role="steward", key_hash=name.ljust(64, "0"), prefix="medai_x")


def _rows(engine: Engine) -> tuple[list[str], list[str]]:
    with db.session_factory(engine)() as session:
        keys = list(session.scalars(sa.select(ApiKey.name).order_by(ApiKey.id)))
        actions = list(session.scalars(sa.select(AuditRecord.action).order_by(AuditRecord.seq)))
        assert verify_audit_chain(session).ok
    return keys, actions


def test_the_change_and_its_record_commit_together(engine: Engine) -> None:
    with audited_transaction(engine) as session:
        session.add(_key_row("a"))
        append_audit(session, actor=actors.operator(), action="apikey.create", subject="a")
    assert _rows(engine) == (["a"], ["apikey.create"])


def test_an_error_rolls_back_the_change_and_its_record(engine: Engine) -> None:
    with pytest.raises(RuntimeError), audited_transaction(engine) as session:
        session.add(_key_row("b"))
        append_audit(session, actor=actors.operator(), action="apikey.create", subject="b")
        raise RuntimeError("refused after the record was appended")
    assert _rows(engine) == ([], [])


def test_a_session_factory_is_accepted(engine: Engine) -> None:
    with audited_transaction(db.session_factory(engine)) as session:
        append_audit(session, actor=actors.system("labels"), action="labels.rematch")
    assert _rows(engine) == ([], ["labels.rematch"])


def test_a_callers_session_commits_with_the_callers_transaction(engine: Engine) -> None:
    with db.session_factory(engine)() as outer, outer.begin():
        with audited_transaction(outer) as session:
            assert session is outer
            append_audit(session, actor=actors.operator(), action="export")
        assert outer.in_transaction()  # the helper did not commit the caller's work
        outer.rollback()
    assert _rows(engine) == ([], [])


def _hold_lock(url: str, hold_s: float, ready: Any, results: Any) -> None:
    try:
        engine = db.create_engine_for(url)
        with audited_transaction(engine) as session:
            # On SQLite the write lock comes with the first statement of the transaction.
            append_audit(session, actor=actors.system("import"), action="import.start")
            ready.set()
            time.sleep(hold_s)
        engine.dispose()
        results.put(None)
    except BaseException:
        results.put(traceback.format_exc())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_chain_lock_is_taken_before_the_first_row(database_url: str, engine: Engine) -> None:
    # Another process holds the chain: a transaction that only writes a row (no record yet)
    # must wait at its start, not after its row, or two writers could deadlock.
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold_lock, args=(database_url, 2.0, ready, results))
    holder.start()
    assert ready.wait(timeout=60)
    start = time.monotonic()
    with audited_transaction(engine) as session:
        waited = time.monotonic() - start
        session.add(_key_row("c"))
    holder.join(timeout=30)
    assert results.get(timeout=30) is None
    assert waited > 1.0
    assert _rows(engine) == (["c"], ["import.start"])


def test_actor_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    assert actors.operator() == "user:alice"
    assert actors.system("import") == "system:import"
    assert actors.api_key("site-a-stow") == "apikey:site-a-stow"
    assert actors.site("site-a") == "site:site-a"


def test_an_operator_without_a_login_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_login() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", no_login)
    assert actors.operator() == "user:unknown"


def test_an_unknown_system_part_is_refused() -> None:
    # A typo must not start a second spelling of an actor in the chain.
    with pytest.raises(ValueError, match="unknown system actor 'imoprt'"):
        actors.system("imoprt")
