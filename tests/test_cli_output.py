"""What the commands print: user text verbatim (brackets too), 80 columns, --json everywhere."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.cli import app
from medai.cli_support import console
from medai.collection.campaign.cli import print_status_report
from medai.collection.campaign.progress import compute_progress
from medai.collection.campaign.report import CampaignProgress
from medai.config import get_settings
from tests.test_cli_fresh_home import leaf_commands
from tests.utils.campaign import EXAMPLE_CAMPAIGN

LONG_ID = "northgate-community-imaging-clinic-east"
LONG_NAME = "Northgate Community Imaging Clinic, East Campus (outpatient radiology)"
BRACKETED_NAME = "St. Mary General [north wing]"
# Commands that report nothing a script would read: they run until stopped or write files.
WITHOUT_JSON = {"collect listen", "edge run", "serve", "demo", "campaign export"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home whose own path holds brackets, set up with the example campaign renamed."""
    for name in list(os.environ):
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "[medai]" / "home"
    monkeypatch.setenv("MEDAI_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")  # long lines stay whole: asserted verbatim
    text = (
        EXAMPLE_CAMPAIGN.read_text()
        .replace('name = "St. Mary General"', f'name = "{BRACKETED_NAME}"')
        .replace('id = "site-c"', f'id = "{LONG_ID}"')
        .replace('name = "Northgate Clinic"', f'name = "{LONG_NAME}"')
    )
    campaign = tmp_path / "campaign.toml"
    campaign.write_text(text)
    get_settings.cache_clear()
    assert _medai("campaign", "init", str(campaign)).exit_code == 0
    yield home
    get_settings.cache_clear()


def _medai(*args: str) -> typer.testing.Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args))


def _report() -> CampaignProgress:
    engine = create_engine_for(get_settings().resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return compute_progress(session)
    finally:
        engine.dispose()


def test_paths_with_brackets_print_verbatim(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "[site-a]"
    folder.mkdir()
    (folder / "notes [draft].txt").write_text("not a DICOM file")

    missing = _medai("collect", "import", str(folder / "[2026]"), "--site", "site-a")
    assert missing.exit_code == 2
    assert f"{folder}/[2026] does not exist" in missing.output

    imported = _medai("collect", "import", f"{folder}/", "--site", "site-a", "--json")
    assert imported.exit_code == 0, imported.output
    summary = json.loads(imported.stdout.splitlines()[-1])
    assert summary["quarantined"] == {"not-dicom": 1} and summary["site"] == "site-a"

    quarantine = _medai("collect", "quarantine")
    assert f"raw files in {home}/quarantine\n" in quarantine.output
    assert "site-a" in quarantine.output and "not-dicom" in quarantine.output


def test_label_sheet_errors_keep_their_brackets(home: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "[ris] site-a.csv"
    sheet.write_text("accession,nodule\nA1,yes\n")
    result = _medai("labels", "import", str(sheet), "--site", "site-a")
    assert result.exit_code == 2
    assert "the [labels] mapping in the campaign file" in " ".join(result.output.split())


def test_site_names_with_brackets_in_campaign_status(home: Path) -> None:
    result = _medai("campaign", "status")
    assert result.exit_code == 0, result.output
    assert BRACKETED_NAME in result.output and LONG_NAME in result.output


@pytest.mark.parametrize("columns", [80, 200])
def test_campaign_status_fits_the_terminal_without_cutting_anything(
    home: Path, columns: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report()
    big = {"studies": 123_456_789, "instances": 98_765_432_101, "quarantined": 4_567_890}
    report = report.model_copy(
        update={"sites": [site.model_copy(update=big) for site in report.sites], **big}
    )
    monkeypatch.setenv("COLUMNS", str(columns))
    print_status_report(report, console())
    output = capsys.readouterr().out
    lines = output.splitlines()
    assert "…" not in output
    assert max(len(line) for line in lines) <= columns, output
    for text in (LONG_ID, LONG_NAME, BRACKETED_NAME, "98765432101", "123456789", "4567890"):
        assert any(text in line for line in lines), (text, output)
    # Wide enough: the tables; in 80 columns, a block per site.
    assert ("Progress by site" in output) == (columns == 200)


def test_every_reporting_command_has_json() -> None:
    cli = typer.main.get_command(app)
    missing = []
    for path in leaf_commands():
        command = cli
        for name in path.split():
            command = command.commands[name]  # type: ignore[attr-defined]
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        if "--json" not in options and path not in WITHOUT_JSON:
            missing.append(path)
    assert not missing, f"give these commands --json (cli_support.JsonFlag): {missing}"


def test_json_reports_of_the_accounting_commands(home: Path) -> None:
    verify = _medai("collect", "verify", "--json")
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["ok"] is True
    audit = _medai("audit", "verify", "--json")
    document = json.loads(audit.stdout)
    assert audit.exit_code == 0 and document["ok"] is True and document["records"] >= 1
    quarantine = json.loads(_medai("collect", "quarantine", "--json").stdout)
    assert quarantine["held"] == 0 and quarantine["by_site_and_reason"] == []
    keys = _medai("keys", "create", "--role", "steward", "--name", "site-a-stow", "--json")
    created = json.loads(keys.stdout)
    assert created["name"] == "site-a-stow" and created["key"].startswith(created["prefix"])
    listed = json.loads(_medai("keys", "list", "--json").stdout)
    assert [key["name"] for key in listed] == ["site-a-stow"]
    assert "key" not in listed[0]
    table = _medai("keys", "list")
    assert "site-a-stow" in table.output
