"""Campaign definition: the example file, field-naming errors, set-up in the catalog, the CLI."""

from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Campaign, Site
from medai.collection.campaign.cli import register
from medai.collection.campaign.definition import CampaignDefinition, load_campaign
from medai.collection.campaign.setup import init_campaign
from medai.collection.campaign.sites import (
    get_site,
    site_for_ae_title,
    site_targets,
    stored_campaign,
)
from medai.config import Settings
from medai.errors import CampaignError, UnknownSite

EXAMPLE = Path(__file__).resolve().parents[2] / "collection" / "example-campaign.toml"


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text, f"the example no longer contains {old!r}"
    path = tmp_path / "campaign.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


# -- the definition file ------------------------------------------------------------------


def test_example_campaign_loads() -> None:
    campaign = load_campaign(EXAMPLE)

    assert campaign.name == "City Imaging Pilot 2026"
    assert campaign.start_date == dt.date(2026, 10, 1)
    assert campaign.length_days == 90
    assert campaign.last_day == dt.date(2026, 12, 29)
    assert [s.id for s in campaign.sites] == ["site-a", "site-b", "site-c"]
    site_b = campaign.site("site-b")
    assert site_b is not None and site_b.name == "Riverside University Hospital"
    assert "RIVERSIDE_CR" in site_b.ae_titles
    chest = site_b.targets[0]
    assert (chest.modality, chest.body_part, chest.finding, chest.studies) == (
        "DX",
        "CHEST",
        None,
        300,
    )
    findings = {t.finding for s in campaign.sites for t in s.targets if t.finding}
    assert findings == {"nodule", "effusion", "cardiomegaly"}
    assert campaign.labels is not None and set(campaign.labels.findings) == findings
    assert campaign.labels.for_site("site-a").study_key_kind == "accession_number"
    assert campaign.labels.for_site("site-b").study_key_kind == "study_uid"


def test_deidentification_options_convert_to_deid_options() -> None:
    options = load_campaign(EXAMPLE).deidentification.to_deid_options()

    assert options.retain_longitudinal_modified_dates
    assert options.retain_patient_characteristics
    assert options.retain_device_identity
    assert options.clean_descriptors
    assert options.safe_private_tags == frozenset({("SIEMENS MR HEADER", 0x0C)})


def test_options_default_on_and_full_private_element_becomes_offset() -> None:
    campaign = CampaignDefinition.model_validate(
        {
            "name": "Minimal",
            "start_date": "2026-01-05",
            "sites": [{"id": "x", "name": "X", "ae_titles": ["X_PACS"]}],
            "deidentification": {"safe_private_tags": [{"creator": "ACME", "element": 0x1042}]},
        }
    )
    options = campaign.deidentification
    assert campaign.length_days == 90
    assert options.retain_patient_characteristics and options.clean_descriptors
    assert options.safe_private_tags[0].element == 0x42


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('name = "City Imaging Pilot 2026"\n', "", "name: required field is missing"),
        ("start_date = 2026-10-01", 'start_date = "2026-13-01"', "start_date: "),
        ("start_date = 2026-10-01", "start_date = 2026-10-01T08:00:00", "start_date: "),
        ('id = "site-b"', 'id = "site-a"', "sites[1].id: duplicate site id 'site-a'"),
        (
            '"RIVERSIDE_CR"',
            '"STMARY_PACS"',
            "sites[1].ae_titles[1]: AE title 'STMARY_PACS' is already used by site 'site-a'",
        ),
        (
            '"RIVERSIDE_CR"',
            '"RIVERSIDE_CR_ROOM2"',
            "sites[1].ae_titles[1]: AE title longer than 16 characters",
        ),
        ('"NORTHGATE_DX"', '"   "', "sites[2].ae_titles[0]: AE title is empty or all spaces"),
        ('"NORTHGATE_DX"', '"NORTH\\\\GATE"', "sites[2].ae_titles[0]: AE title must not"),
        ("studies = 150", "studies = -1", "sites[2].targets[0].studies: "),
        ("length_days = 90", "length_days = 0", "length_days: "),
        ("length_days = 90", "length_days = [90]", "length_days: "),
        ('id = "site-c"', 'id = "Site C"', "sites[2].id: site id must be"),
        ("retain_device_identity", "retain_device_identty", "deidentification."),
    ],
    ids=[
        "missing-name",
        "bad-date",
        "date-time",
        "duplicate-site-id",
        "duplicate-ae-title",
        "ae-title-too-long",
        "ae-title-spaces",
        "ae-title-backslash",
        "negative-target",
        "length-zero",
        "wrong-type",
        "bad-slug",
        "misspelt-option",
    ],
)
def test_invalid_field_is_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = _edited(tmp_path, old, new)

    with pytest.raises(CampaignError) as info:
        load_campaign(path)

    assert f"{path}: {expected}" in str(info.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _edited(tmp_path, "length_days = 90", "length_days = = 90")
    line = _line_of(path.read_text(), "length_days")

    with pytest.raises(CampaignError, match="TOML syntax error") as info:
        load_campaign(path)

    assert str(info.value).startswith(f"{path}: ")
    assert f"line {line}," in str(info.value)


def test_missing_file_is_a_campaign_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="no such campaign file"):
        load_campaign(tmp_path / "absent.toml")


# -- set-up in the catalog (SQLite and PostgreSQL) ----------------------------------------


