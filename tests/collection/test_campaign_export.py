"""The monitoring export: CSV cells never run as formulas; JSON and CSV carry the audit head."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from typer.testing import CliRunner

from medai.cli import app
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.report import csv_safe
from medai.collection.campaign.setup import init_campaign
from medai.config import Settings

runner = CliRunner()
HOSTILE = '=HYPERLINK("http://x","y")'


@pytest.fixture
def hostile_campaign(settings: Settings) -> Settings:
    definition = CampaignDefinition.model_validate(
        {
            "name": "@SUM(1+1)*cmd|' /C calc'!A0",
            "start_date": dt.date(2026, 1, 1),
            "length_days": 90,
            "sites": [
                {"id": "site-a", "name": HOSTILE, "ae_titles": ["SITE_A"], "targets": []},
                {"id": "site-b", "name": "-2+3", "ae_titles": ["SITE_B"], "targets": []},
                {"id": "site-c", "name": "\tTabbed", "ae_titles": ["SITE_C"], "targets": []},
            ],
        }
    )
    init_campaign(definition, settings)
    return settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (HOSTILE, "'" + HOSTILE),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-1.5", "-1.5"),  # a number stays a number
        ("+3", "+3"),
        ("-2e-3", "-2e-3"),
        (-1.5, -1.5),
        (7, 7),
        ("Bệnh viện Chợ Rẫy", "Bệnh viện Chợ Rẫy"),
        ("", ""),
    ],
)
def test_csv_cells_are_neutralised(value: object, expected: object) -> None:
    assert csv_safe(value) == expected


def test_csv_export_neutralises_names_and_carries_the_audit_head(
    hostile_campaign: Settings,
) -> None:
    exported = runner.invoke(
        app, ["campaign", "export", "--format", "csv", "--today", "2026-01-10"]
    )
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    names = {r["site"]: r["name"] for r in rows}
    assert names["site-a"] == "'" + HOSTILE
    assert names["site-b"] == "'-2+3" and names["site-c"] == "'\tTabbed"
    assert names["*"].startswith("'@")
    # No cell of the file starts a formula.
    assert not [c for r in rows for c in r.values() if c[:1] in ("=", "+", "@", "\t", "\r")]
    anchor = runner.invoke(app, ["audit", "anchor"]).stdout.strip()
    assert anchor.split(":")[0] != "0"  # the campaign's set-up is audited
    assert {r["audit_head"] for r in rows} == {anchor}
    verified = runner.invoke(app, ["audit", "verify", "--anchor", anchor])
    assert verified.exit_code == 0, verified.output


def test_json_export_carries_the_audit_head(hostile_campaign: Settings) -> None:
    exported = runner.invoke(app, ["campaign", "export", "--today", "2026-01-10"])
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.stdout)
    assert document["audit_head"] == runner.invoke(app, ["audit", "anchor"]).stdout.strip()
    # JSON is not a spreadsheet: names stay exactly as the campaign spells them.
    assert {s["name"] for s in document["sites"]} >= {HOSTILE, "-2+3"}
