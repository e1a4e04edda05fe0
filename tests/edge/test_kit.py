"""Site kits: written at the centre, opened at the edge with the passphrase, nothing else."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from medai.audit.chain import verify_audit_chain
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Campaign
from medai.cli import app
from medai.config import Settings, get_settings
from medai.edge.kit import definition_toml, load_edge_config
from medai.keyfile import key_fingerprint, load_key
from medai.serving.keys import authenticate_key
from tests.utils.campaign import EXAMPLE_CAMPAIGN, init_example_campaign

PASSPHRASE = "correct horse battery staple"


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(
            app, list(args), env={"MEDAI_HOME": str(home), "MEDAI_DATABASE_URL": ""} | (env or {})
        )
    finally:
        get_settings.cache_clear()


def _actions(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))
    finally:
        engine.dispose()


@pytest.fixture
def centre(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("MEDAI_DATABASE_URL", "MEDAI_KEY_FILE", "MEDAI_KIT_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(home=tmp_path / "centre")
    init_example_campaign(settings)
    (tmp_path / "pass.txt").write_text(PASSPHRASE + "\n")
    return settings


def _kit(centre: Settings, tmp_path: Path, *extra: str) -> Path:
    kit = tmp_path / "site-a.kit"
    result = run(
        centre.resolved_home,
        "campaign", "site-kit", "site-a", "--out", str(kit),
        "--centre-url", "https://centre.example:8443/",
        "--passphrase-file", str(tmp_path / "pass.txt"), "--json", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return kit


def test_the_definition_survives_toml(tmp_path: Path) -> None:
    from medai.collection.campaign.definition import load_campaign

    definition = load_campaign(EXAMPLE_CAMPAIGN)
    path = tmp_path / "c.toml"
    path.write_text(definition_toml(definition.model_dump(mode="json")))
    assert load_campaign(path) == definition


def test_a_kit_sets_an_edge_up_with_the_campaign_key_and_an_edge_key(
    centre: Settings, tmp_path: Path
) -> None:
    pem = tmp_path / "centre.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    kit = _kit(centre, tmp_path, "--certificate", str(pem))
    assert stat.S_IMODE(kit.stat().st_mode) == 0o600
    document = json.loads(kit.read_text())
    assert document["format"] == "medai-site-kit/1"
    assert document["site"] == "site-a"
    assert document["centre_url"] == "https://centre.example:8443"
    key = load_key(centre.resolved_key_file)
    assert key.hex() not in kit.read_text()  # sealed, never in clear
    assert "medai_" not in json.dumps(document["api_key"])

    edge_home = tmp_path / "edge"
    result = run(
        edge_home, "edge", "init", str(kit), "--json", env={"MEDAI_KIT_PASSPHRASE": PASSPHRASE}
    )
    assert result.exit_code == 0, result.output
    edge = Settings(home=edge_home)
    assert load_key(edge.resolved_key_file) == key  # the same pseudonyms as the centre's
    engine = create_engine_for(edge.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            fingerprint = session.scalar(select(Campaign.key_fingerprint))
    finally:
        engine.dispose()
    assert fingerprint == key_fingerprint(key)
    config = load_edge_config(edge.resolved_home)
    assert (config.site, config.centre_url) == ("site-a", "https://centre.example:8443")
    assert config.certificate is not None and config.certificate.read_text() == pem.read_text()
    assert stat.S_IMODE(config.api_key_file.stat().st_mode) == 0o600
    # The API key in the kit is an edge key of site-a at the centre.
    engine = create_engine_for(centre.resolved_database_url)
    try:
        info = authenticate_key(engine, config.api_key())
        assert info is not None and (info.role, info.site_id) == ("edge", "site-a")
        with session_factory(engine)() as session:
            assert verify_audit_chain(session).ok
    finally:
        engine.dispose()
    assert {"apikey.create", "campaign.site-kit"} <= set(_actions(centre))
    assert "edge.init" in _actions(edge)
    # Again with the same kit: nothing breaks, the key is kept.
    result = run(
        edge_home, "edge", "init", str(kit), "--passphrase-file", str(tmp_path / "pass.txt")
    )
    assert result.exit_code == 0, result.output


def test_a_wrong_passphrase_sets_nothing_up(centre: Settings, tmp_path: Path) -> None:
    kit = _kit(centre, tmp_path)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the passphrase at all\n")
    edge_home = tmp_path / "edge"
    result = run(edge_home, "edge", "init", str(kit), "--passphrase-file", str(wrong))
    assert result.exit_code != 0
    assert "passphrase is wrong" in result.output
    assert "Traceback" not in result.output
    assert not (edge_home / "campaign.key").exists()
    assert not (edge_home / "edge" / "edge.toml").exists()


def test_an_altered_kit_or_no_kit_is_refused(centre: Settings, tmp_path: Path) -> None:
    kit = _kit(centre, tmp_path)
    document = json.loads(kit.read_text())
    document["site"] = "site-b"  # another site's edge from site-a's kit
    forged = tmp_path / "forged.kit"
    forged.write_text(json.dumps(document))
    edge_home = tmp_path / "edge"
    pass_file = str(tmp_path / "pass.txt")
    result = run(edge_home, "edge", "init", str(forged), "--passphrase-file", pass_file)
    assert result.exit_code != 0 and "altered" in result.output
    (tmp_path / "x.json").write_text("{}")
    result = run(
        edge_home, "edge", "init", str(tmp_path / "x.json"), "--passphrase-file", pass_file
    )
    assert result.exit_code != 0 and "not a medai site kit" in result.output


def test_a_kit_for_an_unknown_site_or_over_a_file_is_refused(
    centre: Settings, tmp_path: Path
) -> None:
    pass_file = str(tmp_path / "pass.txt")
    result = run(
        centre.resolved_home, "campaign", "site-kit", "site-z", "--out", str(tmp_path / "z.kit"),
        "--passphrase-file", pass_file,
    )  # fmt: skip
    assert result.exit_code != 0 and "not one of the campaign's sites" in result.output
    assert not (tmp_path / "z.kit").exists()
    kit = _kit(centre, tmp_path)
    before = kit.read_bytes()
    result = run(
        centre.resolved_home, "campaign", "site-kit", "site-a", "--out", str(kit),
        "--passphrase-file", pass_file,
    )  # fmt: skip
    assert result.exit_code != 0 and "already exists" in result.output
    assert kit.read_bytes() == before
