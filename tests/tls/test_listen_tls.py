"""``medai collect listen`` over DICOM TLS, against dcmtk's storescu and echoscu.

The tests make their own CA (tests/utils/certs.py): a server certificate for the listener,
client certificates for the sites' senders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Instance
from medai.collection.campaign.definition import load_campaign
from medai.collection.campaign.setup import init_campaign
from medai.collection.receivers.cstore import REJECTED_ACTION
from medai.config import Settings
from tests.tls.helpers import TlsListener, dcmtk_tls, storescu
from tests.utils.campaign import EXAMPLE_CAMPAIGN, init_example_campaign
from tests.utils.certs import TestCA
from tests.utils.dicom_net import Listener

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("storescu") is None and not os.environ.get("CI"),
        reason="dcmtk is not installed (apt-get install dcmtk)",
    ),
]


def _instances(settings: Settings) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)
    finally:
        engine.dispose()


def _rejection_reasons(settings: Settings) -> list[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            records = session.scalars(
                select(AuditRecord).where(AuditRecord.action == REJECTED_ACTION)
            ).all()
            return sorted(str(record.details["reason"]) for record in records)
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_storescu_with_a_client_certificate_is_stored_and_without_one_refused(
    settings: Settings, tmp_path: Path
) -> None:
    init_example_campaign(settings)
    ca = TestCA(tmp_path / "tls")
    server, client = ca.issue("medai-centre", server=True), ca.issue("stmary-pacs")
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(ca.cert)]
    listener = TlsListener(*tls, "--require-client-cert", ready_tls=dcmtk_tls(ca.cert, client))
    try:
        sent = storescu(listener.port, dcmtk_tls(ca.cert, client))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert _instances(settings) == 1
        # TLS without a client certificate: refused in the handshake; plaintext: the same.
        anonymous = storescu(listener.port, dcmtk_tls(ca.cert, None))
        assert anonymous.returncode != 0
        plaintext = storescu(listener.port, [])
        assert plaintext.returncode != 0
        # A certificate from another CA is not trusted either.
        stranger = TestCA(tmp_path / "other", name="another CA").issue("stmary-pacs")
        forged = storescu(listener.port, dcmtk_tls(ca.cert, stranger))
        assert forged.returncode != 0
        assert _instances(settings) == 1
    finally:
        output = listener.stop()
    assert listener.process.returncode == 0, output
    assert "TLS, client certificate required" in output
    assert "plaintext on a network address" not in output
    reasons = _rejection_reasons(settings)
    assert "tls-client-certificate-missing" in reasons, reasons
    assert "tls-plaintext-client" in reasons, reasons
    assert "tls-client-certificate-untrusted" in reasons, reasons


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_site_bound_to_its_certificate_refuses_another_one(
    settings: Settings, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "tls")
    server = ca.issue("medai-centre", server=True)
    stmary, riverside = ca.issue("stmary-pacs"), ca.issue("riverside-pacs")
    # site-a's AE titles are bound to St Mary's certificate; site-b is bound to none.
    text = EXAMPLE_CAMPAIGN.read_text(encoding="utf-8").replace(
        'ae_titles = ["STMARY_PACS", "STMARY_CR1"]',
        f'ae_titles = ["STMARY_PACS", "STMARY_CR1"]\ntls_clients = ["{stmary.fingerprint}"]',
        1,
    )
    campaign = tmp_path / "campaign.toml"
    campaign.write_text(text, encoding="utf-8")
    init_campaign(load_campaign(campaign), settings)
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(ca.cert)]
    listener = TlsListener(*tls, ready_tls=dcmtk_tls(ca.cert, stmary))
    try:
        wrong = storescu(listener.port, dcmtk_tls(ca.cert, riverside), calling="STMARY_PACS")
        assert wrong.returncode != 0
        anonymous = storescu(listener.port, dcmtk_tls(ca.cert, None), calling="STMARY_CR1")
        assert anonymous.returncode != 0
        assert _instances(settings) == 0
        right = storescu(listener.port, dcmtk_tls(ca.cert, stmary), calling="STMARY_PACS")
        assert right.returncode == 0, right.stdout + right.stderr
        # An AE title of a site with no binding: any certificate of the CA, or none.
        other = storescu(listener.port, dcmtk_tls(ca.cert, None), calling="RIVERSIDE_PACS")
        assert other.returncode == 0, other.stdout + other.stderr
    finally:
        output = listener.stop()
    assert listener.process.returncode == 0, output
    assert _instances(settings) == 1  # the same instance twice: stored, then a duplicate
    assert _rejection_reasons(settings).count("client-certificate-not-allowed") >= 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_plaintext_on_a_network_address_is_warned_about(settings: Settings) -> None:
    init_example_campaign(settings)
    network = Listener("--host", "0.0.0.0")  # the last --host wins
    output = network.stop(timeout=30)
    assert "WARNING: DICOM (C-STORE) on 0.0.0.0" in output and "plaintext" in output
    loopback = Listener()
    output = loopback.stop(timeout=30)
    assert "plaintext on a network address" not in output and "(plaintext)" in output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_listen_names_a_missing_or_mismatched_tls_file(settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medai.cli import app

    init_example_campaign(settings)
    ca = TestCA(tmp_path / "tls")
    server, other = ca.issue("medai-centre", server=True), ca.issue("other", server=True)
    runner = CliRunner()
    missing = tmp_path / "nowhere.pem"
    result = runner.invoke(
        app, ["collect", "listen", "--tls-cert", str(missing), "--tls-key", str(server.key)]
    )
    assert result.exit_code != 0 and str(missing) in result.output
    assert "does not exist" in result.output
    result = runner.invoke(
        app, ["collect", "listen", "--tls-cert", str(server.cert), "--tls-key", str(other.key)]
    )
    assert result.exit_code != 0 and "does not belong to the certificate" in result.output
    result = runner.invoke(app, ["collect", "listen", "--tls-cert", str(server.cert)])
    assert result.exit_code != 0 and "--tls-key" in result.output
    result = runner.invoke(app, ["collect", "listen", "--require-client-cert"])
    assert result.exit_code != 0 and "client certificates need TLS" in result.output
