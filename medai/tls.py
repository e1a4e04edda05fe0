"""TLS for medai's listeners and clients: ssl contexts from PEM files, with errors that say which.

One place builds every :class:`ssl.SSLContext` medai uses, so the DICOM listeners
(``medai collect listen``, ``medai edge run``), the web service (``medai serve``, whose
files uvicorn loads itself but which are checked here first) and the clients (``medai
collect pull --ca-file``) fail the same way: one sentence naming the missing or unreadable
file, the file that is not PEM, or the key that does not belong to the certificate.

Client certificates. A server context given a CA file asks every client for a certificate
signed by that CA: optional by default (a client without one is still served), required
with ``require_client_cert``. A campaign site may pin its senders further with
``tls_clients`` (see :func:`parse_client_identity`): an association from one of the site's
AE titles is then accepted only over TLS, from a certificate whose SHA-256 fingerprint, or
whose subject's common name, is listed (:func:`peer_matches`).

Plaintext on the network. :func:`plaintext_warning` is the one start-up warning of a
listener bound, without TLS, to an address other than loopback.

This module sits in the bottom layer: it imports only the standard library, ``cryptography``
(for the subject of a peer's certificate) and :mod:`medai.errors`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medai.errors import TlsError

__all__ = [
    "TlsFiles",
    "certificate_fingerprint",
    "check_server_files",
    "client_context",
    "is_loopback",
    "parse_client_identity",
    "peer_matches",
    "plaintext_warning",
    "resolve_files",
    "server_context",
]

_HEX = re.compile(r"[0-9a-f]{64}")


def _readable(path: Path | str, what: str) -> Path:
    """``path`` if it is a regular file this process can read; else a :class:`TlsError`."""
    file = Path(path).expanduser()
    if not file.exists():
        raise TlsError(f"the {what} {file} does not exist")
    if not file.is_file():
        raise TlsError(f"the {what} {file} is not a regular file")
    try:
        with file.open("rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {file}: {exc.strerror}") from None
    if b"-----BEGIN " not in head:
        raise TlsError(f"the {what} {file} is not a PEM file (no '-----BEGIN' line)")
    return file


def _load_chain(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    cert_file = _readable(cert, "TLS certificate")
    key_file = _readable(key, "TLS private key")
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(
                f"the TLS private key {key_file} does not belong to the certificate {cert_file}"
            ) from None
        raise TlsError(
            f"cannot use the TLS certificate {cert_file} with the key {key_file}: "
            "check that both are PEM, the key unencrypted"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path | str, what: str) -> Path:
    ca_file = _readable(ca, what)
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError:
        raise TlsError(f"the {what} {ca_file} holds no usable PEM certificate") from None
    return ca_file


def server_context(
    cert: Path | str,
    key: Path | str,
    *,
    ca: Path | str | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server's TLS context (TLS 1.2 or later) from PEM files.

    Parameters
    ----------
    cert, key
        The server's certificate (chain) and its unencrypted private key.
    ca
        CA certificate(s) that sign the clients' certificates: clients are asked for one
        and it is verified when given.
    require_client_cert
        Refuse, during the handshake, a client that presents no certificate signed by
        ``ca`` (which it then needs).

    Raises
    ------
    TlsError
        A file missing, unreadable or not PEM, a key that is not the certificate's, or
        ``require_client_cert`` without ``ca``.
    """
    if require_client_cert and ca is None:
        raise TlsError(
            "requiring client certificates needs the CA that signs them (--tls-ca or "
            "MEDAI_TLS_CA_FILE)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if ca is not None:
        _load_ca(context, ca, "client CA file")
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def check_server_files(
    cert: Path | str,
    key: Path | str,
    *,
    ca: Path | str | None = None,
    require_client_cert: bool = False,
) -> None:
    """Check the files a server loads itself (uvicorn) as :func:`server_context` would.

    Raises
    ------
    TlsError
        See :func:`server_context`.
    """
    server_context(cert, key, ca=ca, require_client_cert=require_client_cert)


def client_context(ca: Path | str | None = None) -> ssl.SSLContext:
    """A client's TLS context: the server's certificate verified against ``ca``.

    Parameters
    ----------
    ca
        CA certificate(s) (or a self-signed server certificate) to trust instead of the
        system's; None: the system's CAs.

    Raises
    ------
    TlsError
        When ``ca`` is missing, unreadable or holds no PEM certificate.
    """
    if ca is None:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, ca, "CA file")
    return context


