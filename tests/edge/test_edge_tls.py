"""An edge forwards to a centre served over HTTPS, trusting the certificate of its site kit only.

The centre is the app under uvicorn with a self-signed certificate (as a campaign without a
public CA would run it); the kit carries that certificate, and the edge's client trusts it
and nothing else: the same edge without it, or with another centre's, sends nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from medai.audit import actors
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Instance, SiteHeartbeat
from medai.config import Settings
from medai.edge.forwarder import Forwarder
from medai.edge.heartbeat import Heartbeat
from medai.edge.kit import EdgeConfig, init_edge, load_edge_config, open_kit, write_kit
from medai.edge.outbox import Outbox, outbox_path
from medai.serving.app import create_app
from medai.store import ObjectStore
from tests.edge.helpers import ct_instances, ingest
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import free_port

PASSPHRASE = "correct horse battery staple"


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class HttpsCentre:
    """``medai serve``'s app under uvicorn with TLS, in a thread, on a free loopback port."""

    def __init__(self, settings: Settings, cert: Path, key: Path) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings.model_copy(update={"serve_model": ""})),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> HttpsCentre:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "no HTTPS centre"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)


def _centre_uids(settings: Settings) -> set[str]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            return set(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_edge_forwards_over_https_trusting_the_kit_certificate_only(
    settings: Settings, tmp_path: Path
) -> None:
    init_example_campaign(settings)
    cert, key = self_signed(tmp_path / "tls", "centre")
    other_cert, _ = self_signed(tmp_path / "tls", "impostor")
    with HttpsCentre(settings, cert, key) as centre:
        engine = create_engine_for(settings.resolved_database_url)
        kit = tmp_path / "site-a.kit"
        write_kit(settings, engine, "site-a", kit, PASSPHRASE, centre_url=centre.url,
                  certificate=cert.read_text(), actor=actors.operator())  # fmt: skip
        engine.dispose()
        edge_home = tmp_path / "edge"
        edge = Settings(home=edge_home, database_url=f"sqlite:///{edge_home / 'catalog.db'}")
        init_edge(edge, open_kit(kit.read_bytes(), PASSPHRASE), actor=actors.operator())
        config = load_edge_config(edge_home)
        assert config.certificate is not None
        assert config.certificate.read_text() == cert.read_text()
        assert ingest(edge, ct_instances(5, tag="tls")) == ["stored"] * 5
        edge_engine = create_engine_for(edge.resolved_database_url)
        store = ObjectStore(edge.resolved_store_dir)
        with Outbox(outbox_path(edge_home)) as outbox:
            outbox.fill(edge_engine)
            batch = outbox.next_batch(max_instances=32, max_bytes=10**9)
            # Without the kit's certificate (the system's CAs), or with another one: refused
            # before anything is sent; nothing acknowledged.
            untrusting = [
                EdgeConfig(config.site, config.centre_url, None, config.api_key_file),
                EdgeConfig(config.site, config.centre_url, other_cert, config.api_key_file),
            ]
            for wrong in untrusting:
                with wrong.client() as client:
                    result = Forwarder(outbox, store, client, "site-a").send_batch(batch)
                assert (result.acknowledged, result.error) == (0, "ConnectError")
            assert outbox.stats().depth == 5 and _centre_uids(settings) == set()

            with config.client() as client:
                forwarder = Forwarder(outbox, store, client, "site-a")
                result = forwarder.send_batch(batch)
                assert result.ok and result.acknowledged == 5
                keys = forwarder.post_study_keys()  # the study keys travel the same way
                assert keys is not None and keys.ok and keys.acknowledged == 2
                answer = Heartbeat(outbox, edge_engine, client).beat()
            assert outbox.stats().depth == 0
            assert _centre_uids(settings) == {i.sop_instance_uid for i in batch}
            assert answer is not None and answer["site"] == "site-a"
            assert sum(day["count"] for day in answer["receipts"].values()) == 5
        edge_engine.dispose()
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        assert session.get(SiteHeartbeat, "site-a") is not None
    engine.dispose()
