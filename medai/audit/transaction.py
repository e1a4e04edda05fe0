"""The one way to change state with its audit record: a transaction that locks the chain first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from medai.audit.chain import lock_audit_chain
from medai.catalog.db import session_factory

__all__ = ["audited_transaction"]


@contextmanager
def audited_transaction(bind: Engine | sessionmaker[Session] | Session) -> Iterator[Session]:
    """A transaction whose state change and audit records commit together, or not at all.

    The audit chain's lock is taken before the caller's first write: taking it at the first
    append, after rows another transaction may be waiting on, can deadlock on PostgreSQL.
    Inside, write the rows and append their records with
    :func:`~medai.audit.chain.append_audit` or :func:`~medai.audit.chain.append_audit_many`.

    Parameters
    ----------
    bind
        An engine or a session factory: a new transaction is begun, committed when the
        block ends and rolled back when it raises. A session already in a transaction
        (a helper called by a caller that owns it): the lock is taken in it and the
        caller's own transaction decides when it commits.

    Yields
    ------
    sqlalchemy.orm.Session
        The session to write with.

    Examples
    --------
    >>> with audited_transaction(engine) as session:  # doctest: +SKIP
    ...     session.add(row)
    ...     append_audit(session, actor=actors.operator(), action="apikey.create")
    """
    if isinstance(bind, Session):
        lock_audit_chain(bind)
        yield bind
        return
    sessions = session_factory(bind) if isinstance(bind, Engine) else bind
    with sessions.begin() as session:
        lock_audit_chain(session)
        yield session
