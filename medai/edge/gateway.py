"""``medai edge run``: the receivers, the forwarder and the heartbeat of one edge, as one service.

The receivers are the centre's own (the C-STORE SCP for the site's AE titles, a watched
hand-over folder, the DICOMweb pull of the site's archive on a timer), feeding the standard
:class:`~medai.collection.pipeline.IngestPipeline`, so instances are de-identified on site
before anything else sees them. The forwarder and the heartbeat run in their own threads over
the outbox. A stop (SIGTERM, SIGINT) stops accepting,
lets associations in flight finish, then stops the threads between two requests; a batch cut
short is simply sent again at the next start (the centre answers it as duplicates).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medai.collection.pipeline import IngestPipeline
    from medai.collection.receivers.cstore import StorageListener
    from medai.config import Settings
    from medai.edge.kit import EdgeConfig

__all__ = [
    "FolderWatcher",
    "Gateway",
    "GatewayOptions",
    "PullPoller",
    "PullSource",
    "supervised",
]

logger = logging.getLogger(__name__)

WATCH_SOURCE = "edge-folder"


# How long a worker that died of an unexpected error waits before it starts again, at most.
RESTART_MAX_SECONDS = 60.0


def supervised(
    name: str,
    target: Callable[[threading.Event], None],
    stop: threading.Event,
    *,
    first_delay: float = 1.0,
) -> None:
    """Run ``target(stop)`` until ``stop`` is set, starting it again when it dies.

    The workers retry what they expect (HTTP, OS and catalog errors) themselves; this is
    for what they do not (a bug, a library's surprise). Without it a forwarder thread that
    died would leave the edge receiving but never forwarding until someone restarted the
    service; the heartbeat would show the outbox growing, nothing more. Only the error's
    class is logged: its text may quote a DICOM value.
    """
    delay = first_delay
    while not stop.is_set():
        started = time.monotonic()
        try:
            target(stop)
            return  # a worker returns only when stop is set
        except Exception as exc:
            logger.error(
                "edge %s stopped on an unexpected %s; starting it again in %.0f s",
                name,
                exc.__class__.__name__,
                delay,
            )
        # A worker that ran a while before failing starts again soon; one that fails at
        # once waits longer each time, so a persistent fault does not spin.
        delay = first_delay if time.monotonic() - started > RESTART_MAX_SECONDS else delay
        stop.wait(delay)
        delay = min(RESTART_MAX_SECONDS, delay * 2)


@dataclass(frozen=True)
class GatewayOptions:
    """How ``medai edge run`` was asked to run."""

    port: int | None = 11112
    host: str = "0.0.0.0"
    ae_title: str = "MEDAI"
    watch: Path | None = None
    watch_settle_seconds: float = 2.0
    quiet_seconds: float | None = None
    drain_seconds: float = 30.0
    ssl_context: ssl.SSLContext | None = None  # DICOM TLS for the C-STORE listener
    pull: PullSource | None = None  # the site archive's DICOMweb, pulled every few minutes


@dataclass(frozen=True)
class PullSource:
    """A DICOMweb archive of the site that the edge pulls from (QIDO-RS, then WADO-RS)."""

    url: str
    since: dt.date
    every_seconds: float = 300.0
    headers: tuple[tuple[str, str], ...] = ()
    ca_file: Path | None = None


class PullPoller:
    """Runs the centre's own DICOMweb pull receiver on a timer, into the edge's pipeline.

    Each run resumes from the pull's checkpoint (pseudonymized UIDs only), so a study is
    fetched once; the instances then take the same path as pushed ones (de-identified here,
    queued in the outbox). A run that fails (archive down) is logged and tried at the next
    tick; an instance already catalogued is not downloaded again.
    """

    def __init__(self, settings: Settings, site: str, source: PullSource) -> None:
        self.settings, self.site, self.source = settings, site, source
        self.runs = 0
        self.last_error: str | None = None

    def pull_once(self) -> None:
        from medai.collection.receivers.dicomweb_pull import pull_site

        summary = pull_site(
            self.site,
            self.source.url,
            self.source.since,
            settings=self.settings,
            headers=dict(self.source.headers),
            ca_file=self.source.ca_file,
        )
        self.runs += 1
        logger.info(
            "pull from the site archive: %d instance(s) downloaded, %d already here",
            summary.downloaded,
            summary.instances_skipped,
        )

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.pull_once()
                self.last_error = None
            except Exception as exc:  # the archive or the catalog down: tried again later
                self.last_error = exc.__class__.__name__
                logger.warning("pull from the site archive failed (%s)", self.last_error)
            stop.wait(self.source.every_seconds)


class FolderWatcher:
    """A hand-over folder: each regular file left there is ingested, then removed.

    A file is taken once its size and modification time have not changed for
    ``settle_seconds`` (a copy in progress is left alone). It is removed only once the
    pipeline has it in custody (stored, duplicate or quarantined: a rejected file's raw copy
    is in the quarantine), so no identified file stays in the folder and none is lost.
    Names starting with a dot are ignored (temporary files of copying tools).
    """

    def __init__(
        self, pipeline: IngestPipeline, folder: Path, site: str, *, settle_seconds: float = 2.0
    ) -> None:
        self.pipeline, self.folder, self.site = pipeline, Path(folder), site
        self.settle_seconds = settle_seconds
        self._seen: dict[Path, tuple[int, float, float]] = {}
        self.ingested = 0

    def _ready(self) -> list[Path]:
        now = time.monotonic()
        ready: list[Path] = []
        current: dict[Path, tuple[int, float, float]] = {}
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(root) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink():
                    continue
                previous = self._seen.get(path)
                since = now
                if previous is not None and previous[:2] == (st.st_size, st.st_mtime):
                    since = previous[2]
                current[path] = (st.st_size, st.st_mtime, since)
                if now - since >= self.settle_seconds:
                    ready.append(path)
        self._seen = current
        return sorted(ready)

    def scan_once(self, batch: int = 16) -> int:
        """Ingest the settled files (``batch`` per pipeline call); return how many."""
        from medai.collection.outcomes import Offer

        ready = self._ready()
        taken = 0
        for start in range(0, len(ready), batch):
            paths = ready[start : start + batch]
            offers, kept = [], []
            for path in paths:
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                offers.append(Offer(data=data, site=self.site, source=WATCH_SOURCE))
                kept.append(path)
            if not offers:
                continue
            self.pipeline.ingest_many(offers)  # raises when nothing could be taken into custody
            for path in kept:
                path.unlink(missing_ok=True)
                self._seen.pop(path, None)
            taken += len(kept)
        self.ingested += taken
        return taken

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.scan_once()
            except Exception as exc:  # catalog or disk trouble: the files stay, tried again
                logger.warning("hand-over folder scan failed (%s)", exc.__class__.__name__)
            stop.wait(interval)


class Gateway:
    """One edge's service: receivers, forwarder and heartbeat over one outbox."""

    def __init__(self, settings: Settings, config: EdgeConfig, options: GatewayOptions) -> None:
        from medai.collection.pipeline import IngestPipeline
        from medai.edge.forwarder import Forwarder, parse_windows
        from medai.edge.heartbeat import Heartbeat
        from medai.edge.outbox import Outbox, outbox_path

        self.settings, self.config, self.options = settings, config, options
        windows = parse_windows(settings.edge_windows)
        self.pipeline = IngestPipeline.from_settings(settings)
        self.outbox = Outbox(outbox_path(settings.resolved_home))
        self.client = config.client()
        self._fill_lock = threading.Lock()
        self.forwarder = Forwarder(
            self.outbox,
            self.pipeline.store,
            self.client,
            config.site,
            fill=self.fill,
            batch_instances=settings.edge_batch_instances,
            batch_bytes=settings.edge_batch_bytes,
            bandwidth=settings.edge_bandwidth_bytes_per_s,
            windows=windows,
            backoff_max=settings.edge_backoff_max_seconds,
        )
        self.heartbeat = Heartbeat(
            self.outbox,
            self.pipeline.engine,
            self.client,
            interval=settings.edge_heartbeat_seconds,
            before=self.fill,
        )
        self.listener: StorageListener | None = None
        self.watcher = (
            FolderWatcher(
                self.pipeline,
                options.watch,
                config.site,
                settle_seconds=options.watch_settle_seconds,
            )
            if options.watch is not None
            else None
        )
        self.poller = (
            PullPoller(settings, config.site, options.pull) if options.pull is not None else None
        )
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    def fill(self) -> int:
        """Enqueue what the catalog has that the outbox lacks (all of it)."""
        added = 0
        with self._fill_lock:
            while True:
                n = self.outbox.fill(self.pipeline.engine)
                added += n
                if n == 0:
                    return added

    def site_ae_titles(self) -> dict[str, str]:
        """The calling AE titles the listener accepts: this edge's site's only."""
        from medai.collection.receivers.cstore import site_by_ae_title

        return {t: s for t, s in site_by_ae_title(self.pipeline).items() if s == self.config.site}

    def start(self) -> None:
        """Start the listener, the watcher, the forwarder and the heartbeat.

        Raises
        ------
        OSError
            If the listener's port cannot be bound.
        """
        from medai.collection.receivers.cstore import StorageListener, site_client_identities

        self.fill()  # whatever arrived before a crash is enqueued before anything else
        if self.options.port is not None:
            quiet = self.options.quiet_seconds or self.settings.study_quiet_seconds
            titles = self.site_ae_titles()
            listener = StorageListener(
                self.pipeline,
                self.options.ae_title,
                titles,
                quiet_seconds=quiet,
                ssl_context=self.options.ssl_context,
                client_identities={
                    title: certs
                    for title, certs in site_client_identities(self.pipeline).items()
                    if title in titles
                },
            )
            listener.start(self.options.host, self.options.port)
            self.listener = listener
        runners = [("forwarder", self.forwarder.run), ("heartbeat", self.heartbeat.run)]
        if self.watcher is not None:
            runners.append(("watcher", self.watcher.run))
        if self.poller is not None:
            runners.append(("pull", self.poller.run))
        for name, target in runners:
            thread = threading.Thread(
                target=supervised,
                args=(name, target, self.stop_event),
                name=f"edge-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, hurry: threading.Event | None = None) -> None:
        """Stop receiving (draining associations), then the threads; close everything."""
        try:
            if self.listener is not None:
                self.listener.stop(self.options.drain_seconds, hurry=hurry)
        finally:
            self.stop_event.set()
            for thread in self._threads:
                thread.join(timeout=30)
            self.client.close()
            self.outbox.close()
            self.pipeline.engine.dispose()
