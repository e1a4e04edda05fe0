"""Shared fixtures: a fresh catalog database per test, on SQLite and on PostgreSQL.

``database_url`` is parametrized over both databases; every test that uses it
(directly or through ``engine``, ``session_factory`` or ``settings``) runs once
per database. PostgreSQL tests get their own database, created from the server
named by ``MEDAI_TEST_POSTGRES_URL`` and dropped afterwards, so they can run in
parallel (pytest-xdist). Without a reachable server they are skipped locally
and fail when ``CI`` is set.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from medai.catalog import db
from medai.config import Settings, get_settings

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _connect(url: URL) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
        connect_timeout=5,
    )


@functools.cache
def _postgres_admin_url() -> URL | str:
    """A URL of the server's maintenance database that works, or why none does."""
    configured = os.environ.get("MEDAI_TEST_POSTGRES_URL")
    url = make_url(configured or DEFAULT_POSTGRES_URL).set(drivername="postgresql+psycopg")
    # With trust authentication either role may exist; an explicit URL is used as is.
    users = [url.username] if configured else ["postgres", "root"]
    errors = []
    for user in users:
        candidate = url.set(username=user)
        try:
            with _connect(candidate):
                return candidate
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
    shown = url.set(username=None).render_as_string(hide_password=True)
    return f"PostgreSQL at {shown} is unreachable ({'; '.join(errors)})"


def _require_postgres() -> URL:
    admin = _postgres_admin_url()
    if isinstance(admin, str):
        message = f"{admin}; set MEDAI_TEST_POSTGRES_URL or start the server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return admin


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a new, empty catalog database (not yet migrated) for this test only."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'catalog.db'}"
        return
    admin = _require_postgres()
    name = f"medai_test_{secrets.token_hex(6)}"
    with _connect(admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with _connect(admin) as conn:
            # Subprocesses of the test may still hold connections.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on ``database_url``, migrated to the newest revision."""
    engine = db.create_engine_for(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on the migrated test catalog."""
    return db.session_factory(engine)


@pytest.fixture
def settings(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings with ``home`` under tmp_path and the test's database (not migrated).

    ``MEDAI_HOME`` and ``MEDAI_DATABASE_URL`` are set too, so ``get_settings()``
    and subprocesses (the CLI) see the same configuration.
    """
    home = tmp_path / "medai-home"
    for name in list(os.environ):
        # A developer's own MEDAI_* settings must not leak into the test.
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEDAI_HOME", str(home))
    monkeypatch.setenv("MEDAI_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield Settings(home=home, database_url=database_url)
    get_settings.cache_clear()