def _count(session: Session, model: type[Any]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_init_creates_sites_key_and_audit_record(settings: Settings, session: Session) -> None:
    definition = load_campaign(EXAMPLE)

    result = init_campaign(definition, settings, actor="tester")

    assert result.campaign_created
    assert result.sites_created == ["site-a", "site-b", "site-c"]
    assert result.key_created and result.key_file == settings.resolved_key_file
    assert stat.S_IMODE(result.key_file.stat().st_mode) == 0o600
    site_a = session.get(Site, "site-a")
    assert site_a is not None and site_a.name == "St. Mary General"
    assert site_a.ae_titles == ["STMARY_PACS", "STMARY_CR1"]
    assert site_targets(site_a) == definition.sites[0].targets
    assert stored_campaign(session) == definition
    key_record, record = session.scalars(select(AuditRecord).order_by(AuditRecord.seq))
    assert (key_record.action, key_record.actor) == ("campaign.key-create", "tester")
    assert (record.action, record.actor, record.subject) == (
        "campaign.init",
        "tester",
        definition.name,
    )
    assert record.details["sites_created"] == ["site-a", "site-b", "site-c"]


def test_init_again_is_idempotent_and_keeps_the_key(settings: Settings, session: Session) -> None:
    definition = load_campaign(EXAMPLE)
    init_campaign(definition, settings)
    key = settings.resolved_key_file.read_bytes()

    again = init_campaign(definition, settings)

    assert not again.key_created and settings.resolved_key_file.read_bytes() == key
    assert not (again.campaign_created or again.campaign_updated)
    assert (again.sites_created, again.sites_updated) == ([], [])
    assert again.sites_unchanged == ["site-a", "site-b", "site-c"]
    # The key's creation and two set-ups; the second created nothing.
    assert (_count(session, Campaign), _count(session, Site), _count(session, AuditRecord)) == (
        1,
        3,
        3,
    )


def test_init_after_edit_updates_sites(settings: Settings, session: Session) -> None:
    init_campaign(load_campaign(EXAMPLE), settings)
    document = load_campaign(EXAMPLE).model_dump(mode="json")
    document["sites"][1]["name"] = "Riverside University Hospital (East)"
    document["sites"][1]["ae_titles"] = ["RIVERSIDE_EAST"]
    document["sites"] = document["sites"][:2]

    result = init_campaign(CampaignDefinition.model_validate(document), settings)

    assert result.campaign_updated and result.sites_updated == ["site-b"]
    assert result.sites_not_in_definition == ["site-c"]
    site_b = get_site(session, "site-b")
    assert (site_b.name, site_b.ae_titles) == (
        "Riverside University Hospital (East)",
        ["RIVERSIDE_EAST"],
    )
    assert site_for_ae_title(session, "RIVERSIDE_EAST").id == "site-b"
    with pytest.raises(UnknownSite):
        site_for_ae_title(session, "RIVERSIDE_CR")


def test_init_refuses_a_second_campaign_in_one_catalog(settings: Settings) -> None:
    init_campaign(load_campaign(EXAMPLE), settings)
    other = load_campaign(EXAMPLE).model_copy(update={"name": "Another Pilot"})

    with pytest.raises(CampaignError, match="already serves campaign 'City Imaging Pilot 2026'"):
        init_campaign(other, settings)


def test_site_lookups(settings: Settings, session: Session) -> None:
    init_campaign(load_campaign(EXAMPLE), settings)

    assert site_for_ae_title(session, "RIVERSIDE_CR").id == "site-b"
    assert site_for_ae_title(session, "NORTHGATE_DX  ").id == "site-c"  # padding is not significant
    assert get_site(session, "site-a").name == "St. Mary General"
    with pytest.raises(UnknownSite, match="site-a, site-b, site-c") as info:
        site_for_ae_title(session, "UNKNOWN_AE")
    assert "UNKNOWN_AE" in str(info.value)
    with pytest.raises(UnknownSite, match="unknown site 'site-z'.*site-a, site-b, site-c"):
        get_site(session, "site-z")


# -- the command line -----------------------------------------------------------------------


def _app() -> typer.Typer:
    try:
        from medai.cli import app
    except ImportError:  # the root app is the lead's; until it registers us, build one here
        app = typer.Typer()
        register(app)

        @app.callback()
        def _root() -> None:
            """Keep ``campaign`` a sub-command even when it is the only one."""

    return app


def test_cli_help() -> None:
    result = CliRunner().invoke(_app(), ["campaign", "init", "--help"])

    assert result.exit_code == 0, result.output
    assert "TOML" in result.output


def test_cli_init_prints_sites_and_key_warning(settings: Settings) -> None:
    result = CliRunner().invoke(_app(), ["campaign", "init", str(EXAMPLE)])

    assert result.exit_code == 0, result.output
    for text in ("City Imaging Pilot 2026", "site-a", "site-b", "site-c", "STMARY_PACS"):
        assert text in result.output
    assert "Back up the key file" in result.output
    assert settings.resolved_key_file.exists()


def test_cli_invalid_file_exits_2_naming_the_field(settings: Settings, tmp_path: Path) -> None:
    path = _edited(tmp_path, '"RIVERSIDE_CR"', '"RIVERSIDE_CR_ROOM2"')

    result = CliRunner().invoke(_app(), ["campaign", "init", str(path)])

    assert result.exit_code == 2
    assert "sites[1].ae_titles[1]: AE title longer than 16 characters" in result.output
    assert "medai campaign init" in result.output  # says what to do next
    assert not settings.resolved_key_file.exists()


def test_a_stored_campaign_of_an_older_format_says_to_init_again(
    settings: Settings, session: Session
) -> None:
    init_campaign(load_campaign(EXAMPLE), settings)
    row = session.scalars(select(Campaign)).one()
    row.definition = {**row.definition, "retired_option": True}
    session.commit()
    with pytest.raises(CampaignError, match="campaign init") as error:
        stored_campaign(session)
    assert "retired_option" in str(error.value)
