"""``medai doctor``: check one deployment and say, for each finding, what to do about it.

Each check answers ``ok``, ``warning`` or ``problem`` (``skipped`` when what it needs is not
there, e.g. the catalog) with one sentence and, unless all is well, one remedy (a command
where there is one). The checks only read: nothing here creates, changes or audits anything,
so a mistyped ``MEDAI_HOME`` gets a report, not an empty catalog.

What is checked, and why:

* ``home``, ``key-files``, ``quarantine``: file modes. The home holds the catalog and the key
  files (0700), a key file is 0600, the quarantine holds raw files with PHI (0700).
* ``database``: the catalog reachable and migrated to this medai's head revision.
* ``campaign-key``: the key file's fingerprint against the one the catalog records
  (:mod:`medai.collection.key_guard` refuses a mismatch; here it is found before an import
  is). ``key-escrow``: the key was exported to an escrow at least once.

An inference-only deployment (``MEDAI_SERVE_CAMPAIGN=false``) needs what ``/readyz`` needs
of it (:func:`medai.serving.health.readiness_problem`): a catalog migrated to head, for its
API keys and audit log, but no campaign. Its ``database`` check then accepts a catalog
without a campaign (and says how such a catalog is set up: ``medai keys create``), and the
campaign-only checks (:data:`CAMPAIGN_CHECKS`) are ``skipped``, saying why. Unless the
catalog holds a campaign after all: its key is then needed by whatever collects into it
(``medai collect listen``), whatever the web service serves, so it is checked.
* ``listeners``: the TCP sockets this machine listens on, owned by medai processes of this
  deployment (read from ``/proc``), that accept connections on a non-loopback address
  without TLS (a process started with ``--tls-cert``, or with a TLS certificate setting in
  its environment, counts as encrypted).
* ``backup``, ``audit-anchor``: the age of the newest ``backup.created`` and ``audit.anchored``
  audit records (``MEDAI_BACKUP_STALE_HOURS``, ``MEDAI_AUDIT_ANCHOR_STALE_HOURS``).
* ``disk``: free space where the store is (``MEDAI_MIN_FREE_DISK_GIB``, and 10 %).
* ``clock``: this machine's clock against the PostgreSQL server's ``now()``, against the
  newest audit record's time and against the campaign's creation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medai.audit.anchor import ANCHORED_ACTION

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from medai.catalog.db import CatalogState
    from medai.config import Settings

__all__ = [
    "ANCHOR_ACTION",
    "Check",
    "DoctorReport",
    "Listening",
    "Status",
    "listening_medai_sockets",
    "run_checks",
]

Status = Literal["ok", "warning", "problem", "skipped"]

ANCHOR_ACTION = ANCHORED_ACTION
"""Audit action ``medai audit anchor`` writes; its newest record is "the last anchor"."""

ESCROW_ACTION = "campaign.key-export"
"""Audit action of ``medai campaign key export`` (written by :mod:`medai.collection.key_guard`)."""

DEFAULT_BACKUP_STALE_HOURS = 26.0
"""Used until ``Settings.backup_stale_hours`` exists (the backup part adds it)."""

FREE_DISK_PERCENT = 10.0
"""Below this share of its filesystem free, the store's disk is a warning."""

CRITICAL_FREE_BYTES = 1024**3
"""Below 1 GiB free, writes will soon fail: a problem."""

CLOCK_SKEW_SECONDS = 60.0
"""A clock further off than this (from the database server, the audit log) is a warning."""

INIT_COMMAND = "medai campaign init CAMPAIGN.toml"

INFERENCE_INIT_COMMAND = "medai keys create --role admin --name NAME"
"""Sets an inference-only catalog up (the keys commands migrate it; no campaign needed)."""

CAMPAIGN_CHECKS = ("campaign-key", "key-escrow")
"""Checks only a deployment with a campaign needs (skipped for an inference-only one)."""

INFERENCE_ONLY = (
    "an inference-only deployment (MEDAI_SERVE_CAMPAIGN=false) with no campaign needs "
    "no campaign key"
)


