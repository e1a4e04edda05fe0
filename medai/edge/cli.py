"""``medai edge init|run|status|receipts``, ``campaign site-kit``, ``collect reconcile``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from medai.cli_tls import (
    RequireClientCertOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    listener_tls,
    warn_plaintext,
)

if TYPE_CHECKING:
    from medai.config import Settings
    from medai.edge.kit import EdgeConfig
    from medai.edge.outbox import Outbox

__all__ = ["edge_app", "register"]

edge_app = typer.Typer(
    name="edge",
    help="Run a hospital's edge gateway: receive and de-identify on site, forward to the centre.",
    no_args_is_help=True,
)

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        metavar="FILE",
        help="Read the kit's passphrase from the first line of FILE (else MEDAI_KIT_PASSPHRASE, "
        "else a hidden prompt).",
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``edge`` to the root app, ``site-kit`` to ``campaign``, ``reconcile`` to ``collect``."""
    from medai.collection.campaign.cli import campaign_app
    from medai.collection.cli import collect_app

    campaign_app.command("site-kit")(site_kit_command)
    collect_app.command("reconcile")(reconcile_command)
    app.add_typer(edge_app, name="edge")


def _passphrase(path: Path | None, settings: Settings, *, confirm: bool) -> str:
    if path is not None:
        return read_passphrase_file(path)
    if settings.kit_passphrase is not None:
        return settings.kit_passphrase.get_secret_value()
    text: str = typer.prompt("Kit passphrase", hide_input=True, confirmation_prompt=confirm)
    return text


# -- at the centre ---------------------------------------------------------------------------


def site_kit_command(
    site: Annotated[str, typer.Argument(metavar="SITE", help="The campaign site the edge serves.")],
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="Where to write the kit (a new file).")
    ],
    centre_url: Annotated[
        str,
        typer.Option(
            "--centre-url", metavar="URL", help="The URL the edge reaches this centre's service at."
        ),
    ] = "http://127.0.0.1:8000",
    certificate: Annotated[
        Path | None,
        typer.Option(
            "--certificate",
            metavar="PEM",
            help="The centre's TLS certificate (PEM), for an https URL with a private CA.",
        ),
    ] = None,
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a site kit: campaign, sealed key, centre URL and certificate, a new edge API key.

    Give the kit and its passphrase to the site apart; `medai edge init KIT` sets the edge up.
    """
    from medai.audit import actors
    from medai.catalog.db import create_engine_for
    from medai.config import get_settings
    from medai.edge.kit import write_kit
    from medai.errors import MedaiError

    settings = get_settings()
    require_campaign(settings)
    if not centre_url.startswith(("http://", "https://")):
        raise fail(f"--centre-url {centre_url!r} is not an http(s) URL", "E.g. https://centre:8000")
    pem: str | None = None
    if certificate is not None:
        try:
            pem = certificate.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read {certificate} ({exc.__class__.__name__})") from None
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise fail(f"{certificate} holds no PEM certificate")
    passphrase = _passphrase(passphrase_file, settings, confirm=True)
    engine = create_engine_for(settings.resolved_database_url)
    try:
        summary = write_kit(
            settings,
            engine,
            site,
            out,
            passphrase,
            centre_url=centre_url,
            certificate=pem,
            actor=actors.operator(),
        )
    except MedaiError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if as_json:
        print_json(summary)
        return
    console().print(
        plain(
            f"Site kit for {site} written to {out} (edge key {summary['api_key_name']}, "
            f"campaign key fingerprint {summary['fingerprint']})."
        ),
        soft_wrap=True,
    )
    console().print(
        plain("Send the kit and its passphrase to the site by different channels.", "bold yellow")
    )


# -- at the edge -----------------------------------------------------------------------------


@edge_app.command("init")
def init_command(
    kit: Annotated[
        Path, typer.Argument(metavar="KIT", help="The site kit from `medai campaign site-kit`.")
    ],
    passphrase_file: PassphraseFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Set this home up as a site's edge from its kit (campaign, key, centre, API key)."""
    from medai.audit import actors
    from medai.config import get_settings
    from medai.edge.kit import init_edge, open_kit, read_kit_document
    from medai.errors import MedaiError

    settings = get_settings()
    try:
        data = kit.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {kit} ({exc.strerror})", "Check the path.") from None
    try:
        read_kit_document(data)  # before asking for a passphrase
        contents = open_kit(data, _passphrase(passphrase_file, settings, confirm=False))
        outcome = init_edge(settings, contents, actor=actors.operator())
    except MedaiError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(outcome)
        return
    console().print(
        plain(
            f"Edge of site {outcome.site} set up for campaign {outcome.campaign!r} "
            f"(key fingerprint {outcome.fingerprint}); centre {outcome.centre_url}."
        ),
        soft_wrap=True,
    )
    console().print(plain(f"Configuration: {outcome.config}. Start it with `medai edge run`."))


