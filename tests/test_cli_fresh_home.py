"""Each command on a home where ``medai campaign init`` never ran: one sentence, never a traceback.

The command tree is walked, so a new command is covered as soon as it exists: it needs
an entry in ARGUMENTS (its minimal valid arguments) or in WORKS_ON_A_FRESH_HOME (why it
legitimately works there), or the walk fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medai.catalog import db
from medai.cli import app
from medai.config import get_settings

REPO = Path(__file__).resolve().parents[1]
# Nothing listens on port 9 (discard) of a test machine: a pull must stop before it asks.
ARCHIVE = "http://127.0.0.1:9/dicom-web"

# Minimal valid arguments of each command that needs a set-up campaign; {tmp} is a scratch
# folder outside the home (holding a file to import and a label sheet).
ARGUMENTS: dict[str, list[str]] = {
    "campaign status": [],
    "campaign export": [],
    "campaign key export": ["--out", "{tmp}/escrow.json"],
    "campaign key import": ["{tmp}/escrow.json"],
    "collect import": ["{tmp}/incoming", "--site", "site-a"],
    "collect listen": [],
    "collect pull": ["--site", "site-a", "--url", ARCHIVE, "--since", "2026-10-01"],
    "collect verify": [],
    "collect quarantine list": [],
    "collect quarantine show": ["1"],
    "collect quarantine release": ["--all", "--yes"],
    "collect quarantine purge": ["--all", "--yes"],
    "audit verify": [],
    "audit anchor": [],
    "security status": [],
    "labels import": ["{tmp}/site-a.csv", "--site", "site-a"],
    "labels rematch": [],
    "labels status": [],
    "labels show": [],
    "snapshot create": ["--name", "chest-v1"],
    "snapshot list": [],
    "snapshot show": ["chest-v1"],
    "snapshot export": ["chest-v1", "{tmp}/export"],
    "train": [str(REPO / "models" / "chest-xray-triage")],
    "models promote": ["chest-xray-triage", "1"],
    "models feedback-export": ["chest-xray-triage", "--out", "{tmp}/feedback.csv"],
    "campaign site-kit": ["site-a", "--out", "{tmp}/site-a.kit"],
    "edge run": [],
    "edge status": [],
    "edge receipts": [],
    "collect reconcile": ["--site", "site-a"],
    "backup create": ["{tmp}/backups"],
}

# Commands that do their job on a fresh home, and why.
WORKS_ON_A_FRESH_HOME = {
    "synth": "writes synthetic files; no catalog involved",
    "campaign init": "it is what sets a home up",
    "demo": "sets up its own demo campaign first",
    "serve": "starts without a campaign (a model-only service); /readyz says what is missing",
    # API keys may come before the campaign (an inference-only service): these commands
    # migrate the catalog themselves.
    "keys create": "migrates the catalog itself",
    "keys list": "migrates the catalog itself",
    "keys revoke": "migrates the catalog itself, then names the keys there are",
    "edge init": "it is what sets an edge home up (from a site kit)",
    # tests/ops/test_backup.py: these read or write a backup folder, not the home's catalog.
    "backup list": "reads the backup folder only (says when it is not one)",
    "backup verify": "reads the backup folder only (says when it is not one)",
    "backup prune": "works on the backup folder only",
    "backup restore": "builds a new home from a backup folder",
    # tests/ops/test_doctor.py: a fresh home is a report of problems, and nothing is created.
    "doctor": "diagnoses a home in any state: the missing catalog is its finding",
    # tests/training/test_export.py: a model-only machine (MLflow, no campaign) may export; with
    # no MLflow database it says to train first, and the check uses random images without a
    # catalog.
    "models export": "reads the MLflow registry, not the catalog; says when there is none",
}

INIT_HINT = "run `medai campaign init CAMPAIGN.toml`"


def leaf_commands() -> list[str]:
    """Every command a user can run, hidden ones included, as 'group command'."""

    def walk(command: object, path: tuple[str, ...]) -> Iterator[str]:
        children = getattr(command, "commands", None)
        if children is None:
            yield " ".join(path)
            return
        for name, child in children.items():
            yield from walk(child, (*path, name))

    return sorted(walk(typer.main.get_command(app), ()))


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty MEDAI_HOME and nothing else of a developer's MEDAI_* settings."""
    for name in list(os.environ):
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MEDAI_HOME", str(home))
    scratch = tmp_path / "scratch"
    (scratch / "incoming").mkdir(parents=True)
    (scratch / "incoming" / "x.dcm").write_bytes(b"not dicom")
    (scratch / "site-a.csv").write_text("accession,nodule\nA1,yes\n")
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def _run(command: str, tmp: Path) -> tuple[int, str, BaseException | None]:
    args = [arg.replace("{tmp}", str(tmp)) for arg in ARGUMENTS[command]]
    get_settings.cache_clear()
    result = CliRunner().invoke(app, [*command.split(), *args])
    return result.exit_code, result.output, result.exception