def certificate_fingerprint(der: bytes) -> str:
    """A certificate's identity as ``tls_clients`` lists it: ``sha256:<64 hex digits>``.

    The same digits as ``openssl x509 -noout -fingerprint -sha256`` prints, lower case and
    without the colons.
    """
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_client_identity(value: str) -> str:
    """One entry of a site's ``tls_clients``, normalized; ``ValueError`` when malformed.

    Two forms:

    * ``sha256:<fingerprint>``: one certificate, its SHA-256 fingerprint in hex, colons
      and case as ``openssl`` prints them or not (``sha256:3F:2A:...`` = ``sha256:3f2a...``);
      a renewed certificate has a new fingerprint.
    * ``CN=<common name>``: any certificate the client CA signed whose subject's common
      name is exactly this (survives renewals; as strong as the CA's issuing).

    Examples
    --------
    >>> parse_client_identity("SHA256:" + "AB:" * 31 + "AB")
    'sha256:abababababababababababababababababababababababababababababababab'
    >>> parse_client_identity(" CN=pacs.stmary.example ")
    'CN=pacs.stmary.example'
    """
    text = value.strip()
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() == "sha256":
        digits = rest.replace(":", "").strip().lower()
        if not _HEX.fullmatch(digits):
            raise ValueError(
                f"{text!r} is not a SHA-256 fingerprint (sha256: and 64 hex digits, colons allowed)"
            )
        return f"sha256:{digits}"
    name, equals, common = text.partition("=")
    if equals and name.strip().upper() == "CN" and common.strip():
        return f"CN={common.strip()}"
    raise ValueError(
        f"{text!r} is neither 'sha256:<fingerprint>' nor 'CN=<common name>' of a client certificate"
    )


def _common_names(der: bytes) -> set[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return set()
    return {
        str(attribute.value)
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    }


def peer_matches(der: bytes | None, identities: Iterable[str]) -> bool:
    """Whether a peer's verified certificate (DER; None: none) is one of ``identities``.

    ``identities`` are normalized entries (:func:`parse_client_identity`).
    """
    if der is None:
        return False
    wanted = set(identities)
    if certificate_fingerprint(der) in wanted:
        return True
    names = {entry[3:] for entry in wanted if entry.startswith("CN=")}
    return bool(names and names & _common_names(der))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind) is reachable from this machine only."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def plaintext_warning(host: str, port: int, what: str, option: str) -> str | None:
    """The start-up warning of a listener bound to ``host`` without TLS; None on loopback.

    Parameters
    ----------
    host, port
        The bound address.
    what
        What listens in plaintext, e.g. "DICOM (C-STORE)" or "HTTP".
    option
        What turns TLS on, e.g. "--tls-cert and --tls-key".
    """
    if is_loopback(host):
        return None
    return (
        f"WARNING: {what} on {host}:{port} is plaintext on a network address: anyone on "
        f"the path can read what is sent, API keys and images included. Give {option} "
        "(or MEDAI_TLS_CERT_FILE and MEDAI_TLS_KEY_FILE), or bind 127.0.0.1 behind a TLS proxy."
    )


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS listener, as given on the command line or by settings."""

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False

    def server_context(self) -> ssl.SSLContext:
        """See :func:`server_context`."""
        return server_context(
            self.cert, self.key, ca=self.ca, require_client_cert=self.require_client_cert
        )

    def describe(self) -> str:
        """How clients are treated, for a start-up line."""
        if self.require_client_cert:
            return "TLS, client certificate required"
        if self.ca is not None:
            return "TLS, client certificate verified when given"
        return "TLS"


def resolve_files(
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    require_client_cert: bool | None,
    *,
    defaults: tuple[Path | None, Path | None, Path | None, bool] = (None, None, None, False),
) -> TlsFiles | None:
    """The TLS files of a listener: each option given, else its default (the settings).

    Returns
    -------
    TlsFiles or None
        None: plaintext (neither a certificate nor a key).

    Raises
    ------
    TlsError
        A certificate without its key or the reverse, or a client CA or
        ``require_client_cert`` without a certificate; the files are not read yet.
    """
    cert = cert if cert is not None else defaults[0]
    key = key if key is not None else defaults[1]
    ca = ca if ca is not None else defaults[2]
    require = require_client_cert if require_client_cert is not None else defaults[3]
    if cert is None and key is None:
        if ca is not None or require:
            raise TlsError(
                "client certificates need TLS: give the server's --tls-cert and --tls-key "
                "(or MEDAI_TLS_CERT_FILE and MEDAI_TLS_KEY_FILE) too"
            )
        return None
    if cert is None or key is None:
        missing = (
            "--tls-cert (MEDAI_TLS_CERT_FILE)" if cert is None else "--tls-key (MEDAI_TLS_KEY_FILE)"
        )
        raise TlsError(f"TLS needs both a certificate and its key: {missing} is missing")
    return TlsFiles(Path(cert), Path(key), Path(ca) if ca is not None else None, require)
