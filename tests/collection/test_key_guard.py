"""The guarded campaign key: the catalog's fingerprint refuses a lost, replaced or foreign key."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, update
from typer.testing import CliRunner

from medai.catalog.db import alembic_config, create_engine_for, session_factory, upgrade
from medai.catalog.models import Campaign
from medai.cli import app
from medai.collection.labels.importing import import_label_sheet
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings, get_settings
from medai.errors import KeyMismatch
from medai.keyfile import create_key_file, key_fingerprint, load_key
from tests.utils.campaign import EXAMPLE_CAMPAIGN, init_example_campaign

RESTORE = "medai campaign key import"


def _stored_fingerprint(settings: Settings) -> str | None:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return session.scalars(select(Campaign.key_fingerprint)).one()
    finally:
        engine.dispose()


def test_init_records_the_key_fingerprint(settings: Settings) -> None:
    init_example_campaign(settings)

    assert _stored_fingerprint(settings) == key_fingerprint(load_key(settings.resolved_key_file))


def test_init_on_an_existing_catalog_never_creates_a_new_key(settings: Settings) -> None:
    """The reproduction: `rm campaign.key; medai campaign init` printed "(created)", exit 0."""
    init_example_campaign(settings)
    settings.resolved_key_file.unlink()

    result = CliRunner().invoke(app, ["campaign", "init", str(EXAMPLE_CAMPAIGN)])

    assert result.exit_code != 0, result.output
    assert RESTORE in result.output
    assert not settings.resolved_key_file.exists()


def test_init_with_another_key_is_refused(settings: Settings) -> None:
    init_example_campaign(settings)
    settings.resolved_key_file.unlink()
    create_key_file(settings.resolved_key_file)

    result = CliRunner().invoke(app, ["campaign", "init", str(EXAMPLE_CAMPAIGN)])

    assert result.exit_code != 0, result.output
    assert RESTORE in result.output


def test_every_pseudonymizing_entry_refuses_a_lost_key(settings: Settings, tmp_path: Path) -> None:
    init_example_campaign(settings)
    settings.resolved_key_file.unlink()

    with pytest.raises(KeyMismatch, match=RESTORE):
        IngestPipeline.from_settings(settings)
    sheet = tmp_path / "labels.csv"
    sheet.write_text("accession_number,patient_id,nodule,effusion,cardiomegaly\nA1,P1,0,0,1\n")
    with pytest.raises(KeyMismatch, match=RESTORE):
        import_label_sheet(sheet, "site-a", settings=settings)


def test_a_second_home_on_the_same_catalog_with_another_key_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two homes, one MEDAI_DATABASE_URL: the second one's own key would split the patients."""
    init_example_campaign(settings)
    other = Settings(home=tmp_path / "second-home", database_url=settings.resolved_database_url)
    create_key_file(other.resolved_key_file)

    with pytest.raises(KeyMismatch, match=RESTORE):
        IngestPipeline.from_settings(other)
    monkeypatch.setenv("MEDAI_HOME", str(other.resolved_home))
    get_settings.cache_clear()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.dcm").write_bytes(b"not even read")
    result = CliRunner().invoke(app, ["collect", "import", str(folder), "--site", "site-a"])
    get_settings.cache_clear()
    assert result.exit_code != 0 and RESTORE in result.output, result.output
    # The same key copied there is the same campaign: accepted.
    other.resolved_key_file.unlink()
    shutil.copy(settings.resolved_key_file, other.resolved_key_file)
    IngestPipeline.from_settings(other).engine.dispose()


def test_a_catalog_without_a_fingerprint_records_the_present_key(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Catalogs set up before fingerprints: the first pseudonymizing command records it."""
    init_example_campaign(settings)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine).begin() as session:
        session.execute(update(Campaign).values(key_fingerprint=None))
    engine.dispose()

    with caplog.at_level(logging.INFO):
        IngestPipeline.from_settings(settings).engine.dispose()

    fingerprint = key_fingerprint(load_key(settings.resolved_key_file))
    assert _stored_fingerprint(settings) == fingerprint
    assert any("recorded" in r.getMessage() for r in caplog.records)
    assert not any(
        load_key(settings.resolved_key_file).hex() in r.getMessage() for r in caplog.records
    )


def test_a_catalog_migrated_from_0004_checks_the_key_from_its_first_use(settings: Settings) -> None:
    """An existing catalog gains the column empty; the first command records and then guards."""
    init_example_campaign(settings)
    engine = create_engine_for(settings.resolved_database_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    upgrade(engine)
    engine.dispose()
    assert _stored_fingerprint(settings) is None

    IngestPipeline.from_settings(settings).engine.dispose()
    assert _stored_fingerprint(settings) == key_fingerprint(load_key(settings.resolved_key_file))
    settings.resolved_key_file.unlink()
    create_key_file(settings.resolved_key_file)
    with pytest.raises(KeyMismatch, match=RESTORE):
        IngestPipeline.from_settings(settings)
