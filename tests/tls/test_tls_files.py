"""medai.tls: contexts from PEM files, the errors that name the file, client identities."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from medai.errors import TlsError
from medai.tls import (
    is_loopback,
    parse_client_identity,
    peer_matches,
    plaintext_warning,
    resolve_files,
    server_context,
)
from tests.utils.certs import TestCA


def test_server_context_names_the_file_at_fault(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server, other = ca.issue("centre", server=True), ca.issue("other", server=True)
    assert server_context(server.cert, server.key, ca=ca.cert, require_client_cert=True)
    with pytest.raises(TlsError, match=f"the TLS certificate {tmp_path / 'x.pem'} does not"):
        server_context(tmp_path / "x.pem", server.key)
    with pytest.raises(TlsError, match="does not belong to the certificate"):
        server_context(server.cert, other.key)
    with pytest.raises(TlsError, match="is not a regular file"):
        server_context(server.cert, tmp_path)
    with pytest.raises(TlsError, match="client CA file .* is not a PEM file"):
        (tmp_path / "ca.der").write_bytes(b"\x30\x82")
        server_context(server.cert, server.key, ca=tmp_path / "ca.der")
    with pytest.raises(TlsError, match="needs the CA"):
        server_context(server.cert, server.key, require_client_cert=True)


def test_options_fall_back_to_settings_and_come_in_pairs(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert resolve_files(None, None, None, None) is None
    files = resolve_files(None, None, None, None, defaults=(cert, key, None, False))
    assert files is not None and (files.cert, files.key, files.ca) == (cert, key, None)
    with pytest.raises(TlsError, match="--tls-key"):
        resolve_files(cert, None, None, None)
    with pytest.raises(TlsError, match="client certificates need TLS"):
        resolve_files(None, None, tmp_path / "ca.pem", None)


def test_client_identities_match_fingerprint_or_common_name(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    stmary, riverside = ca.issue("stmary-pacs"), ca.issue("riverside-pacs")
    der = x509.load_pem_x509_certificate(stmary.cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    openssl_style = "SHA256:" + ":".join(
        stmary.fingerprint[7:][i : i + 2].upper() for i in range(0, 64, 2)
    )
    assert parse_client_identity(openssl_style) == stmary.fingerprint
    assert peer_matches(der, [stmary.fingerprint])
    assert not peer_matches(der, [riverside.fingerprint])
    assert peer_matches(der, [parse_client_identity("cn = stmary-pacs")])
    assert not peer_matches(der, ["CN=riverside-pacs"]) and not peer_matches(None, ["CN=x"])
    for bad in ("sha256:abc", "md5:" + "0" * 32, "O=St Mary", "CN="):
        with pytest.raises(ValueError):
            parse_client_identity(bad)


def test_plaintext_warning_only_off_loopback() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host) and plaintext_warning(host, 1, "HTTP", "--tls-cert") is None
    for host in ("0.0.0.0", "::", "10.0.0.5", "centre.example"):
        warning = plaintext_warning(host, 8000, "HTTP", "--tls-cert")
        assert warning is not None and warning.startswith(f"WARNING: HTTP on {host}:8000")
