"""``medai collect import|listen|pull``: the receivers' commands (folders, C-STORE, DICOMweb pull).

Registered on ``medai collect`` by :mod:`medai.collection.cli`. Only typer and rich load
here; the receivers (pynetdicom, requests, the pipeline) load when a command runs, so
``medai --help`` stays fast.
"""

from __future__ import annotations

import datetime as dt
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import MofNCompleteColumn
from rich.table import Table
from rich.text import Text

from medai.cli_support import (
    EXIT_PROBLEM,
    JsonFlag,
    console,
    fail,
    jsonable,
    parse_date,
    plain,
    print_json,
    progress_bar,
    require_campaign,
    row,
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
    from collections.abc import Callable

    from medai.collection.receivers.dicomweb_pull import PullSummary
    from medai.collection.receivers.folder import ImportSummary

__all__ = ["import_command", "listen_command", "parse_header", "pull_command", "register"]


def register(collect_app: typer.Typer) -> None:
    """Add ``import``, ``listen`` and ``pull`` to ``medai collect``."""
    collect_app.command("import")(import_command)
    collect_app.command("listen")(listen_command)
    collect_app.command("pull")(pull_command)


def import_command(
    path: Annotated[Path, typer.Argument(help="A folder, a zip file or a DICOM file to import.")],
    site: Annotated[str, typer.Option("--site", help="The campaign site id the data comes from.")],
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-j", min=0, help="Worker processes (0: one per CPU core, plus one)."
        ),
    ] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Import a site's folder or zip hand-over: de-identify, catalogue, quarantine the rest.

    Re-running it is harmless: what is already catalogued counts as a duplicate.
    """
    from rich.progress import TimeRemainingColumn

    from medai.collection.receivers.folder import import_path
    from medai.errors import MedaiError

    require_campaign()
    # No refresh thread: the import forks its workers, which is only safe single-threaded.
    # Transient: the summary table replaces the bar, and an error is not printed under a 0/? bar.
    with progress_bar(
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        auto_refresh=False,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task(f"importing for {site}", total=None)
        last_refresh = [0.0]

        def advance(_outcome: object) -> None:
            progress.advance(task)
            now = time.monotonic()
            if now - last_refresh[0] > 0.1:
                last_refresh[0] = now
                progress.refresh()

        def set_total(total: int) -> None:
            progress.update(task, total=total)
            progress.refresh()

        try:
            summary = import_path(
                path, site, workers=workers, on_total=set_total, on_outcome=advance
            )
        except MedaiError as exc:
            progress.stop()
            raise fail(exc) from None
    if as_json:
        print_json({**jsonable(summary), "site": site, "accounted": summary.offered})
    else:
        _print_import(summary, site)
    if summary.offered != summary.inputs:
        raise fail(
            f"accounted for {summary.offered} of {summary.inputs} inputs",
            "Run the same import again: what is already catalogued counts as a duplicate.",
            code=EXIT_PROBLEM,
        )


def _print_import(summary: ImportSummary, site: str) -> None:
    table = Table(title=plain(f"Import run {summary.run_id} — site {site}"))
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_row(*row("stored", summary.stored))
    table.add_row(*row("duplicate", summary.duplicate))
    for reason, count in sorted(summary.quarantined.items()):
        table.add_row(*row(f"quarantined: {reason}", count))
    table.add_row(plain("inputs", "bold"), plain(summary.inputs, "bold"))
    # Links, FIFOs and devices: never read, so not inputs; shown so none goes unnoticed.
    for reason, count in sorted(summary.refused.items()):
        table.add_row(*row(f"refused, never read: {reason}", count))
    out = console()
    out.print(table)
    rate = summary.inputs / summary.seconds if summary.seconds else 0.0
    out.print(plain(f"{summary.inputs} inputs in {summary.seconds:.1f} s ({rate:.1f} files/s)"))


def listen_command(
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")
    ] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="medai's own AE title.")] = "MEDAI",
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "0.0.0.0",
    quiet_seconds: Annotated[
        float | None,
        typer.Option(
            "--quiet-seconds",
            min=0.001,
            help="A study is complete after this long without a new instance "
            "(default: MEDAI_STUDY_QUIET_SECONDS, 60).",
        ),
    ] = None,
    drain_seconds: Annotated[
        float,
        typer.Option(
            "--drain-seconds",
            min=0.0,
            help="On stop, how long associations in flight may take to finish before "
            "they are aborted (their senders retry what was not acknowledged).",
        ),
    ] = 30.0,
    network_timeout: Annotated[
        float,
        typer.Option(
            "--network-timeout",
            min=0.1,
            help="Abort an association idle, or stalled mid-message, for this many seconds.",
        ),
    ] = 60.0,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    require_client_cert: RequireClientCertOption = None,
) -> None:
    """Receive DICOM pushed by the sites' PACS (C-STORE SCP, with C-ECHO).

    The calling AE title names the site (see the campaign's sites); unknown callers,
    and associations addressed to another AE title than --ae-title, are rejected and
    audited as they happen. Studies are marked complete after a quiet period. Runs until
    Ctrl-C or SIGTERM; then stops accepting, lets associations in flight finish
    (up to --drain-seconds; a second Ctrl-C aborts them at once) and prints a summary.

    With --tls-cert and --tls-key it speaks DICOM TLS only (storescu +tls); --tls-ca asks
    senders for a client certificate signed by that CA, --require-client-cert refuses
    those without one, and a site's `tls_clients` in the campaign file binds its AE titles
    to the certificates listed. Plaintext on an address other than loopback is warned about.
    """
    import signal
    import threading

    from medai.collection.pipeline import IngestPipeline
    from medai.collection.receivers.cstore import (
        StorageListener,
        site_by_ae_title,
        site_client_identities,
    )
    from medai.config import get_settings
    from medai.errors import MedaiError

    settings = get_settings()
    require_campaign(settings)
    tls = listener_tls(settings, tls_cert, tls_key, tls_ca, require_client_cert)
    try:
        pipeline = IngestPipeline.from_settings(settings)
    except MedaiError as exc:
        raise fail(exc) from None
    try:
        sites = site_by_ae_title(pipeline)
        if not sites:
            raise fail(
                "the campaign defines no AE titles",
                "Add them to the sites and run `medai campaign init FILE` again.",
            )
        quiet = quiet_seconds if quiet_seconds is not None else settings.study_quiet_seconds
        identities = site_client_identities(pipeline)
        if identities and tls is None:
            raise fail(
                "the campaign binds AE titles to client certificates (tls_clients), which "
                "needs TLS",
                "Give --tls-cert, --tls-key and --tls-ca (or MEDAI_TLS_CERT_FILE, "
                "MEDAI_TLS_KEY_FILE and MEDAI_TLS_CA_FILE).",
            )
        if identities and tls is not None and tls.ca is None:
            raise fail(
                "the campaign binds AE titles to client certificates (tls_clients): give "
                "--tls-ca, the CA that signs them, so that senders are asked for one"
            )
        listener = StorageListener(
            pipeline,
            ae_title,
            sites,
            quiet_seconds=quiet,
            network_timeout=network_timeout,
            ssl_context=tls.server_context() if tls is not None else None,
            client_identities=identities,
        )
        stop, hurry = threading.Event(), threading.Event()

        def on_signal(_signum: int, _frame: object) -> None:
            # The first signal starts the drain; a second one cuts it short.
            (hurry if stop.is_set() else stop).set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            listener.start(host, port)
        except OSError as exc:
            raise fail(
                f"cannot listen on {host}:{port}: {exc.strerror}", "Choose another --port."
            ) from None
        if tls is None:
            warn_plaintext(host, port, "DICOM (C-STORE)")
        out = console()
        security = tls.describe() if tls is not None else "plaintext"
        out.print(
            plain(
                f"listening as {ae_title} on {host}:{port} ({security}) for "
                + ", ".join(f"{title} ({site})" for title, site in sorted(sites.items()))
                + f"; studies complete after {quiet:g} s without new instances"
            )
        )
        while not stop.wait(0.5):
            pass
        in_flight = len(listener.in_flight())
        out.print(
            f"stopping: no new associations; waiting up to {drain_seconds:g} s for "
            f"{in_flight} in flight"
        )
        result = listener.stop(drain_seconds, hurry=hurry)
        counts = listener.counts
        if result.aborted:
            out.print(
                plain(
                    f"aborted {result.aborted} association(s) still running after "
                    f"{result.seconds:.1f} s: their senders retry what was not acknowledged",
                    "yellow",
                )
            )
        out.print(
            f"{counts.associations} associations ({counts.rejected} rejected, "
            f"{counts.aborted} aborted); {counts.instances} instances: {counts.stored} stored, "
            f"{counts.duplicate} duplicate, {counts.quarantined} quarantined, "
            f"{counts.failed} refused (not in custody); "
            f"{listener.sweeper.completed} studies completed"
        )
        out.print("listener stopped")
    finally:
        pipeline.engine.dispose()


DimseOption = Annotated[
    str | None,
    typer.Option(
        "--dimse",
        metavar="AE@HOST:PORT",
        help="Pull from a DICOM node (C-FIND, then C-MOVE or C-GET) instead of --url, "
        "e.g. PACS@10.0.0.5:104.",
    ),
]


class RetrieveBy(StrEnum):
    """How a DIMSE pull retrieves each study."""

    MOVE = "move"
    GET = "get"


RetrieveOption = Annotated[
    RetrieveBy,
    typer.Option(
        "--retrieve",
        help="With --dimse: C-MOVE to medai's storage SCP, or C-GET on one association.",
    ),
]
PullAeTitleOption = Annotated[
    str, typer.Option("--ae-title", help="With --dimse: medai's AE title (and move destination).")
]
StorePortOption = Annotated[
    int,
    typer.Option(
        "--store-port",
        min=1,
        max=65535,
        help="With --dimse and C-MOVE: the port of medai's storage SCP the PACS sends to.",
    ),
]
WindowDaysOption = Annotated[
    int, typer.Option("--window-days", min=1, help="With --dimse: days per C-FIND search.")
]


def parse_header(value: str) -> tuple[str, str]:
    """A request header given as ``'Name: value'``.

    Raises
    ------
    typer.BadParameter
        When there is no colon or no name.
    """
    name, colon, text = value.partition(":")
    if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
        raise typer.BadParameter("give a header as 'Name: value', e.g. 'X-Api-Key: 123'")
    return name.strip(), text.strip()


def pull_command(
    site: Annotated[
        str, typer.Option("--site", help="The campaign site id the archive belongs to.")
    ],
    since: Annotated[
        dt.date,
        typer.Option(
            "--since",
            parser=parse_date,
            metavar="DATE",
            help="First StudyDate to pull (YYYY-MM-DD or YYYYMMDD).",
        ),
    ],
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The archive's DICOMweb root, e.g. http://pacs.example.org:8042/dicom-web.",
        ),
    ] = None,
    dimse: DimseOption = None,
    retrieve: RetrieveOption = RetrieveBy.MOVE,
    ae_title: PullAeTitleOption = "MEDAI",
    store_port: StorePortOption = 11113,
    window_days: WindowDaysOption = 1,
    until: Annotated[
        dt.date | None,
        typer.Option(
            "--until",
            parser=parse_date,
            metavar="DATE",
            help="Last StudyDate to pull, included (default: no end).",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="Extra request header 'Name: value' (repeatable)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Bearer token for the archive (or set MEDAI_PULL_TOKEN, kept out of the "
            "shell history).",
        ),
    ] = None,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Attempts per request before the pull stops."),
    ] = 6,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1.0, help="Seconds to wait for the archive on each read."),
    ] = 120.0,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            metavar="PEM",
            help="Verify an https:// archive's certificate against this CA certificate "
            "(or the archive's own, when self-signed) instead of the system's CAs.",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Ignore this pull's checkpoint (instances already catalogued are still "
            "not downloaded again).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Pull a site's studies in a date window from its archive: DICOMweb (--url) or DIMSE (--dimse).

    Every instance is de-identified and catalogued like any other input. Stopped or
    cut off, the same command run again resumes where it stopped: studies done are
    skipped and nothing already catalogued is downloaded again (over DIMSE, a study
    retrieved again is de-duplicated: each instance is stored once).

    Over DIMSE the PACS is searched by C-FIND (--window-days per search) and each study
    retrieved by C-MOVE to medai's storage SCP on --store-port (the PACS must know
    --ae-title at this host and port) or by C-GET (--retrieve get).
    """

    from medai.collection.receivers.dicomweb_pull import RetryPolicy, pull_site
    from medai.config import get_settings
    from medai.errors import MedaiError
    from medai.tls import client_context

    first, last = since, until
    if last is not None and last < first:
        raise fail(f"--until {last} is before --since {first}")
    if (url is None) == (dimse is None):
        raise fail(
            "give either --url (a DICOMweb archive) or --dimse (a DICOM node), not both",
            "e.g. --url http://pacs:8042/dicom-web or --dimse PACS@10.0.0.5:104",
        )
    settings = get_settings()
    require_campaign(settings)
    if dimse is not None:
        _pull_dimse(
            site,
            dimse,
            first,
            last,
            retrieve,
            ae_title,
            store_port,
            window_days,
            max_attempts,
            timeout,
            fresh,
            as_json,
        )
        return
    assert url is not None
    if ca_file is not None:
        try:
            client_context(ca_file)  # the file named now if it is missing or not PEM
        except MedaiError as exc:
            raise fail(exc) from None
    headers = dict(parse_header(item) for item in header or ())
    if token is None and settings.pull_token is not None:
        token = settings.pull_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    window = f"{first} to {last}" if last else f"from {first}"

    _run_pull(
        site,
        window,
        as_json,
        f"Pull run {{run}}: {site}, studies {window}",
        lambda on_total, on_study, on_outcome: pull_site(
            site,
            url,
            first,
            last,
            headers=headers,
            retry=RetryPolicy(max_attempts=max_attempts),
            timeout=(min(10.0, timeout), timeout),
            fresh=fresh,
            ca_file=ca_file,
            on_total=on_total,
            on_study=on_study,
            on_outcome=on_outcome,
        ),
    )


def _run_pull(
    site: str,
    window: str,
    as_json: bool,
    title: str,
    start: Callable[
        [Callable[[int], None], Callable[[], None], Callable[[object], None]], PullSummary
    ],
    steps: str = "studies",
) -> None:
    """Run a pull (``start(on_total, on_study, on_outcome)``) under a bar; print its summary.

    A pull stopped part-way (PullStopped) prints what it did, then ends with its error.
    """
    from rich.progress import TimeElapsedColumn

    from medai.errors import MedaiError, PullStopped

    stopped: PullStopped | None = None
    columns = (MofNCompleteColumn(), TimeElapsedColumn())
    with progress_bar(*columns, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"searching {site}'s studies {window}", total=None)
        offered = [0]

        def set_total(total: int) -> None:
            bar.update(task, total=total, description=f"pulling {site}'s {steps}")

        def study_done() -> None:
            bar.advance(task)

        def instance_done(_outcome: object) -> None:
            offered[0] += 1
            bar.update(task, description=f"pulling {site}'s {steps} ({offered[0]} instances)")

        try:
            summary = start(set_total, study_done, instance_done)
        except PullStopped as exc:
            stopped, summary = exc, exc.summary
        except MedaiError as exc:  # before anything was fetched: site, archive, campaign
            bar.stop()
            raise fail(exc) from None

    if as_json:
        extra = {"site": site, "window": window, "downloaded": summary.downloaded}
        print_json({**jsonable(summary), **extra})
    else:
        _print_pull(summary, title=title.format(run=summary.run_id))
    if stopped is not None:
        raise fail(stopped, code=EXIT_PROBLEM)


def _pull_dimse(
    site: str,
    peer: str,
    first: dt.date,
    last: dt.date | None,
    retrieve: RetrieveBy,
    ae_title: str,
    store_port: int,
    window_days: int,
    max_attempts: int,
    timeout: float,
    fresh: bool,
    as_json: bool,
) -> None:
    """``pull --dimse``: C-FIND by date windows, then C-MOVE or C-GET per study."""
    from medai.collection.receivers.dicomweb_retry import RetryPolicy
    from medai.collection.receivers.dimse_pull import pull_site_dimse

    window = f"{first} to {last}" if last else f"from {first}"
    _run_pull(
        site,
        window,
        as_json,
        f"DIMSE pull run {{run}}: {site}, studies {window}",
        lambda on_total, on_window, on_outcome: pull_site_dimse(
            site,
            peer,
            first,
            last,
            retrieve="get" if retrieve is RetrieveBy.GET else "move",
            ae_title=ae_title,
            store_port=store_port,
            window_days=window_days,
            retry=RetryPolicy(max_attempts=max_attempts),
            timeout=timeout,
            fresh=fresh,
            on_total=on_total,
            on_study=on_window,
            on_outcome=on_outcome,
        ),
        steps="date windows",
    )


def _print_pull(summary: PullSummary, title: str) -> None:
    table = Table(title=plain(title))
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row(*row("studies found", summary.studies_found))
    table.add_row(*row("studies pulled", summary.studies_pulled))
    table.add_row(*row("studies skipped (done before)", summary.studies_skipped))
    table.add_row(*row("instances stored", summary.stored))
    table.add_row(*row("instances duplicate", summary.duplicate))
    for reason, count in sorted(summary.quarantined.items()):
        table.add_row(*row(f"instances quarantined: {reason}", count))
    table.add_row(*row("instances skipped (already here)", summary.instances_skipped))
    table.add_row(*row("retries", summary.retries))
    out = console()
    out.print(table)
    rate = summary.downloaded / summary.seconds if summary.seconds else 0.0
    state = "complete" if summary.complete else "stopped"
    out.print(
        Text(
            f"{summary.downloaded} instances downloaded in {summary.seconds:.1f} s "
            f"({rate:.1f}/s); pull {state}"
        )
    )