def _edge(settings: Settings) -> EdgeConfig:
    from medai.edge.kit import load_edge_config
    from medai.errors import MedaiError

    require_campaign(settings)
    try:
        return load_edge_config(settings.resolved_home)
    except MedaiError as exc:
        raise fail(exc) from None


def _outbox(settings: Settings) -> Outbox:
    from medai.edge.outbox import Outbox, outbox_path

    return Outbox(outbox_path(settings.resolved_home))


def _fill(settings: Settings, outbox: Outbox) -> None:
    from medai.catalog.db import create_engine_for

    engine = create_engine_for(settings.resolved_database_url)
    try:
        while outbox.fill(engine):
            pass
    finally:
        engine.dispose()


def _campaign_start(settings: Settings) -> dt.date:
    """The campaign's first day, from this edge's catalog."""
    from sqlalchemy import select

    from medai.catalog.db import create_engine_for, session_factory
    from medai.catalog.models import Campaign

    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            start: dt.date | None = session.scalar(select(Campaign.start_date))
    finally:
        engine.dispose()
    if start is None:
        raise fail("this edge has no campaign", "Set it up first: `medai edge init KIT`.")
    return start


@edge_app.command("run")
def run_command(
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="C-STORE port (0: no listener).")
    ] = 11112,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "0.0.0.0",
    ae_title: Annotated[str, typer.Option("--ae-title", help="The edge's own AE title.")] = "MEDAI",
    watch: Annotated[
        Path | None,
        typer.Option(
            "--watch",
            metavar="DIR",
            help="A hand-over folder: files left there are ingested, then removed.",
        ),
    ] = None,
    drain_seconds: Annotated[
        float,
        typer.Option("--drain-seconds", min=0.0, help="On stop, how long associations may finish."),
    ] = 30.0,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    require_client_cert: RequireClientCertOption = None,
    pull_url: Annotated[
        str | None,
        typer.Option(
            "--pull-url",
            metavar="URL",
            help="The site archive's DICOMweb root, pulled on a timer (QIDO-RS + WADO-RS).",
        ),
    ] = None,
    pull_since: Annotated[
        dt.datetime | None,
        typer.Option(
            "--pull-since",
            formats=["%Y-%m-%d"],
            help="Pull studies dated from this day (default: the campaign's start).",
        ),
    ] = None,
    pull_every: Annotated[
        float, typer.Option("--pull-every", min=5.0, help="Seconds between two pulls.")
    ] = 300.0,
    pull_token: Annotated[
        str | None,
        typer.Option("--pull-token", help="Bearer token for the archive (else none)."),
    ] = None,
    pull_ca_file: Annotated[
        Path | None,
        typer.Option("--pull-ca-file", metavar="PEM", help="CA to trust for an https archive."),
    ] = None,
) -> None:
    """Receive (C-STORE, hand-over folder, DICOMweb pull), de-identify, forward, until stopped.

    Forwarding follows MEDAI_EDGE_BATCH_INSTANCES, _BATCH_BYTES, _BANDWIDTH_BYTES_PER_S and
    _WINDOWS; heartbeats every MEDAI_EDGE_HEARTBEAT_SECONDS. Stops on Ctrl-C or SIGTERM; what
    was not acknowledged is sent again at the next start.

    --tls-cert and --tls-key make the C-STORE listener speak DICOM TLS only (--tls-ca,
    --require-client-cert and the site's tls_clients as for `medai collect listen`); the
    forwarding to the centre is HTTPS when the kit's URL is, trusting the kit's certificate.
    """
    import signal
    import threading

    from medai.config import get_settings
    from medai.edge.gateway import Gateway, GatewayOptions
    from medai.errors import MedaiError

    settings = get_settings()
    config = _edge(settings)
    if watch is not None and not watch.is_dir():
        raise fail(f"--watch {watch} is not a folder", "Create it or choose another.")
    tls = listener_tls(settings, tls_cert, tls_key, tls_ca, require_client_cert) if port else None
    pull = None
    if pull_url is not None:
        from medai.edge.gateway import PullSource

        if pull_ca_file is not None and not pull_ca_file.is_file():
            raise fail(f"--pull-ca-file {pull_ca_file} is not a file", "Name the CA's PEM file.")
        pull = PullSource(
            url=pull_url,
            since=pull_since.date() if pull_since is not None else _campaign_start(settings),
            every_seconds=pull_every,
            headers=(("Authorization", f"Bearer {pull_token}"),) if pull_token else (),
            ca_file=pull_ca_file,
        )
    options = GatewayOptions(
        port=port or None,
        host=host,
        ae_title=ae_title,
        watch=watch,
        drain_seconds=drain_seconds,
        ssl_context=tls.server_context() if tls is not None else None,
        pull=pull,
    )
    try:
        gateway = Gateway(settings, config, options)
    except MedaiError as exc:
        raise fail(exc) from None
    if port and not gateway.site_ae_titles():
        gateway.stop()
        raise fail(
            f"the campaign gives site {config.site} no AE titles to receive C-STORE from",
            "Add them at the centre and make a new site kit, or run with --port 0 --watch DIR.",
        )
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        (hurry if stop.is_set() else stop).set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        gateway.start()
    except OSError as exc:
        gateway.stop()
        raise fail(
            f"cannot listen on {host}:{port}: {exc.strerror}", "Choose another --port."
        ) from None
    if port and tls is None:
        warn_plaintext(host, port, "DICOM (C-STORE)")
    out = console()
    security = tls.describe() if tls is not None else "plaintext"
    receiving = [f"C-STORE as {ae_title} on {host}:{port} ({security})"] if port else []
    if watch is not None:
        receiving.append(f"folder {watch}")
    out.print(
        plain(
            f"edge of {config.site} running: receiving {' and '.join(receiving) or 'nothing'}; "
            f"forwarding to {config.centre_url}"
        ),
        soft_wrap=True,
    )
    while not stop.wait(0.5):
        pass
    out.print("stopping")
    gateway.stop(hurry=hurry)
    out.print(f"edge stopped: {gateway.forwarder.forwarded} instance(s) forwarded this run")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(dt.timedelta(seconds=round(seconds)))


