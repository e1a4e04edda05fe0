"""Race-safe writes to the catalog: insert-or-ignore, get-or-create, counter increments.

Several receivers write at once (worker processes, C-STORE associations, STOW-RS requests):
these statements let the database's unique constraints settle races instead of a lock.
"""

from __future__ import annotations

from typing import Any, Literal, cast, overload

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

from medai.catalog.models import Base

__all__ = ["add_to_counters", "get_or_create_id", "insert_ignore"]


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