@dataclass(frozen=True)
class Check:
    """One finding: its check, its status, one sentence, and what to do about it."""

    name: str
    status: Status
    summary: str
    remedy: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorReport:
    """Every check's finding for one deployment."""

    home: str
    database: str
    checked_at: dt.datetime
    checks: list[Check]

    @property
    def problems(self) -> int:
        return sum(check.status == "problem" for check in self.checks)

    @property
    def warnings(self) -> int:
        return sum(check.status == "warning" for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        """The report as ``medai doctor --json`` prints it."""
        return {
            "home": self.home,
            "database": self.database,
            "checked_at": self.checked_at.isoformat(),
            "ok": self.problems == 0,
            "problems": self.problems,
            "warnings": self.warnings,
            "checks": [dataclasses.asdict(check) for check in self.checks],
        }


def _utcnow() -> dt.datetime:
    """This machine's time (tests replace it to fake a wrong clock)."""
    return dt.datetime.now(dt.UTC)


def _age(seconds: float) -> str:
    """A duration in words: ``3 days``, ``5 hours``, ``12 minutes``."""
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{int(seconds)} second{'s' if int(seconds) != 1 else ''}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- permissions -----------------------------------------------------------------------------


def check_home(settings: Settings) -> Check:
    """The home: 0700 (no one else may list, read or replace the catalog and the keys)."""
    home = settings.resolved_home
    if not home.is_dir():
        return Check(
            "home",
            "problem",
            f"the home {home} does not exist",
            f"check MEDAI_HOME, or run `{INIT_COMMAND}` to set it up"
            if settings.serve_campaign
            else f"check MEDAI_HOME, or create it: `mkdir -m 700 {home}`",
            {"path": str(home)},
        )
    mode = _mode(home)
    details = {"path": str(home), "mode": f"{mode:04o}"}
    remedy = f"chmod 700 {home}"
    if mode & 0o022:
        return Check(
            "home",
            "problem",
            f"the home {home} is {mode:04o}: others may replace its catalog and key files",
            remedy,
            details,
        )
    if mode & 0o077:
        return Check(
            "home",
            "warning",
            f"the home {home} is {mode:04o}: others may read its catalog",
            remedy,
            details,
        )
    return Check("home", "ok", f"the home {home} is {mode:04o}", None, details)


def _key_files(settings: Settings) -> Iterator[Path]:
    """Every key file of this deployment that may exist (each is checked only if it does)."""
    home = settings.resolved_home
    yield settings.resolved_key_file
    yield settings.resolved_serving_key_file
    yield home / "dashboard-session.key"
    yield home / "edge" / "api.key"
    if settings.tls_key_file is not None:  # the listeners' TLS private key
        yield settings.tls_key_file.expanduser().absolute()


def check_key_files(settings: Settings) -> Check:
    """Key files (campaign, serving, dashboard sessions, edge API key, TLS key): 0600."""
    found: list[dict[str, str]] = []
    open_to_others: list[str] = []
    for path in dict.fromkeys(_key_files(settings)):
        if not path.is_file():
            continue
        mode = _mode(path)
        found.append({"path": str(path), "mode": f"{mode:04o}"})
        if mode & 0o077:
            open_to_others.append(f"{path} is {mode:04o}")
    if open_to_others:
        paths = " ".join(item.split(" is ")[0] for item in open_to_others)
        return Check(
            "key-files",
            "problem",
            f"key files others may read: {'; '.join(open_to_others)}",
            f"chmod 600 {paths}",
            {"files": found},
        )
    if not found:
        return Check("key-files", "ok", "no key file yet", None, {"files": found})
    return Check("key-files", "ok", f"{len(found)} key file(s), each 0600", None, {"files": found})


def check_quarantine(settings: Settings) -> Check:
    """The quarantine (raw files with PHI): 0700."""
    root = settings.resolved_quarantine_dir
    if not root.is_dir():
        return Check("quarantine", "ok", f"no quarantine yet ({root})", None, {"path": str(root)})
    mode = _mode(root)
    details = {"path": str(root), "mode": f"{mode:04o}"}
    if mode & 0o077:
        return Check(
            "quarantine",
            "problem",
            f"the quarantine {root} (raw files with PHI) is {mode:04o}",
            f"chmod 700 {root}",
            details,
        )
    return Check("quarantine", "ok", f"the quarantine {root} is {mode:04o}", None, details)


# -- the catalog -----------------------------------------------------------------------------


def _shown_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def _revisions(engine: Engine) -> tuple[set[str], set[str], set[str]]:
    """The catalog's current revisions, this medai's heads, and every revision it knows."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from medai.catalog.db import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config())
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    known = {script.revision for script in scripts.walk_revisions()}
    return current, set(scripts.get_heads()), known


def check_database(settings: Settings, state: CatalogState, engine: Engine | None) -> Check:
    """The catalog reachable, migrated to this medai's head, with a campaign.

    ``state`` is :func:`medai.catalog.db.catalog_state`'s; ``engine`` is None when there is
    no catalog to open (it is made only then, since a SQLite engine creates its folder).
    """
    where = _shown_url(settings)
    details: dict[str, Any] = {"url": where, "state": state}
    # What sets a catalog up: a campaign's init, or (inference only) the keys commands.
    init = INIT_COMMAND if settings.serve_campaign else INFERENCE_INIT_COMMAND
    if state == "missing":
        return Check("database", "problem", f"no catalog at {where}", f"run `{init}`", details)
    if state == "unreachable" or engine is None:
        return Check(
            "database",
            "problem",
            f"the catalog at {where} cannot be opened",
            "start the database server or fix MEDAI_DATABASE_URL",
            details,
        )
    try:
        current, heads, known = _revisions(engine)
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding itself
        return Check(
            "database",
            "problem",
            f"the catalog at {where} cannot be read ({type(exc).__name__})",
            "start the database server or fix MEDAI_DATABASE_URL",
            details,
        )
    details["revision"] = sorted(current)
    details["head"] = sorted(heads)
    at = ", ".join(sorted(current)) or "none"
    head = ", ".join(sorted(heads))
    if state == "not-migrated":
        return Check(
            "database", "problem", f"the catalog at {where} has no schema",
            f"run `{init}`", details,
        )  # fmt: skip
    if state == "outdated":
        migrate = (
            f"run `{INIT_COMMAND}` again to migrate it"
            if settings.serve_campaign
            else "run `medai keys list` to migrate it"
        )
        return Check(
            "database",
            "problem",
            f"the catalog at {where} is at revision {at}, behind this medai's {head}",
            f"{migrate} (back it up first: `medai backup create DEST`)",
            details,
        )
    if not current <= known:
        return Check(
            "database",
            "warning",
            f"the catalog at {where} is at revision {at}, newer than this medai knows ({head})",
            "upgrade medai on this machine to the version that migrated the catalog",
            details,
        )
    if state == "no-campaign" and not settings.serve_campaign:
        return Check(
            "database",
            "ok",
            f"the catalog at {where} is at head ({at}); no campaign, as an inference-only "
            "deployment (MEDAI_SERVE_CAMPAIGN=false) needs none",
            None,
            details,
        )
    if state == "no-campaign":
        return Check(
            "database",
            "problem",
            f"the catalog at {where} is migrated ({at}) but holds no campaign",
            f"run `{INIT_COMMAND}`",
            details,
        )
    return Check("database", "ok", f"the catalog at {where} is at head ({at})", None, details)


def check_campaign_key(settings: Settings, session: Session) -> Check:
    """The key file holds the key whose fingerprint the catalog records."""
    from sqlalchemy import select

    from medai.catalog.models import Campaign
    from medai.errors import KeyFileError
    from medai.keyfile import key_fingerprint, load_key

    key_file = settings.resolved_key_file
    recorded = session.scalar(select(Campaign.key_fingerprint).order_by(Campaign.id).limit(1))
    details: dict[str, Any] = {"key_file": str(key_file), "recorded_fingerprint": recorded}
    restore = (
        "restore it from the key escrow: `medai campaign key import ESCROW-FILE` "
        "(or point MEDAI_KEY_FILE at the campaign's key)"
    )
    if not key_file.exists():
        return Check(
            "campaign-key",
            "problem",
            f"the campaign key file {key_file} is missing: nothing can be pseudonymized",
            restore,
            details,
        )
    try:
        key = load_key(key_file)
    except KeyFileError as exc:
        return Check("campaign-key", "problem", str(exc), restore, details)
    found = key_fingerprint(key)
    details["fingerprint"] = found
    if recorded is None:
        return Check(
            "campaign-key",
            "warning",
            f"the catalog records no key fingerprint yet (the key file's is {found})",
            "`medai campaign key export --out ESCROW-FILE` records it (and escrows the key)",
            details,
        )
    if found != recorded:
        return Check(
            "campaign-key",
            "problem",
            f"the key file {key_file} holds another key (fingerprint {found}) than the "
            f"campaign's ({recorded}): pseudonyms made with it would split every patient",
            restore,
            details,
        )
    return Check(
        "campaign-key", "ok", f"the key's fingerprint {found} is the campaign's", None, details
    )


def _newest(session: Session, action: str) -> dt.datetime | None:
    from sqlalchemy import select

    from medai.catalog.models import AuditRecord

    at = session.scalar(
        select(AuditRecord.at)
        .where(AuditRecord.action == action)
        .order_by(AuditRecord.seq.desc())
        .limit(1)
    )
    if at is None:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def check_escrow(session: Session) -> Check:
    """The campaign key was exported to an escrow at least once."""
    at = _newest(session, ESCROW_ACTION)
    if at is None:
        return Check(
            "key-escrow",
            "warning",
            "the campaign key was never exported to an escrow: losing the key file loses "
            "every pseudonym's link",
            "`medai campaign key export --out ESCROW-FILE`, and keep the file and its "
            "passphrase apart from the backups",
        )
    return Check(
        "key-escrow", "ok", f"the key was escrowed on {at:%Y-%m-%d}", None,
        {"last_export": at.isoformat()},
    )  # fmt: skip


def _last_backup(session: Session) -> dt.datetime | None:
    try:
        from medai.ops.backup import last_backup
    except ImportError:  # the backup part is not installed: no backup can have been made
        return None
    return last_backup(session)


def check_backup(
    settings: Settings, session: Session, now: dt.datetime, *, inference_only: bool = False
) -> Check:
    """The newest backup is younger than ``MEDAI_BACKUP_STALE_HOURS``.

    ``inference_only``: a home without a campaign, which ``medai backup create`` refuses
    (it backs campaigns up); its catalog (API keys, audit log) still wants a backup, made
    with the database's own tool, which medai cannot see: a warning, not a problem.
    """
    stale_hours = float(getattr(settings, "backup_stale_hours", DEFAULT_BACKUP_STALE_HOURS))
    at = _last_backup(session)
    details: dict[str, Any] = {"stale_hours": stale_hours}
    remedy = "`medai backup create DEST` (and enable the nightly timer, serving/medai-backup.timer)"
    if at is None and inference_only:
        return Check(
            "backup",
            "warning",
            "no backup recorded; `medai backup create` backs up campaign deployments only",
            "back the catalog (API keys, audit log) up with its database's own tool "
            "(`sqlite3 CATALOG '.backup DEST'`, `pg_dump`)",
            details,
        )
    if at is None:
        return Check("backup", "problem", "no backup recorded", remedy, details)
    details["last_backup"] = at.isoformat()
    age = (now - at).total_seconds()
    if age > stale_hours * 3600:
        return Check(
            "backup",
            "problem",
            f"the last backup is {_age(age)} old (older than {stale_hours:g} hours)",
            remedy,
            details,
        )
    return Check("backup", "ok", f"the last backup is {_age(age)} old", None, details)


def check_anchor(settings: Settings, session: Session, now: dt.datetime) -> Check:
    """The audit chain's head was anchored within ``MEDAI_AUDIT_ANCHOR_STALE_HOURS``."""
    stale_hours = settings.audit_anchor_stale_hours
    at = _newest(session, ANCHOR_ACTION)
    details: dict[str, Any] = {"stale_hours": stale_hours}
    remedy = "`medai audit anchor`, and keep what it prints outside this machine"
    if at is None:
        return Check(
            "audit-anchor",
            "warning",
            "the audit chain's head was never anchored: cutting off its newest records "
            "would go unseen",
            remedy,
            details,
        )
    details["last_anchor"] = at.isoformat()
    age = (now - at).total_seconds()
    if age > stale_hours * 3600:
        return Check(
            "audit-anchor",
            "warning",
            f"the last audit anchor is {_age(age)} old (older than {stale_hours:g} hours)",
            remedy,
            details,
        )
    return Check("audit-anchor", "ok", f"the last audit anchor is {_age(age)} old", None, details)


def check_clock(settings: Settings, session: Session, now: dt.datetime) -> Check:
    """This clock against the database server's, the newest audit record's and the campaign's."""
    from sqlalchemy import func, select

    from medai.catalog.models import AuditRecord, Campaign

    remedy = "synchronize this machine's clock (e.g. `timedatectl set-ntp true`, chrony)"
    details: dict[str, Any] = {"now": now.isoformat()}
    created = session.scalar(select(Campaign.created_at).order_by(Campaign.id).limit(1))
    if created is not None:
        created = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
        details["campaign_created"] = created.isoformat()
        if now < created:
            return Check(
                "clock",
                "problem",
                f"this machine's clock ({now:%Y-%m-%d %H:%M} UTC) is before the campaign's "
                f"creation ({created:%Y-%m-%d %H:%M} UTC)",
                remedy,
                details,
            )
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        server = session.scalar(select(func.now()))
        if server is not None:
            skew = (now - server).total_seconds()
            details["database_skew_seconds"] = round(skew, 3)
            if abs(skew) > CLOCK_SKEW_SECONDS:
                way = "ahead of" if skew > 0 else "behind"
                return Check(
                    "clock",
                    "warning",
                    f"this machine's clock is {_age(abs(skew))} {way} the database server's",
                    remedy,
                    details,
                )
    newest = session.scalar(select(AuditRecord.at).order_by(AuditRecord.seq.desc()).limit(1))
    if newest is not None:
        newest = newest if newest.tzinfo else newest.replace(tzinfo=dt.UTC)
        ahead = (newest - now).total_seconds()
        details["newest_audit_record"] = newest.isoformat()
        if ahead > CLOCK_SKEW_SECONDS:
            return Check(
                "clock",
                "warning",
                f"the newest audit record is {_age(ahead)} in this machine's future: this "
                "clock is behind the one that wrote it",
                remedy,
                details,
            )
    return Check("clock", "ok", "the clock agrees with the catalog", None, details)


# -- the disk --------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    """``path``, or its nearest folder that exists (the store may not be created yet)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _disk_usage(path: Path) -> tuple[int, int]:
    """Total and free bytes of the filesystem holding ``path`` (tests replace it)."""
    usage = shutil.disk_usage(path)
    return usage.total, usage.free


def check_disk(settings: Settings) -> Check:
    """Free space on the store's filesystem."""
    store = settings.resolved_store_dir
    total, free = _disk_usage(_existing(store))
    gib = free / 1024**3
    percent = 100.0 * free / total if total else 0.0
    details = {"path": str(store), "free_bytes": free, "total_bytes": total}
    said = f"{gib:.1f} GiB ({percent:.0f} %) free for the store {store}"
    remedy = "free space or move the store (MEDAI_STORE_DIR) to a larger disk"
    if free < CRITICAL_FREE_BYTES:
        return Check("disk", "problem", f"only {said}: writes will soon fail", remedy, details)
    if gib < settings.min_free_disk_gib or percent < FREE_DISK_PERCENT:
        return Check("disk", "warning", f"only {said}", remedy, details)
    return Check("disk", "ok", said, None, details)


# -- listening sockets -----------------------------------------------------------------------

PROC = Path("/proc")


@dataclass(frozen=True)
class Listening:
    """A TCP socket a medai process listens on."""

    pid: int
    command: str
    address: str
    port: int
    tls: bool

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp[6]: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(swapped))


