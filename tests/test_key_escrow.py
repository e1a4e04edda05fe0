"""The campaign key's escrow: export, lose the key, restore it, and the pseudonyms are the same."""

from __future__ import annotations

import base64
import json
import secrets
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Instance, Patient
from medai.cli import app
from medai.collection.campaign.definition import load_campaign
from medai.collection.campaign.setup import init_campaign
from medai.config import Settings
from medai.dicom.synth import generate
from medai.errors import KeyEscrowError
from medai.keyfile import KEY_BYTES, escrow_key, key_fingerprint, load_key, open_escrow
from tests.utils.campaign import EXAMPLE_CAMPAIGN, init_example_campaign

PASSPHRASE = "correct horse battery staple"
runner = CliRunner()


def _passphrase_file(tmp_path: Path, text: str = PASSPHRASE) -> Path:
    path = tmp_path / f"pass-{len(text)}.txt"
    path.write_text(text + "\n")
    return path


def _export(tmp_path: Path, name: str = "escrow.json") -> Path:
    out = tmp_path / name
    result = runner.invoke(
        app,
        [
            "campaign",
            "key",
            "export",
            "--out",
            str(out),
            "--passphrase-file",
            str(_passphrase_file(tmp_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def _import(escrow: Path, passphrase_file: Path) -> tuple[int, str]:
    result = runner.invoke(
        app, ["campaign", "key", "import", str(escrow), "--passphrase-file", str(passphrase_file)]
    )
    return result.exit_code, result.output


def _counts(settings: Settings) -> tuple[int, int]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            patients = session.scalar(select(func.count()).select_from(Patient)) or 0
            instances = session.scalar(select(func.count()).select_from(Instance)) or 0
            return patients, instances
    finally:
        engine.dispose()


def _audit_text(settings: Settings) -> str:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(AuditRecord)).all()
            return json.dumps([[r.action, r.details] for r in rows], default=str)
    finally:
        engine.dispose()


# -- the escrow format (no catalog) --------------------------------------------------------


def test_escrow_round_trip_and_wrong_passphrase() -> None:
    key = bytes(range(KEY_BYTES))
    document = escrow_key(key, PASSPHRASE, campaign="c")

    assert open_escrow(document, PASSPHRASE) == key
    assert key.hex() not in document.decode()
    fields = json.loads(document)
    assert fields["kdf"] == "scrypt" and fields["n"] >= 2**15 and fields["r"] == 8
    assert fields["fingerprint"] == key_fingerprint(key)
    with pytest.raises(KeyEscrowError, match="passphrase is wrong"):
        open_escrow(document, PASSPHRASE + "!")
    # Same key, same passphrase: a fresh salt and nonce each time.
    assert escrow_key(key, PASSPHRASE, campaign="c") != document


@pytest.mark.parametrize("field", ["ciphertext", "campaign", "nonce"])
def test_an_altered_escrow_fails_its_tag(field: str) -> None:
    document = json.loads(escrow_key(bytes(KEY_BYTES), PASSPHRASE, campaign="c"))
    if field == "campaign":
        document[field] = "another campaign"
    else:
        raw = bytearray(base64.b64decode(document[field]))
        raw[0] ^= 1
        document[field] = base64.b64encode(bytes(raw)).decode()

    with pytest.raises(KeyEscrowError, match="altered"):
        open_escrow(json.dumps(document).encode(), PASSPHRASE)


# -- export and import against the catalog -------------------------------------------------


def test_lost_key_restored_from_escrow_gives_the_same_pseudonyms(
    settings: Settings, tmp_path: Path
) -> None:
    """Import a folder, lose the key, restore it: re-importing adds no file and no patient."""
    init_example_campaign(settings)
    generate(tmp_path / "in", studies=2, seed=5, sites=("site-a",), image_size=32, ct_slices=2)
    folder = str(tmp_path / "in" / "site-a")
    first = runner.invoke(app, ["collect", "import", folder, "--site", "site-a", "-j", "1"])
    assert first.exit_code == 0, first.output
    before = _counts(settings)
    key = load_key(settings.resolved_key_file)
    escrow = _export(tmp_path)
    assert stat.S_IMODE(escrow.stat().st_mode) == 0o600
    assert key.hex() not in escrow.read_text()

    settings.resolved_key_file.unlink()
    refused = runner.invoke(app, ["collect", "import", folder, "--site", "site-a", "-j", "1"])
    assert refused.exit_code != 0
    assert "medai campaign key import" in refused.output
    init = runner.invoke(app, ["campaign", "init", str(EXAMPLE_CAMPAIGN)])
    assert init.exit_code != 0 and "medai campaign key import" in init.output
    assert not settings.resolved_key_file.exists()

    code, output = _import(escrow, _passphrase_file(tmp_path))
    assert code == 0, output
    assert load_key(settings.resolved_key_file) == key
    assert stat.S_IMODE(settings.resolved_key_file.stat().st_mode) == 0o600

    again = runner.invoke(app, ["collect", "import", folder, "--site", "site-a", "-j", "1"])
    assert again.exit_code == 0, again.output
    assert _counts(settings) == before  # all duplicates: no new patient, no new instance
    audit = _audit_text(settings)
    assert "campaign.key-export" in audit and "campaign.key-import" in audit
    assert key.hex() not in audit


def test_wrong_passphrase_and_tampered_escrow_write_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    init_example_campaign(settings)
    escrow = _export(tmp_path)
    settings.resolved_key_file.unlink()

    code, output = _import(escrow, _passphrase_file(tmp_path, "not the passphrase at all"))
    assert code != 0 and "passphrase is wrong" in output
    assert not settings.resolved_key_file.exists()

    document = json.loads(escrow.read_text())
    raw = bytearray(base64.b64decode(document["ciphertext"]))
    raw[-1] ^= 0x80  # the GCM tag
    document["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    code, output = _import(tampered, _passphrase_file(tmp_path))
    assert code != 0 and "altered" in output
    assert not settings.resolved_key_file.exists()


def test_another_campaigns_escrow_is_refused(settings: Settings, tmp_path: Path) -> None:
    """Escrows of another campaign, or of a second home's own key, do not restore ours."""
    init_example_campaign(settings)
    ours = load_key(settings.resolved_key_file)
    # Another home on another catalog: same campaign name, another key.
    other = Settings(home=tmp_path / "other", database_url=f"sqlite:///{tmp_path / 'other.db'}")
    init_campaign(load_campaign(EXAMPLE_CAMPAIGN), other)
    name = "City Imaging Pilot 2026"
    foreign = tmp_path / "foreign.json"
    foreign.write_bytes(escrow_key(load_key(other.resolved_key_file), PASSPHRASE, campaign=name))
    # A key made by hand in a second home pointed at our catalog.
    stray = tmp_path / "stray.json"
    stray.write_bytes(escrow_key(secrets.token_bytes(KEY_BYTES), PASSPHRASE, campaign=name))
    # Another campaign's name altogether.
    renamed = tmp_path / "renamed.json"
    renamed.write_bytes(escrow_key(ours, PASSPHRASE, campaign="Another Pilot"))
    settings.resolved_key_file.unlink()

    for escrow in (foreign, stray, renamed):
        code, output = _import(escrow, _passphrase_file(tmp_path))
        assert code != 0 and "not of this catalog's campaign" in output, output
        assert not settings.resolved_key_file.exists()
    # The right escrow still works, and an existing key file is never overwritten.
    settings.resolved_key_file.write_text(ours.hex() + "\n")
    settings.resolved_key_file.chmod(0o600)
    escrow = _export(tmp_path)
    code, output = _import(escrow, _passphrase_file(tmp_path))
    assert code == 0 and "already in place" in output


def test_export_refuses_a_short_passphrase_and_an_existing_file(
    settings: Settings, tmp_path: Path
) -> None:
    init_example_campaign(settings)
    out = tmp_path / "escrow.json"
    short = runner.invoke(
        app,
        [
            "campaign",
            "key",
            "export",
            "--out",
            str(out),
            "--passphrase-file",
            str(_passphrase_file(tmp_path, "short")),
        ],
    )
    assert short.exit_code != 0 and "shorter than" in short.output and not out.exists()
    _export(tmp_path)
    again = runner.invoke(
        app,
        ["campaign", "key", "export", "--out", str(out)],
        input=f"{PASSPHRASE}\n{PASSPHRASE}\n",
    )
    assert again.exit_code != 0 and "already exists" in again.output
    for args in (["campaign", "key", "export", "--help"], ["campaign", "key", "import", "--help"]):
        assert runner.invoke(app, args).exit_code == 0


def test_the_service_refuses_another_key_for_stow_and_readiness(settings: Settings) -> None:
    """`medai serve` in a home with its own key: not ready, and STOW-RS stores nothing."""
    from medai.keyfile import create_key_file
    from medai.serving.app import create_app
    from tests.serving.helpers import TestClient, bearer, multipart, new_key

    init_example_campaign(settings)
    settings.resolved_key_file.unlink()
    create_key_file(settings.resolved_key_file)
    settings = settings.model_copy(update={"serve_model": ""})  # collection only
    key = new_key(settings, "steward")
    body, content_type = multipart([b"x"])
    headers = bearer(key) | {"Content-Type": content_type}
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "medai campaign key import" in ready.json()["detail"]
        stow = client.post("/dicomweb/studies?site=site-a", content=body, headers=headers)
        assert stow.status_code == 503
        assert "medai campaign key import" in stow.json()["detail"]
    assert _counts(settings) == (0, 0)
