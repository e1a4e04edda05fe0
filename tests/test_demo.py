"""`medai demo` runs the collection campaign end to end and proves its accounting."""

from __future__ import annotations

from typer.testing import CliRunner

from medai.cli import app
from medai.collection.accounting import verify_collection
from medai.config import Settings
from tests.utils.campaign import EXAMPLE_CAMPAIGN


def test_demo_imports_quarantines_and_verifies(settings: Settings) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--campaign", str(EXAMPLE_CAMPAIGN), "--studies", "2", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "demo finished" in result.output
    report = verify_collection(settings)
    assert report.ok, report.problems
    stored = report.events["stored"]
    assert stored == report.instances > 0
    assert report.events["duplicate"] == stored  # the second import of each site adds nothing
    assert report.events["quarantined"] == 4  # a text file and a truncated copy, twice
    assert report.quarantine_entries == 2
