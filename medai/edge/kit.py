"""Site kits: everything an edge needs, written at the centre and read at the hospital.

A kit is one JSON file (mode 0600)::

    {"format": "medai-site-kit/1", "site": "site-a",
     "campaign": "<the campaign definition as TOML>",
     "key_escrow": {... the campaign key's escrow, medai.keyfile ...},
     "centre_url": "https://centre.example:8000", "centre_certificate": "<PEM>" | null,
     "api_key": {... the site's edge API key, sealed under the same passphrase ...}}

The campaign key travels in the escrow of ``medai campaign key export`` (scrypt + AES-256-GCM,
:mod:`medai.keyfile`); the edge API key is sealed the same way under the same passphrase
(its own salt and nonce). The site id, campaign name and key fingerprint are authenticated
data of both, so an edited kit does not open. ``medai edge init KIT`` sets an edge home up
from it: the campaign (as ``medai campaign init`` would), the key restored (never over
another), ``edge/edge.toml`` with the site, the centre's URL and certificate, and the API key
in ``edge/api.key`` (0600), since the edge runs unattended.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.errors import EdgeError, KeyEscrowError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from medai.config import Settings

__all__ = [
    "KIT_FORMAT",
    "EdgeConfig",
    "InitOutcome",
    "KitContents",
    "definition_toml",
    "init_edge",
    "load_edge_config",
    "open_kit",
    "write_kit",
]

logger = logging.getLogger(__name__)

KIT_FORMAT = "medai-site-kit/1"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_SEAL_FIELDS = ("kdf", "n", "r", "p", "salt", "nonce")


def edge_dir(home: Path) -> Path:
    """The folder of an edge home's own files (outbox, edge.toml, api.key)."""
    return home / "edge"


# -- TOML ------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        fields = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(fields) + "}"
    raise EdgeError(f"cannot write a {type(value).__name__} in a site kit's campaign")


def definition_toml(document: dict[str, Any]) -> str:
    """A campaign definition (its JSON form, as the catalog keeps it) as TOML text.

    Nulls are left out (TOML has none; the definition's defaults are null), tables are inline.
    """
    lines = ["# The campaign definition, written by `medai campaign site-kit`."]
    for key, value in document.items():
        if value is not None:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# -- sealing the API key ---------------------------------------------------------------------


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _associated(site: str, campaign: str, fingerprint: str, seal: dict[str, Any]) -> bytes:
    header = {k: seal[k] for k in _SEAL_FIELDS} | {
        "site": site,
        "campaign": campaign,
        "fingerprint": fingerprint,
    }
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _seal(
    secret: bytes, passphrase: str, *, site: str, campaign: str, fingerprint: str
) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    seal: dict[str, Any] = {
        "kdf": "scrypt",
        "n": _SCRYPT_N,
        "r": _SCRYPT_R,
        "p": _SCRYPT_P,
        "salt": base64.b64encode(salt).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
    }
    cipher = AESGCM(_derive(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))
    sealed = cipher.encrypt(nonce, secret, _associated(site, campaign, fingerprint, seal))
    seal["ciphertext"] = base64.b64encode(sealed).decode("ascii")
    return seal


