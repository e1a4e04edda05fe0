"""``medai doctor``: a healthy home passes; each fault is named with what to do about it."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import update
from typer.testing import CliRunner

from medai.catalog.db import alembic_config, create_engine_for, session_factory
from medai.catalog.models import Campaign, utcnow
from medai.cli import app
from medai.config import Settings, get_settings
from medai.ops import doctor
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import Listener

runner = CliRunner()
PASSPHRASE = "correct horse battery staple"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CHECKS = [
    "home",
    "key-files",
    "quarantine",
    "database",
    "campaign-key",
    "key-escrow",
    "backup",
    "audit-anchor",
    "clock",
    "listeners",
    "disk",
]


def _invoke(*args: str) -> tuple[int, str]:
    get_settings.cache_clear()
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _doctor() -> tuple[int, dict[str, Any]]:
    """``medai doctor --json``: its exit code and its checks by name."""
    get_settings.cache_clear()
    result = runner.invoke(app, ["doctor", "--json"])
    return result.exit_code, json.loads(result.stdout.splitlines()[-1])


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in report["checks"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


@pytest.fixture
def healthy(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A home set up as its guide says: campaign, key escrow, a backup, an audit anchor."""
    init_example_campaign(settings)
    passphrase = tmp_path / "passphrase.txt"
    passphrase.write_text(PASSPHRASE + "\n")
    for args in (
        ("campaign", "key", "export", "--out", str(tmp_path / "escrow.json"),
         "--passphrase-file", str(passphrase)),
        ("backup", "create", str(tmp_path / "backups")),
        ("audit", "anchor"),
    ):  # fmt: skip
        code, output = _invoke(*args)
        assert code == 0, output
    yield settings


def test_a_fresh_healthy_home_passes(healthy: Settings) -> None:
    code, output = _invoke("doctor")
    assert code == 0, output
    assert output.strip().splitlines()[-1] == "all checks passed"
    code, report = _doctor()
    assert code == 0
    assert {check["name"]: check["status"] for check in report["checks"]} == dict.fromkeys(
        CHECKS, "ok"
    )


def test_json_shape(healthy: Settings) -> None:
    _, report = _doctor()
    assert set(report) == {"home", "database", "checked_at", "ok", "problems", "warnings", "checks"}
    assert report["home"] == str(healthy.resolved_home)
    assert report["ok"] is True and report["problems"] == report["warnings"] == 0
    assert dt.datetime.fromisoformat(report["checked_at"]).tzinfo is not None
    assert [check["name"] for check in report["checks"]] == CHECKS
    for check in report["checks"]:
        assert set(check) == {"name", "status", "summary", "remedy", "details"}
        assert check["status"] in {"ok", "warning", "problem", "skipped"}
    assert (
        _check(report, "database")["details"]["revision"]
        == _check(report, "database")["details"]["head"]
    )


