"""``medai campaign key export|import``: the campaign key's escrow, encrypted under a passphrase."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medai.cli_support import (
    JsonFlag,
    console,
    fail,
    plain,
    print_json,
    read_passphrase_file,
    require_campaign,
)

__all__ = ["key_app"]

key_app = typer.Typer(
    name="key",
    help="Keep the campaign key safe: export it encrypted (an escrow) and restore it from one.",
    no_args_is_help=True,
)

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        metavar="FILE",
        help="Read the passphrase from the first line of FILE instead of a hidden prompt "
        "(for scripts; keep FILE as private as the key).",
    ),
]


def _passphrase(path: Path | None, *, confirm: bool) -> str:
    # Never an option value: command lines end up in shell histories and `ps` listings.
    if path is None:
        text: str = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
        return text
    return read_passphrase_file(path)


@key_app.command("export")
def export_command(
    out: Annotated[
        Path,
        typer.Option("--out", metavar="FILE", help="Where to write the escrow (a new file)."),
    ],
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the campaign key, encrypted under a passphrase (scrypt + AES-256-GCM), to FILE.

    Keep FILE and the passphrase apart, and apart from the catalog backups.
    """
    from medai.audit import actors
    from medai.catalog.db import create_engine_for
    from medai.collection.key_guard import export_key
    from medai.config import get_settings
    from medai.errors import MedaiError

    settings = get_settings()
    require_campaign(settings)
    passphrase = _passphrase(passphrase_file, confirm=True)
    engine = create_engine_for(settings.resolved_database_url)
    try:
        fingerprint = export_key(settings, engine, out, passphrase, actors.operator())
    except MedaiError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if as_json:
        print_json({"escrow": out, "fingerprint": fingerprint})
        return
    console().print(plain(f"Key (fingerprint {fingerprint}) exported to {out}."), soft_wrap=True)
    console().print(
        plain(
            "Store it apart from the catalog backups; without the passphrase it cannot be "
            "restored. Restore with `medai campaign key import FILE`."
        ),
        soft_wrap=True,
    )


@key_app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="An escrow written by `medai campaign key export`."),
    ],
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore the campaign key file (MEDAI_KEY_FILE) from an escrow.

    Only this catalog's campaign key is restored; an existing key file is never overwritten.
    """
    from medai.audit import actors
    from medai.catalog.db import create_engine_for
    from medai.collection.key_guard import check_escrow, import_key
    from medai.config import get_settings
    from medai.errors import MedaiError

    settings = get_settings()
    require_campaign(settings)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file} ({exc.strerror})", "Check the path.") from None
    engine = create_engine_for(settings.resolved_database_url)
    try:
        fingerprint = check_escrow(engine, data)  # before asking for a passphrase
        passphrase = _passphrase(passphrase_file, confirm=False)
        written = import_key(settings, engine, data, passphrase, actors.operator())
    except MedaiError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    key_file = settings.resolved_key_file
    if as_json:
        print_json({"key_file": key_file, "fingerprint": fingerprint, "written": written})
        return
    verb = "restored" if written else "already in place (unchanged)"
    console().print(plain(f"Key (fingerprint {fingerprint}) {verb}: {key_file}"), soft_wrap=True)