def _listening_inodes(proc: Path) -> dict[int, tuple[str, int]]:
    """Inode -> (address, port) of every listening TCP socket of this network namespace."""
    sockets: dict[int, tuple[str, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            sockets[int(fields[9])] = (_address(address), int(port, 16))
    return sockets


def _medai_command(argv: list[str]) -> str | None:
    """``medai <command>`` if ``argv`` runs medai (its script or ``-m medai[.cli]``), else None."""
    start = None
    for index, arg in enumerate(argv[:3]):
        if Path(arg).name == "medai":
            start = index + 1
            break
        if arg == "-m" and index + 1 < len(argv) and argv[index + 1] in ("medai", "medai.cli"):
            start = index + 2
            break
    if start is None:
        return None
    words: list[str] = []
    for arg in argv[start:]:
        if arg.startswith("-"):
            if words:
                break
            continue  # a root option, e.g. -v
        words.append(arg)
        if len(words) == 2:
            break
    return " ".join(["medai", *words])


def _environment(pid_dir: Path) -> dict[str, str] | None:
    try:
        raw = (pid_dir / "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _same_deployment(pid_dir: Path, env: dict[str, str] | None, settings: Settings) -> bool:
    """Whether the process serves this home (or this catalog); True when it cannot be told."""
    if env is None:
        return True
    database = env.get("MEDAI_DATABASE_URL")
    if database and settings.database_url and database == settings.database_url:
        return True
    home = Path(env.get("MEDAI_HOME") or ".medai").expanduser()
    if not home.is_absolute():
        try:
            home = Path(os.readlink(pid_dir / "cwd")) / home
        except OSError:
            return True
    return os.path.normpath(home) == os.path.normpath(settings.resolved_home)


def _tls_variables() -> list[str]:
    """The ``MEDAI_*`` names of TLS certificate settings, when the TLS part defines them."""
    from medai.config import Settings

    return [
        f"MEDAI_{name.upper()}" for name in Settings.model_fields if name.startswith("tls_cert")
    ]


def listening_medai_sockets(settings: Settings, proc: Path = PROC) -> list[Listening] | None:
    """The TCP sockets medai processes of this deployment listen on; None without ``/proc``."""
    scanned = _scan(settings, proc)
    return None if scanned is None else scanned[0]


def _scan(settings: Settings, proc: Path) -> tuple[list[Listening], list[int]] | None:
    """The listening sockets, and the medai processes whose sockets could not be read."""
    if not (proc / "net" / "tcp").exists():
        return None
    inodes = _listening_inodes(proc)
    tls_variables = _tls_variables()
    found: list[Listening] = []
    hidden: list[int] = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (pid_dir / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        command = _medai_command(argv)
        if command is None:
            continue
        env = _environment(pid_dir)
        if not _same_deployment(pid_dir, env, settings):
            continue
        # Encrypted: started with --tls-cert, or a certificate setting in its environment (or,
        # when that cannot be read, in the settings this deployment shares).
        tls = any(a == "--tls-cert" or a.startswith("--tls-cert=") for a in argv) or (
            any(env.get(name) for name in tls_variables)
            if env is not None
            else settings.tls_cert_file is not None
        )
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            hidden.append(int(pid_dir.name))  # another user's process: its sockets are hidden
            continue
        seen: set[int] = set()
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            inode = int(target[8:-1])
            if inode in inodes and inode not in seen:
                seen.add(inode)
                address, port = inodes[inode]
                found.append(Listening(int(pid_dir.name), command, address, port, tls))
    return sorted(found, key=lambda item: (item.port, item.address, item.pid)), sorted(hidden)


def check_listeners(settings: Settings) -> Check:
    """No medai process of this deployment listens in plaintext on a non-loopback address."""
    scanned = _scan(settings, PROC)
    if scanned is None:
        return Check("listeners", "skipped", "listening sockets cannot be inspected on this system")
    sockets, hidden = scanned
    details = {
        "sockets": [dataclasses.asdict(s) | {"loopback": s.loopback} for s in sockets],
        "uninspected_pids": hidden,
    }
    exposed = [s for s in sockets if not s.loopback and not s.tls]
    if exposed:
        named = "; ".join(f"{s.command} (pid {s.pid}) on {s.address}:{s.port}" for s in exposed)
        return Check(
            "listeners",
            "warning",
            f"plaintext on a non-loopback address: {named}",
            "restart it with --tls-cert CERT --tls-key KEY, or bind --host 127.0.0.1 "
            "behind a TLS proxy",
            details,
        )
    if hidden:
        return Check(
            "listeners",
            "warning",
            f"the sockets of {len(hidden)} medai process(es) of another user cannot be "
            f"inspected (pid {', '.join(map(str, hidden))})",
            "run `medai doctor` as the user the services run as (or as root)",
            details,
        )
    if not sockets:
        return Check("listeners", "ok", "no medai process of this home is listening", None, details)
    return Check(
        "listeners",
        "ok",
        f"{len(sockets)} listening socket(s), each on loopback or with TLS",
        None,
        details,
    )


# -- all of them -----------------------------------------------------------------------------

CATALOG_CHECKS = (*CAMPAIGN_CHECKS, "backup", "audit-anchor", "clock")


def run_checks(settings: Settings) -> DoctorReport:
    """Run every check on the deployment of ``settings``; reads only, never writes.

    Returns
    -------
    DoctorReport
        One :class:`Check` per check, in a fixed order. Checks that need the catalog are
        ``skipped`` unless the ``database`` check is ``ok`` (or only warns); the campaign's
        (:data:`CAMPAIGN_CHECKS`) are also ``skipped`` in an inference-only deployment
        without a campaign (see the module docstring).
    """
    from medai.catalog.db import catalog_state, create_engine_for, session_factory

    now = _utcnow()
    checks = [check_home(settings), check_key_files(settings), check_quarantine(settings)]
    state = catalog_state(settings.resolved_database_url)
    engine = None
    if state not in ("missing", "unreachable"):
        engine = create_engine_for(settings.resolved_database_url, busy_timeout_s=5.0)
    try:
        database = check_database(settings, state, engine)
        checks.append(database)
        if engine is not None and database.status in ("ok", "warning"):
            read = engine.execution_options(sqlite_begin="DEFERRED")
            skip_campaign = not settings.serve_campaign and state == "no-campaign"
            catalog: list[Callable[[Session], Check]] = [
                (lambda s: Check("campaign-key", "skipped", INFERENCE_ONLY))
                if skip_campaign
                else (lambda s: check_campaign_key(settings, s)),
                (lambda s: Check("key-escrow", "skipped", INFERENCE_ONLY))
                if skip_campaign
                else check_escrow,
                lambda s: check_backup(settings, s, now, inference_only=skip_campaign),
                lambda s: check_anchor(settings, s, now),
                lambda s: check_clock(settings, s, now),
            ]
            with session_factory(read)() as session:
                checks.extend(check(session) for check in catalog)
        else:
            checks.extend(
                Check(name, "skipped", "needs the catalog (see the database check)")
                for name in CATALOG_CHECKS
            )
    finally:
        if engine is not None:
            engine.dispose()
    checks.append(check_listeners(settings))
    checks.append(check_disk(settings))
    return DoctorReport(str(settings.resolved_home), _shown_url(settings), now, checks)
