"""Alembic migrations build exactly the models' schema, on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from medai.catalog.db import alembic_config, create_engine_for, upgrade
from medai.catalog.models import Base

HEAD = "0009"


def _schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_one_linear_history_ending_at_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == [HEAD]
    assert [rev.revision for rev in scripts.walk_revisions()][-1] == "0001"


def test_migrations_build_the_models_schema(engine: Engine) -> None:
    assert _revision(engine) == HEAD
    assert _schema_diff(engine) == []
    tables = set(sa.inspect(engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_schema_diff_would_notice_a_difference(engine: Engine) -> None:
    # The comparison is not vacuous: an extra column in the database shows up.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE sites ADD COLUMN extra INTEGER"))
    diff = _schema_diff(engine)
    assert [(op[0], op[2], op[3].name) for op in diff] == [("remove_column", "sites", "extra")]


def test_upgrade_again_changes_nothing(engine: Engine, database_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sites (id, name, ae_titles, targets, created_at) "
                "VALUES ('site-a', 'A', '[]', '{}', CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    upgrade(database_url)
    assert _revision(engine) == HEAD
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sites")).scalar() == 1


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert _schema_diff(engine) == []


def _upgrade_worker(url: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(timeout=60)
        upgrade(url)
        results.put(None)
    except BaseException:
        results.put(traceback.format_exc())


def test_concurrent_upgrades_from_several_processes(database_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_upgrade_worker, args=(database_url, barrier, results)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    errors = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert errors == [None, None, None], next(e for e in errors if e)
    engine = create_engine_for(database_url)
    try:
        assert _revision(engine) == HEAD
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()