def test_a_fresh_home_is_reported_and_left_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("MEDAI_") and not name.startswith("MEDAI_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "typo-home"
    monkeypatch.setenv("MEDAI_HOME", str(home))
    code, report = _doctor()
    assert code == 1
    database = _check(report, "database")
    assert database["status"] == "problem"
    assert database["remedy"] == "run `medai campaign init CAMPAIGN.toml`"
    assert _check(report, "campaign-key")["status"] == "skipped"
    assert not home.exists()


@SQLITE_ONLY
def test_a_key_file_others_may_read_is_a_problem(healthy: Settings) -> None:
    key = healthy.resolved_key_file
    key.chmod(0o644)
    code, report = _doctor()
    assert code == 1 and report["problems"] == 1
    check = _check(report, "key-files")
    assert check["status"] == "problem" and f"{key} is 0644" in check["summary"]
    assert check["remedy"] == f"chmod 600 {key}"
    code, output = _invoke("doctor")
    assert code == 1 and f"→ chmod 600 {key}" in output and "1 problem, 0 warnings" in output


@SQLITE_ONLY
def test_a_home_others_may_write_is_a_problem(healthy: Settings) -> None:
    home = healthy.resolved_home
    home.chmod(0o777)
    code, report = _doctor()
    check = _check(report, "home")
    assert code == 1 and check["status"] == "problem" and "0777" in check["summary"]
    assert check["remedy"] == f"chmod 700 {home}"
    home.chmod(0o755)  # readable, not writable: a warning, and the exit stays 0
    code, report = _doctor()
    assert code == 0 and _check(report, "home")["status"] == "warning"
    assert _invoke("doctor", "--strict")[0] == 1


@SQLITE_ONLY
def test_an_open_quarantine_is_a_problem(healthy: Settings) -> None:
    quarantine = healthy.resolved_quarantine_dir
    quarantine.mkdir(mode=0o755)
    quarantine.chmod(0o755)
    code, report = _doctor()
    check = _check(report, "quarantine")
    assert code == 1 and check["status"] == "problem"
    assert check["remedy"] == f"chmod 700 {quarantine}"


def test_a_missing_key_is_restored_from_the_escrow(healthy: Settings) -> None:
    healthy.resolved_key_file.unlink()
    code, report = _doctor()
    check = _check(report, "campaign-key")
    assert code == 1 and check["status"] == "problem" and "missing" in check["summary"]
    assert "medai campaign key import" in check["remedy"]


def test_another_key_is_a_problem(healthy: Settings) -> None:
    key = healthy.resolved_key_file
    key.write_text("ab" * 32 + "\n")
    code, report = _doctor()
    check = _check(report, "campaign-key")
    assert code == 1 and check["status"] == "problem" and "another key" in check["summary"]
    assert check["details"]["fingerprint"] != check["details"]["recorded_fingerprint"]
    assert "medai campaign key import" in check["remedy"]


def test_a_catalog_behind_head_is_to_be_migrated(healthy: Settings) -> None:
    config = alembic_config(url=healthy.resolved_database_url)
    command.downgrade(config, "-1")
    head = ScriptDirectory.from_config(config).get_revision("head")
    code, report = _doctor()
    check = _check(report, "database")
    assert code == 1 and check["status"] == "problem"
    assert "behind" in check["summary"]
    assert check["details"]["revision"] == [head.down_revision]
    assert "medai campaign init CAMPAIGN.toml" in check["remedy"]
    assert _check(report, "backup")["status"] == "skipped"


def test_no_backup_is_a_problem(settings: Settings) -> None:
    init_example_campaign(settings)
    assert _invoke("audit", "anchor")[0] == 0
    code, report = _doctor()
    check = _check(report, "backup")
    assert code == 1 and check["status"] == "problem"
    assert check["summary"] == "no backup recorded"
    assert check["remedy"] is not None and "medai backup create" in check["remedy"]
    anchor = _check(report, "audit-anchor")
    assert anchor["status"] == "ok"
    escrow = _check(report, "key-escrow")
    assert escrow["status"] == "warning" and "medai campaign key export" in escrow["remedy"]


def _clock(monkeypatch: pytest.MonkeyPatch, shift: dt.timedelta) -> None:
    real = doctor._utcnow
    monkeypatch.setattr(doctor, "_utcnow", lambda: real() + shift)


def test_a_stale_backup_and_anchor_are_named(
    healthy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(monkeypatch, dt.timedelta(days=8))
    code, report = _doctor()
    backup = _check(report, "backup")
    assert code == 1 and backup["status"] == "problem" and "8 days old" in backup["summary"]
    anchor = _check(report, "audit-anchor")
    assert anchor["status"] == "warning" and "8 days old" in anchor["summary"]
    assert anchor["remedy"] is not None and "medai audit anchor" in anchor["remedy"]
    # The age that counts as stale is a setting.
    monkeypatch.setenv("MEDAI_AUDIT_ANCHOR_STALE_HOURS", str(24 * 9))
    _, report = _doctor()
    assert _check(report, "audit-anchor")["status"] == "ok"


def test_a_clock_behind_the_catalog_is_a_warning(
    healthy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A campaign running for a while (a clock before its creation is the next case).
    engine = create_engine_for(healthy.resolved_database_url)
    with session_factory(engine).begin() as session:
        session.execute(update(Campaign).values(created_at=utcnow() - dt.timedelta(days=30)))
    engine.dispose()
    _clock(monkeypatch, dt.timedelta(minutes=-10))
    code, report = _doctor()
    check = _check(report, "clock")
    assert code == 0 and check["status"] == "warning"
    assert "behind" in check["summary"] and " minutes" in check["summary"]
    assert "clock" in check["remedy"]
    _clock(monkeypatch, dt.timedelta(days=-400))
    _, report = _doctor()
    check = _check(report, "clock")
    assert check["status"] == "problem" and "before the campaign's creation" in check["summary"]


@SQLITE_ONLY
def test_little_free_disk(healthy: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 1024**3
    monkeypatch.setattr(doctor, "_disk_usage", lambda path: (1000 * gib, 4 * gib))
    code, report = _doctor()
    assert code == 0 and _check(report, "disk")["status"] == "warning"
    monkeypatch.setattr(doctor, "_disk_usage", lambda path: (1000 * gib, gib // 2))
    code, report = _doctor()
    assert code == 1 and _check(report, "disk")["status"] == "problem"


@SQLITE_ONLY
def test_a_plaintext_listener_on_every_interface_is_named(healthy: Settings) -> None:
    exposed = Listener("--host", "0.0.0.0")
    try:
        code, report = _doctor()
    finally:
        exposed.stop()
    check = _check(report, "listeners")
    assert code == 0 and check["status"] == "warning"
    assert check["summary"] == (
        "plaintext on a non-loopback address: "
        f"medai collect listen (pid {exposed.process.pid}) on 0.0.0.0:{exposed.port}"
    )
    assert "--tls-cert" in check["remedy"]
    assert check["details"]["sockets"] == [
        {"pid": exposed.process.pid, "command": "medai collect listen", "address": "0.0.0.0",
         "port": exposed.port, "tls": False, "loopback": False}
    ]  # fmt: skip
    _, report = _doctor()  # stopped: nothing listens
    assert _check(report, "listeners")["status"] == "ok"


def _fake_proc(tmp_path: Path, processes: list[tuple[list[str], dict[str, str], int]]) -> Path:
    """A /proc holding two listening sockets (IPv4 any:11112, IPv6 ::1:8000) and processes."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"  # noqa: E501
    (proc / "net" / "tcp").write_text(
        header
        + "   0: 00000000:2B68 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 4242 1\n"  # noqa: E501
        "   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000 0 5555 1\n"  # noqa: E501
    )
    (proc / "net" / "tcp6").write_text(
        header
        + "   0: 00000000000000000000000001000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 4343 1\n"  # noqa: E501
    )
    for pid, (argv, env, inode) in enumerate(processes, start=100):
        folder = proc / str(pid)
        (folder / "fd").mkdir(parents=True)
        (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (folder / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
        (folder / "fd" / "3").symlink_to(f"socket:[{inode}]")
        (folder / "fd" / "4").symlink_to("/dev/null")
    return proc


def test_sockets_are_read_from_proc(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    env = {"MEDAI_HOME": str(tmp_path / "home")}
    proc = _fake_proc(
        tmp_path,
        [
            (["/venv/bin/python", "/venv/bin/medai", "-v", "collect", "listen", "--port", "11112"],
             env, 4242),
            (["python", "-m", "medai.cli", "serve", "--host", "::1", "--tls-cert", "c.pem"],
             env, 4343),
            # Another home's listener, and a process that is not medai.
            (["medai", "edge", "run"], {"MEDAI_HOME": str(tmp_path / "other")}, 4242),
            (["nginx", "-g", "daemon off;"], env, 4242),
        ],
    )  # fmt: skip
    found = doctor.listening_medai_sockets(settings, proc=proc)
    assert found == [
        doctor.Listening(101, "medai serve", "::1", 8000, tls=True),
        doctor.Listening(100, "medai collect listen", "0.0.0.0", 11112, tls=False),
    ]
    assert [s.loopback for s in found] == [True, False]
    assert doctor.listening_medai_sockets(settings, proc=tmp_path / "no-proc") is None


# -- an inference-only deployment (MEDAI_SERVE_CAMPAIGN=false) ------------------------------


@pytest.fixture
def inference_only(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A home of an inference-only service: an API key (which migrates the catalog) and an
    audit anchor; no campaign, no campaign key (and no `medai backup`: it needs a campaign)."""
    monkeypatch.setenv("MEDAI_SERVE_CAMPAIGN", "false")
    settings.resolved_home.mkdir(mode=0o700)
    for args in (("keys", "create", "--role", "admin", "--name", "ops"), ("audit", "anchor")):
        code, output = _invoke(*args)
        assert code == 0, output
    assert _invoke("backup", "create", str(tmp_path / "backups"))[0] != 0
    assert not settings.resolved_key_file.exists()
    return settings


@SQLITE_ONLY
def test_an_inference_only_home_passes_without_a_campaign(
    inference_only: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = _invoke("doctor")
    assert code == 0, output
    assert output.strip().splitlines()[-1] == "0 problems, 1 warning"
    code, report = _doctor()
    assert code == 0 and report["problems"] == 0 and report["warnings"] == 1
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses == dict.fromkeys(CHECKS, "ok") | dict.fromkeys(
        ["campaign-key", "key-escrow"], "skipped"
    ) | {"backup": "warning"}
    backup = _check(report, "backup")
    assert "campaign deployments only" in backup["summary"] and "pg_dump" in backup["remedy"]
    for name in ("campaign-key", "key-escrow"):
        assert "MEDAI_SERVE_CAMPAIGN=false" in _check(report, name)["summary"]
    assert "no campaign" in _check(report, "database")["summary"]

    # The same home read as a campaign deployment (the default): its campaign is missing.
    monkeypatch.delenv("MEDAI_SERVE_CAMPAIGN")
    code, report = _doctor()
    database = _check(report, "database")
    assert code == 1 and database["status"] == "problem"
    assert "holds no campaign" in database["summary"]
    assert database["remedy"] == "run `medai campaign init CAMPAIGN.toml`"
    assert _check(report, "campaign-key")["status"] == "skipped"


@SQLITE_ONLY
def test_an_inference_only_home_still_needs_a_migrated_catalog(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDAI_SERVE_CAMPAIGN", "false")
    code, report = _doctor()  # no catalog yet: set up by the keys commands, not a campaign
    database = _check(report, "database")
    assert code == 1 and database["status"] == "problem"
    assert database["remedy"] == "run `medai keys create --role admin --name NAME`"
    home = _check(report, "home")
    assert (
        home["remedy"] == f"check MEDAI_HOME, or create it: `mkdir -m 700 {settings.resolved_home}`"
    )
    assert _check(report, "campaign-key")["status"] == "skipped"
    assert "needs the catalog" in _check(report, "campaign-key")["summary"]

    assert _invoke("keys", "create", "--role", "admin", "--name", "ops")[0] == 0
    command.downgrade(alembic_config(url=settings.resolved_database_url), "-1")
    code, report = _doctor()
    database = _check(report, "database")
    assert code == 1 and database["status"] == "problem" and "behind" in database["summary"]
    assert database["remedy"] is not None and "`medai keys list`" in database["remedy"]
    # The remedy it names does migrate it.
    assert _invoke("keys", "list")[0] == 0
    _, report = _doctor()
    assert _check(report, "database")["status"] == "ok"
    assert _check(report, "campaign-key")["status"] == "skipped"


@SQLITE_ONLY
def test_a_campaign_in_the_catalog_keeps_its_key_checked(
    healthy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The web service serves no campaign, but the catalog holds one (collected into by
    # `medai collect listen`, say): its key is still needed, and checked.
    monkeypatch.setenv("MEDAI_SERVE_CAMPAIGN", "false")
    code, report = _doctor()
    assert code == 0 and _check(report, "campaign-key")["status"] == "ok"
    assert _check(report, "key-escrow")["status"] == "ok"
    healthy.resolved_key_file.unlink()
    code, report = _doctor()
    check = _check(report, "campaign-key")
    assert code == 1 and check["status"] == "problem" and "missing" in check["summary"]