@edge_app.command("status")
def status_command(as_json: JsonFlag = False) -> None:
    """The outbox (depth, oldest unsent), the last forward, the centre's last heartbeat answer."""
    from medai.config import get_settings

    settings = get_settings()
    config = _edge(settings)
    with _outbox(settings) as outbox:
        _fill(settings, outbox)
        stats = outbox.stats()
        forward = outbox.get_state("forward")
        heartbeat = outbox.get_state("heartbeat")
        keys_waiting = outbox.study_keys_waiting()
    document: dict[str, Any] = {
        "site": config.site,
        "centre_url": config.centre_url,
        "outbox_depth": stats.depth,
        "oldest_unsent_seconds": stats.oldest_unsent_seconds,
        "enqueued": stats.enqueued,
        "acknowledged": stats.acknowledged,
        "quarantined_at_centre": stats.quarantined_at_centre,
        "study_keys_waiting": keys_waiting,
        "forward": forward,
        "heartbeat": heartbeat,
    }
    if as_json:
        print_json(document)
        return
    out = console()
    out.print(plain(f"Edge of {config.site}, centre {config.centre_url}"), soft_wrap=True)
    out.print(
        plain(
            f"Outbox: {stats.depth} unsent (oldest {_age(stats.oldest_unsent_seconds)}), "
            f"{stats.acknowledged} of {stats.enqueued} acknowledged, "
            f"{stats.quarantined_at_centre} quarantined at the centre; "
            f"{keys_waiting} stud{'y' if keys_waiting == 1 else 'ies'}' label keys not yet "
            "at the centre"
        )
    )
    if forward:
        out.print(
            plain(
                f"Last forward: {forward.get('last_success_at') or 'never'}"
                + (f"; last error {forward['last_error']}" if forward.get("last_error") else "")
            )
        )
    else:
        out.print("Last forward: never")
    if heartbeat:
        answer = heartbeat.get("answer") or {}
        out.print(
            plain(
                f"Last heartbeat answered: {heartbeat.get('last_success_at') or 'never'}"
                + (f" (centre time {answer['server_time']})" if answer.get("server_time") else "")
                + (f"; last error {heartbeat['last_error']}" if heartbeat.get("last_error") else "")
            )
        )
    else:
        out.print("Last heartbeat: never")