def _open(seal: Any, passphrase: str, *, site: str, campaign: str, fingerprint: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        if not isinstance(seal, dict) or seal.get("kdf") != "scrypt":
            raise ValueError("not a sealed value")
        n, r, p = int(seal["n"]), int(seal["r"]), int(seal["p"])
        if not (2**14 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("scrypt parameters out of range")
        salt = base64.b64decode(seal["salt"], validate=True)
        nonce = base64.b64decode(seal["nonce"], validate=True)
        sealed = base64.b64decode(seal["ciphertext"], validate=True)
        cipher = AESGCM(_derive(passphrase, salt, n, r, p))
        return cipher.decrypt(nonce, sealed, _associated(site, campaign, fingerprint, seal))
    except InvalidTag:
        raise KeyEscrowError(
            "the passphrase is wrong, or the site kit was altered: nothing was set up"
        ) from None
    except (KeyError, ValueError, TypeError, binascii.Error):
        raise EdgeError(
            "the site kit is damaged (its API key does not decode); ask for a new kit"
        ) from None


# -- writing (at the centre) -----------------------------------------------------------------


def write_kit(
    settings: Settings,
    engine: Engine,
    site: str,
    out: Path,
    passphrase: str,
    *,
    centre_url: str,
    certificate: str | None,
    actor: str,
) -> dict[str, Any]:
    """Create an ``edge`` key for ``site`` and write its kit to the new file ``out`` (0600).

    Audited as ``apikey.create`` (by :func:`medai.serving.keys.create_key`) and
    ``campaign.site-kit`` (site, key name, fingerprint, file; never a secret). Returns a summary
    (site, key name and prefix, fingerprint, file).

    Raises
    ------
    KeyEscrowError
        If the passphrase is too short.
    EdgeError
        If the site is not the campaign's, or ``out`` exists.
    KeyMismatch, KeyFileError, CampaignError
        If the campaign key is not the catalog's, or there is no campaign.
    """
    from sqlalchemy import select

    from medai.audit import append_audit, audited_transaction
    from medai.catalog.db import session_factory
    from medai.catalog.models import Campaign
    from medai.collection.key_guard import MIN_PASSPHRASE, campaign_key
    from medai.keyfile import escrow_key, key_fingerprint
    from medai.serving.keys import create_key

    if len(passphrase) < MIN_PASSPHRASE:
        raise KeyEscrowError(
            f"the passphrase is shorter than {MIN_PASSPHRASE} characters: choose a longer one "
            "(a few unrelated words)"
        )
    out = Path(out)
    if out.exists():
        raise EdgeError(f"{out} already exists; choose another --out (a kit is never overwritten)")
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        campaign = session.scalars(select(Campaign).order_by(Campaign.id)).first()
        if campaign is None:
            raise EdgeError("no campaign in this catalog: run `medai campaign init FILE` first")
        name, document = campaign.name, dict(campaign.definition)
    sites = [s.get("id") for s in document.get("sites", [])]
    if site not in sites:
        raise EdgeError(
            f"site {site!r} is not one of the campaign's sites ({', '.join(map(str, sites))})"
        )
    key = campaign_key(settings, engine, actor=actor)
    fingerprint = key_fingerprint(key)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    key_name = f"edge-{site}-{stamp}-{secrets.token_hex(2)}"[:64]
    created = create_key(engine, name=key_name, role="edge", site_id=site, actor=actor)
    kit = {
        "format": KIT_FORMAT,
        "site": site,
        "campaign": definition_toml(document),
        "key_escrow": json.loads(escrow_key(key, passphrase, campaign=name)),
        "centre_url": centre_url.rstrip("/"),
        "centre_certificate": certificate,
        "api_key": _seal(
            created.key.encode("utf-8"),
            passphrase,
            site=site,
            campaign=name,
            fingerprint=fingerprint,
        ),
    }
    data = (json.dumps(kit, indent=2) + "\n").encode("utf-8")
    summary = {
        "site": site,
        "campaign": name,
        "api_key_name": key_name,
        "api_key_prefix": created.info.prefix,
        "fingerprint": fingerprint,
        "kit": str(out.absolute()),
        "centre_url": kit["centre_url"],
    }
    with audited_transaction(engine) as session:
        append_audit(
            session,
            actor=actor,
            action="campaign.site-kit",
            subject=site,
            details={k: summary[k] for k in ("api_key_name", "fingerprint", "kit", "centre_url")},
        )
        # Written inside the transaction: no kit exists that the audit log does not name.
        _write_private(out, data, what="kit")
    logger.info("site kit for %s written to %s", site, out)
    return summary


def _write_private(path: Path, data: bytes, *, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EdgeError(f"{path} already exists; the {what} is never overwritten") from None
    except OSError as exc:
        raise EdgeError(f"cannot write {path} ({exc.strerror}); check the folder") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading (at the edge) -------------------------------------------------------------------


@dataclass(frozen=True)
class KitContents:
    """An opened kit."""

    site: str
    campaign_name: str
    campaign_toml: str
    key: bytes
    fingerprint: str
    centre_url: str
    centre_certificate: str | None
    api_key: str


def read_kit_document(data: bytes) -> dict[str, Any]:
    """The kit's JSON, checked for shape (nothing is decrypted).

    Raises
    ------
    EdgeError
        If ``data`` is not a site kit this medai reads.
    """
    from medai.keyfile import read_escrow_header

    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or document.get("format") != KIT_FORMAT:
        raise EdgeError(
            f"this is not a medai site kit ({KIT_FORMAT}, made by `medai campaign site-kit`)"
        )
    for name, kind in (("site", str), ("campaign", str), ("centre_url", str), ("api_key", dict)):
        if not isinstance(document.get(name), kind):
            raise EdgeError(f"the site kit lacks its {name!r}; ask the centre for a new kit")
    if not isinstance(document.get("key_escrow"), dict):
        raise EdgeError("the site kit lacks its key escrow; ask the centre for a new kit")
    read_escrow_header(json.dumps(document["key_escrow"]).encode("utf-8"))
    certificate = document.get("centre_certificate")
    if certificate is not None and not isinstance(certificate, str):
        raise EdgeError("the site kit's centre certificate is not PEM text")
    return document


def open_kit(data: bytes, passphrase: str) -> KitContents:
    """Open a kit with its passphrase.

    Raises
    ------
    EdgeError
        A file that is no kit, or a damaged one.
    KeyEscrowError
        Wrong passphrase, or an altered kit.
    """
    from medai.keyfile import key_fingerprint, open_escrow

    document = read_kit_document(data)
    escrow = json.dumps(document["key_escrow"]).encode("utf-8")
    try:
        key = open_escrow(escrow, passphrase)
    except KeyEscrowError as exc:
        raise KeyEscrowError(str(exc).replace("key escrow file", "site kit")) from None
    campaign = str(document["key_escrow"]["campaign"])
    fingerprint = key_fingerprint(key)
    api_key = _open(
        document["api_key"],
        passphrase,
        site=document["site"],
        campaign=campaign,
        fingerprint=fingerprint,
    ).decode("utf-8")
    return KitContents(
        site=document["site"],
        campaign_name=campaign,
        campaign_toml=document["campaign"],
        key=key,
        fingerprint=fingerprint,
        centre_url=document["centre_url"],
        centre_certificate=document.get("centre_certificate"),
        api_key=api_key,
    )


@dataclass(frozen=True)
class EdgeConfig:
    """An edge home's ``edge/edge.toml``: who it is and where its centre is."""

    site: str
    centre_url: str
    certificate: Path | None
    api_key_file: Path

    def api_key(self) -> str:
        """The edge's API key, read from its 0600 file.

        Raises
        ------
        EdgeError
            If the file is missing or empty.
        """
        try:
            key = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EdgeError(
                f"cannot read the edge API key {self.api_key_file} ({exc.__class__.__name__}); "
                "run `medai edge init KIT` again"
            ) from None
        if not key:
            raise EdgeError(f"the edge API key file {self.api_key_file} is empty")
        return key

    def client(self, *, timeout: float = 60.0) -> Any:
        """An ``httpx.Client`` on the centre with the edge key (and the kit's certificate)."""
        import ssl

        import httpx

        # The kit's certificate is the only trust anchor of a centre that has one.
        verify: Any = (
            ssl.create_default_context(cafile=str(self.certificate)) if self.certificate else True
        )
        return httpx.Client(
            base_url=self.centre_url,
            headers={"Authorization": f"Bearer {self.api_key()}"},
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )


def load_edge_config(home: Path) -> EdgeConfig:
    """The edge configuration of ``home``.

    Raises
    ------
    EdgeError
        If this home was never set up as an edge, or its edge.toml is broken.
    """
    from medai.tomlfile import read_toml

    path = edge_dir(home) / "edge.toml"
    if not path.exists():
        raise EdgeError(
            f"{home} is not set up as an edge (no {path}); run `medai edge init KIT` with the "
            "site kit from the centre"
        )
    data = read_toml(path, error=EdgeError, missing="no edge configuration")
    try:
        site, url = str(data["site"]), str(data["centre_url"])
        key_file = Path(str(data["api_key_file"]))
    except KeyError as exc:
        raise EdgeError(
            f"{path}: {exc.args[0]} is missing; run `medai edge init KIT` again"
        ) from None
    certificate = data.get("certificate")
    return EdgeConfig(
        site=site,
        centre_url=url,
        certificate=Path(str(certificate)) if certificate else None,
        api_key_file=key_file,
    )


@dataclass(frozen=True)
class InitOutcome:
    """What ``medai edge init`` did."""

    site: str
    campaign: str
    fingerprint: str
    key_file: Path
    key_written: bool
    config: Path
    centre_url: str
    certificate: Path | None


def init_edge(settings: Settings, kit: KitContents, *, actor: str) -> InitOutcome:
    """Set the home of ``settings`` up as the edge of ``kit``'s site.

    The campaign is set up from the kit's definition with the kit's key (restored to
    MEDAI_KEY_FILE first; an existing file with another key is refused, and a catalog that
    already serves another key refuses it too), then ``edge/edge.toml``, ``edge/api.key``
    (0600) and the certificate are written. Running it again with a kit of the same site
    updates the URL, certificate and key; audited as ``edge.init``.

    Raises
    ------
    EdgeError
        A kit whose definition does not name its site, or another site's edge home.
    CampaignError, KeyFileError, KeyMismatch
        From the campaign set-up.
    """
    from medai.audit import append_audit, audited_transaction
    from medai.catalog.db import create_engine_for
    from medai.collection.campaign.definition import load_campaign
    from medai.collection.campaign.setup import init_campaign
    from medai.keyfile import restore_key_file

    home = settings.resolved_home
    folder = edge_dir(home)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path = folder / "edge.toml"
    if config_path.exists():
        current = load_edge_config(home)
        if current.site != kit.site:
            raise EdgeError(
                f"this home is already the edge of site {current.site!r}, not {kit.site!r}: "
                "use another MEDAI_HOME"
            )
    definition_path = folder / "campaign.toml"
    definition_path.write_text(kit.campaign_toml, encoding="utf-8")
    definition = load_campaign(definition_path)
    if definition.name != kit.campaign_name or definition.site(kit.site) is None:
        raise EdgeError("the site kit's campaign does not match its key or site; ask for a new kit")
    written = restore_key_file(settings.resolved_key_file, kit.key)
    init_campaign(definition, settings, actor=actor)

    certificate: Path | None = None
    if kit.centre_certificate:
        certificate = folder / "centre.pem"
        certificate.write_text(kit.centre_certificate, encoding="utf-8")
    key_file = folder / "api.key"
    temporary = folder / f".api.key.{secrets.token_hex(4)}"
    _write_private(temporary, (kit.api_key + "\n").encode("utf-8"), what="API key")
    os.replace(temporary, key_file)
    lines = [
        "# This home is a medai edge gateway; written by `medai edge init`.",
        f"site = {json.dumps(kit.site)}",
        f"centre_url = {json.dumps(kit.centre_url)}",
        f"api_key_file = {json.dumps(str(key_file))}",
    ]
    if certificate is not None:
        lines.append(f"certificate = {json.dumps(str(certificate))}")
    temporary = folder / f".edge.toml.{secrets.token_hex(4)}"
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, config_path)

    engine = create_engine_for(settings.resolved_database_url)
    try:
        with audited_transaction(engine) as session:
            append_audit(
                session,
                actor=actor,
                action="edge.init",
                subject=kit.site,
                details={
                    "campaign": kit.campaign_name,
                    "fingerprint": kit.fingerprint,
                    "centre_url": kit.centre_url,
                    "key_file_written": written,
                },
            )
    finally:
        engine.dispose()
    return InitOutcome(
        site=kit.site,
        campaign=kit.campaign_name,
        fingerprint=kit.fingerprint,
        key_file=settings.resolved_key_file,
        key_written=written,
        config=config_path,
        centre_url=kit.centre_url,
        certificate=certificate,
    )