def test_every_command_is_in_one_table() -> None:
    commands = set(leaf_commands())
    missing = commands - ARGUMENTS.keys() - WORKS_ON_A_FRESH_HOME.keys()
    assert not missing, f"add these commands to ARGUMENTS or WORKS_ON_A_FRESH_HOME: {missing}"
    stale = (ARGUMENTS.keys() | WORKS_ON_A_FRESH_HOME.keys()) - commands
    assert not stale, f"these commands no longer exist: {stale}"
    assert not ARGUMENTS.keys() & WORKS_ON_A_FRESH_HOME.keys()


@pytest.mark.parametrize("command", sorted(ARGUMENTS))
def test_a_command_on_a_fresh_home_says_what_to_run(command: str, fresh_home: Path) -> None:
    code, output, exception = _run(command, fresh_home.parent / "scratch")
    assert code == 2, output
    assert isinstance(exception, SystemExit), exception
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        f"error: no campaign is set up in MEDAI_HOME={fresh_home}: {INIT_HINT} first"
    ], output
    # Nothing left behind: a mistyped MEDAI_HOME does not get an empty catalog.
    assert list(fresh_home.iterdir()) == []


# The audit log and the inference feedback exist before any campaign (an inference-only
# service has a catalog for its keys, audit and feedback, and no campaign).
NO_CAMPAIGN_NEEDED = {"audit verify", "audit anchor", "models feedback-export"}


@pytest.mark.parametrize("command", sorted(set(ARGUMENTS) - NO_CAMPAIGN_NEEDED))
def test_a_catalog_without_a_campaign_says_the_same(command: str, fresh_home: Path) -> None:
    """As after `medai keys create` alone: the schema is there, the campaign is not."""
    db.upgrade(f"sqlite:///{fresh_home / 'catalog.db'}")
    code, output, _ = _run(command, fresh_home.parent / "scratch")
    assert code == 2 and "Traceback" not in output
    assert f"no campaign is set up in MEDAI_HOME={fresh_home}: {INIT_HINT} first" in output


def test_the_audit_log_of_a_catalog_without_a_campaign_verifies(fresh_home: Path) -> None:
    # Key changes are audited before any campaign exists: their chain can be checked.
    db.upgrade(f"sqlite:///{fresh_home / 'catalog.db'}")
    code, output, _ = _run("audit verify", fresh_home)
    assert code == 0 and "0 audit records, chain intact" in output
    code, output, _ = _run("audit anchor", fresh_home)
    assert code == 0 and output.strip() == "0:" + "0" * 64


def test_an_older_catalog_is_to_be_migrated(fresh_home: Path) -> None:
    db.upgrade(f"sqlite:///{fresh_home / 'catalog.db'}", revision="0002")
    code, output, _ = _run("campaign status", fresh_home)
    assert code == 2 and "Traceback" not in output
    assert f"has an older schema than this medai: {INIT_HINT} again to migrate it" in output


def test_an_unreachable_database_names_the_setting_never_the_password(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) has no PostgreSQL server on any test machine.
    monkeypatch.setenv("MEDAI_DATABASE_URL", "postgresql+psycopg://medai:s3cret@127.0.0.1:9/medai")
    code, output, _ = _run("collect verify", fresh_home)
    assert code == 2 and "Traceback" not in output
    assert "cannot be opened: start the database server or fix MEDAI_DATABASE_URL" in output
    assert "s3cret" not in output and "medai:***@127.0.0.1:9/medai" in output
