"""Engines, sessions, migrations and race-safe inserts for the catalog (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, cast, overload

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

from medai.catalog.models import Base, Campaign

__all__ = [
    "MIGRATIONS_DIR",
    "CatalogState",
    "alembic_config",
    "catalog_state",
    "create_engine_for",
    "get_or_create_id",
    "insert_ignore",
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


class _InsertIgnore(Insert):
    """An INSERT that skips rows violating a unique constraint (see insert_ignore)."""

    inherit_cache = True


@compiles(_InsertIgnore)
def _compile_insert_ignore(element: _InsertIgnore, compiler: SQLCompiler, **kw: Any) -> str:
    if compiler.dialect.name not in {"sqlite", "postgresql"}:
        raise CompileError(f"insert_ignore is not supported on {compiler.dialect.name}")
    text: str = compiler.visit_insert(element, **kw)  # type: ignore[no-untyped-call]
    if compiler.effective_returning:
        # ON CONFLICT must precede RETURNING; the caller selects the row instead.
        raise CompileError("insert_ignore does not support RETURNING")
    return f"{text} ON CONFLICT DO NOTHING"


def insert_ignore(model: type[Base], /, **values: Any) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``model``, on SQLite and PostgreSQL.

    The statement is dialect-neutral: it compiles on whichever of the two
    databases executes it. A row that would violate any unique constraint is
    silently skipped (the result's ``rowcount`` is then 0).

    Parameters
    ----------
    model
        A mapped class from :mod:`medai.catalog.models`.
    **values
        Column values of the one row to insert.

    Returns
    -------
    sqlalchemy.sql.dml.Insert
        Execute it with ``session.execute`` or ``connection.execute``;
        ``RETURNING`` is not supported (select the row afterwards).
    """
    # inline(): no implicit RETURNING of the primary key, which would otherwise
    # be rendered before our ON CONFLICT clause on PostgreSQL.
    stmt = _InsertIgnore(cast(sa.Table, model.__table__)).values(**values).inline()
    # rowcount (0 = skipped) is otherwise lost when psycopg closes the cursor.
    return stmt.execution_options(preserve_rowcount=True)


@overload
def get_or_create_id(
    session: Session,
    model: type[Base],
    unique_col: str,
    values: dict[str, Any],
    *,
    return_created: Literal[False] = False,
) -> int: ...


@overload
def get_or_create_id(
    session: Session,
    model: type[Base],
    unique_col: str,
    values: dict[str, Any],
    *,
    return_created: Literal[True],
) -> tuple[int, bool]: ...


def get_or_create_id(
    session: Session,
    model: type[Base],
    unique_col: str,
    values: dict[str, Any],
    *,
    return_created: bool = False,
) -> int | tuple[int, bool]:
    """Return the ``id`` of the row whose ``unique_col`` equals ``values[unique_col]``.

    Inserts the row first when it does not exist. Safe when several processes
    race for the same row: the insert skips on conflict, and the follow-up
    select sees the winner's row (PostgreSQL waits for the competing
    transaction; SQLite writers are serialized by ``BEGIN IMMEDIATE``). Use it
    in the default READ COMMITTED isolation on PostgreSQL.

    Parameters
    ----------
    session
        The caller's session; the insert joins its transaction.
    model
        A mapped class with an integer ``id`` primary key.
    unique_col
        Name of a column with a unique constraint.
    values
        Column values for a new row; must include ``unique_col``.
    return_created
        Also say whether this call inserted the row (False when it existed or
        a concurrent transaction inserted it first).

    Returns
    -------
    int or tuple of (int, bool)
        The existing or new row's id; with ``return_created``, ``(id, created)``.
    """
    id_col = model.__table__.c["id"]
    key_col = model.__table__.c[unique_col]
    query = sa.select(id_col).where(key_col == values[unique_col])
    found = session.execute(query).scalar_one_or_none()
    created = False
    if found is None:
        result = cast(CursorResult[Any], session.execute(insert_ignore(model, **values)))
        created = result.rowcount == 1
        found = session.execute(query).scalar_one()
    return (int(found), created) if return_created else int(found)


def add_to_counters(
    session: Session,
    model: type[Base],
    key_columns: tuple[str, ...],
    rows: list[dict[str, Any]],
) -> None:
    """Add each row's counts to the row with the same key, creating it when missing.

    ``INSERT ... ON CONFLICT (key) DO UPDATE SET n = n + excluded.n`` on SQLite and
    PostgreSQL: atomic per row, so concurrent writers never lose an increment.

    Parameters
    ----------
    session
        The caller's session; the upsert joins its transaction.
    model
        A mapped class with a unique constraint over exactly ``key_columns``.
    key_columns
        The columns identifying a counter row.
    rows
        Dicts holding the key columns and the amounts to add (all other columns).
    """
    if not rows:
        return
    table = cast(sa.Table, model.__table__)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    else:  # pragma: no cover - the catalog supports these two
        raise CompileError(f"counters are not implemented for {dialect}")
    amounts = [name for name in rows[0] if name not in key_columns]
    # Sorted keys: concurrent PostgreSQL writers then lock counter rows in the same order.
    for row in sorted(rows, key=lambda r: tuple(str(r[c]) for c in key_columns)):
        stmt = dialect_insert(table).values(**row)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=list(key_columns),
                set_={name: table.c[name] + stmt.excluded[name] for name in amounts},
            )
        )
