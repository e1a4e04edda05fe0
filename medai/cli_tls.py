"""The TLS options that ``medai collect listen``, ``medai edge run`` and ``medai serve`` share.

Each option falls back to its setting (``MEDAI_TLS_CERT_FILE``, ``MEDAI_TLS_KEY_FILE``,
``MEDAI_TLS_CA_FILE``, ``MEDAI_TLS_REQUIRE_CLIENT_CERT``); :func:`listener_tls` turns them into
:class:`~medai.tls.TlsFiles` (or None for plaintext), checking the files before anything is
bound, and :func:`warn_plaintext` prints the start-up warning of a plaintext listener on a
network address.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medai.cli_support import err_console, fail, plain

if TYPE_CHECKING:
    from medai.config import Settings
    from medai.tls import TlsFiles

__all__ = [
    "RequireClientCertOption",
    "TlsCaOption",
    "TlsCertOption",
    "TlsKeyOption",
    "listener_tls",
    "warn_plaintext",
]

TlsCertOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert",
        metavar="PEM",
        help="Serve over TLS with this certificate (chain); default MEDAI_TLS_CERT_FILE.",
    ),
]
TlsKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-key",
        metavar="PEM",
        help="The certificate's unencrypted private key; default MEDAI_TLS_KEY_FILE.",
    ),
]
TlsCaOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca",
        metavar="PEM",
        help="CA signing the clients' certificates: asked for, verified when given; "
        "default MEDAI_TLS_CA_FILE.",
    ),
]
RequireClientCertOption = Annotated[
    bool | None,
    typer.Option(
        "--require-client-cert/--no-require-client-cert",
        help="Refuse clients without a certificate signed by --tls-ca; default "
        "MEDAI_TLS_REQUIRE_CLIENT_CERT.",
        show_default=False,
    ),
]


def listener_tls(
    settings: Settings,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    require_client_cert: bool | None,
) -> TlsFiles | None:
    """The listener's TLS files (None: plaintext), each file checked; exits on a problem."""
    from medai.errors import TlsError
    from medai.tls import resolve_files

    defaults = (
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_ca_file,
        settings.tls_require_client_cert,
    )
    try:
        files = resolve_files(cert, key, ca, require_client_cert, defaults=defaults)
        if files is not None:
            files.server_context()  # every file read now, before anything is bound
    except TlsError as exc:
        raise fail(exc) from None
    return files


def warn_plaintext(host: str, port: int, what: str) -> None:
    """Print (on stderr) the warning of a plaintext listener on a network address."""
    from medai.tls import plaintext_warning

    warning = plaintext_warning(host, port, what, "--tls-cert and --tls-key")
    if warning is None:
        return
    err_console().print(plain(warning, "yellow"), soft_wrap=True)