@edge_app.command("receipts")
def receipts_command(as_json: JsonFlag = False) -> None:
    """The edge's receipts: per receipt day, instances received and the hash of their UIDs."""
    from rich.table import Table

    from medai.cli_support import row
    from medai.config import get_settings

    settings = get_settings()
    config = _edge(settings)
    with _outbox(settings) as outbox:
        _fill(settings, outbox)
        receipts = outbox.receipts()
        answer = (outbox.get_state("heartbeat") or {}).get("answer") or {}
    found = answer.get("receipts")
    centre: dict[str, Any] = found if isinstance(found, dict) else {}
    if as_json:
        print_json({"site": config.site, "receipts": receipts, "centre_last_heartbeat": centre})
        return
    table = Table(title=f"Receipts of {config.site}")
    for column in ("Day", "Instances", "Hash", "Centre (last heartbeat)"):
        table.add_column(column)
    for day, receipt in receipts.items():
        theirs = centre.get(day) or {}
        same = theirs.get("hash") == receipt["hash"]
        shown = "-" if not theirs else ("same" if same else f"{theirs.get('count')} (differs)")
        table.add_row(*row(day, receipt["count"], receipt["hash"][:16], shown))
    console().print(table)


def reconcile_command(
    site: Annotated[str, typer.Option("--site", help="The site this edge serves.")],
    as_json: JsonFlag = False,
) -> None:
    """At an edge: compare its receipts with the centre's, day by day; exit 1 on differences.

    Per receipt day, counts and hashes of the pseudonymized SOP Instance UIDs are compared;
    for days that differ, the UIDs missing at the centre (unsent, or quarantined there) and
    those the centre holds that the edge does not are named.
    """
    from medai.config import get_settings
    from medai.edge.reconcile import reconcile
    from medai.errors import MedaiError

    settings = get_settings()
    config = _edge(settings)
    if site != config.site:
        raise fail(
            f"this home is the edge of site {config.site!r}, not {site!r}",
            f"Run it with --site {config.site}.",
        )
    try:
        with _outbox(settings) as outbox:
            _fill(settings, outbox)
            with config.client() as client:
                result = reconcile(outbox, client, site)
    except MedaiError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(
            {
                "site": result.site,
                "days": result.days,
                "edge_instances": result.edge_instances,
                "centre_instances": result.centre_instances,
                "outbox_depth": result.outbox_depth,
                "differences": result.difference_count,
                "days_differing": result.differences,
            }
        )
    else:
        out = console()
        out.print(
            plain(
                f"{site}: {result.days} receipt day(s); edge {result.edge_instances} instance(s), "
                f"centre {result.centre_instances}; outbox {result.outbox_depth} unsent"
            )
        )
        for day in result.differences:
            out.print(
                plain(
                    f"{day.day}: edge {day.edge_count}, centre {day.centre_count}: "
                    f"{len(day.missing_at_centre)} missing at the centre, "
                    f"{len(day.missing_at_edge)} the edge does not have",
                    "yellow",
                )
            )
            for uid in day.missing_at_centre:
                out.print(plain(f"  missing at the centre: {uid} ({day.edge_state.get(uid, '?')})"))
            for uid in day.missing_at_edge:
                out.print(plain(f"  not at the edge: {uid}"))
        out.print(plain(f"{result.difference_count} differences"))
    if result.difference_count:
        raise typer.Exit(1)
