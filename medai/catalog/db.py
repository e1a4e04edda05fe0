"""Engines, sessions and migrations of the catalog (SQLite or PostgreSQL).

The race-safe inserts and counter updates that writers use are in :mod:`medai.catalog.writes`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from medai.catalog.models import Campaign

__all__ = [
    "MIGRATIONS_DIR",
    "CatalogState",
    "alembic_config",
    "catalog_state",
    "create_engine_for",
    "session_factory",
    "upgrade",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any constant works as long as every medai process uses the same one; it only
# has to differ from the audit chain's lock (medai.audit).
_MIGRATION_LOCK_ID = 0x6D656461_0001  # "meda" + 1

# Several import workers write at once; a writer waits this long for the lock
# before giving up, which is far longer than any single catalog transaction.
DEFAULT_BUSY_TIMEOUT_S = 60.0


def create_engine_for(
    url: str | URL,
    *,
    sqlite_synchronous: str = "FULL",
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    echo: bool = False,
) -> Engine:
    """Create the engine for a catalog URL, configured for several writer processes.

    Parameters
    ----------
    url
        SQLAlchemy URL. ``sqlite:///path`` (the parent directory is created) or
        ``postgresql+psycopg://...``; a bare ``postgresql://`` uses psycopg 3.
    sqlite_synchronous
        SQLite ``PRAGMA synchronous``. ``FULL`` (default) makes every commit
        durable on power loss, because a commit acknowledges data to a sending
        site (a C-STORE success) that may not be sent again. ``NORMAL`` is still
        safe against process crashes in WAL mode and only risks the last commits
        on a power cut or OS crash.
    busy_timeout_s
        How long a SQLite writer waits for the write lock.
    echo
        Log every statement (debugging).

    Returns
    -------
    sqlalchemy.Engine
        For SQLite: WAL journal, foreign keys on, busy timeout, and every
        transaction opened with ``BEGIN IMMEDIATE`` so two writers never deadlock
        upgrading a read lock. A connection with the execution option
        ``sqlite_begin="DEFERRED"`` starts read-only work without taking the
        write lock. For PostgreSQL: pre-ping pooled connections.
    """
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(sa_url, sqlite_synchronous.upper(), busy_timeout_s, echo)
    if sa_url.get_backend_name() == "postgresql":
        if sa_url.drivername == "postgresql":
            sa_url = sa_url.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            sa_url,
            echo=echo,
            pool_pre_ping=True,
            connect_args={"application_name": "medai"},
        )
    raise ValueError(
        f"unsupported catalog database {sa_url.get_backend_name()!r}: use sqlite or postgresql"
    )


def _ensure_wal(cursor: Any, timeout_s: float) -> None:
    """Switch the database file to WAL (a persistent setting), waiting out other connections.

    Changing the journal mode needs an exclusive lock, and SQLite may answer
    "database is locked" at once, without its busy handler, while other
    processes open the same new database: retry until the busy timeout.
    """
    import sqlite3

    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_engine(url: URL, synchronous: str, busy_timeout_s: float, echo: bool) -> Engine:
    if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"invalid SQLite synchronous setting {synchronous!r}")
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread off: the pool hands a connection to one thread at a time, e.g.
    # to the C-STORE association threads.
    engine = sa.create_engine(
        url, echo=echo, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}
    )
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would emit a deferred BEGIN lazily;
        # switch it off so the "begin" hook below decides how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            _ensure_wal(cursor, busy_timeout_s)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred transaction that reads and then writes must upgrade its lock,
        # and two of them doing so deadlock (SQLITE_BUSY without waiting). Taking
        # the write lock up front makes writers queue on busy_timeout instead.
        mode = str(conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")).upper()
        if mode not in {"DEFERRED", "IMMEDIATE", "EXCLUSIVE"}:
            raise ValueError(f"invalid sqlite_begin execution option {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` whose objects stay readable after commit.

    Parameters
    ----------
    engine
        From :func:`create_engine_for`.

    Returns
    -------
    sqlalchemy.orm.sessionmaker
        ``expire_on_commit=False``: rows returned by a committed unit of work can
        be used without another round trip.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Build the Alembic configuration for the catalog migrations, without an ini file.

    Parameters
    ----------
    connection
        Run migrations on this connection (inside its transaction).
    url
        Otherwise, the database URL env.py connects to.

    Returns
    -------
    alembic.config.Config
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        # ConfigParser interpolation would eat a '%' in a password.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url_or_engine: str | URL | Engine, revision: str = "head") -> None:
    """Migrate the catalog to ``revision`` (default: the newest); safe to repeat.

    Concurrent callers are serialized: on SQLite by the ``BEGIN IMMEDIATE``
    transaction the migration runs in, on PostgreSQL by an advisory transaction
    lock. Whoever comes second finds the schema current and does nothing.

    Parameters
    ----------
    url_or_engine
        A catalog URL or an engine from :func:`create_engine_for`.
    revision
        Alembic revision to upgrade to.
    """
    if isinstance(url_or_engine, Engine):
        engine, owned = url_or_engine, False
    else:
        engine, owned = create_engine_for(url_or_engine), True
    try:
        # One transaction for the whole upgrade: both databases have
        # transactional DDL, so a failed migration leaves the old schema intact.
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
            command.upgrade(alembic_config(connection), revision)
        logger.debug("catalog at revision %s", revision)
    finally:
        if owned:
            engine.dispose()


# Where a catalog stands, from nothing at all to a campaign that commands can work on.
CatalogState = Literal["missing", "unreachable", "not-migrated", "outdated", "no-campaign", "ready"]


def catalog_state(url: str | URL) -> CatalogState:
    """Where the catalog at ``url`` stands, found without creating or changing anything.

    Parameters
    ----------
    url
        The catalog URL (``Settings.resolved_database_url``).

    Returns
    -------
    str
        ``missing`` (no SQLite file there), ``unreachable`` (the server refuses or the
        file is not a database), ``not-migrated`` (no schema), ``outdated`` (a schema
        older than this medai's migrations), ``no-campaign`` (migrated, no campaign row)
        or ``ready``.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    sa_url = make_url(url)
    database = sa_url.database or ""
    if (
        sa_url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
        and not Path(database).expanduser().is_file()
    ):
        return "missing"  # connecting would create an empty file there
    engine = create_engine_for(sa_url, busy_timeout_s=5.0)
    try:
        # Deferred: a read that never waits behind a writer's lock.
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
            if not current:
                return "not-migrated"
            scripts = ScriptDirectory.from_config(alembic_config())
            known = {script.revision for script in scripts.walk_revisions()}
            # A revision this medai does not know is a newer schema: let the command try.
            if current <= known and current != set(scripts.get_heads()):
                return "outdated"
            has_campaign = connection.scalar(sa.select(sa.exists().select_from(Campaign)))
            return "ready" if has_campaign else "no-campaign"
    except sa.exc.DBAPIError:
        return "unreachable"
    finally:
        engine.dispose()
