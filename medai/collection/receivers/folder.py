"""Folder and zip import: walk a site's hand-over, offer every file to the pipeline.

The walk happens first (so the run knows how many inputs it must account for),
then worker processes each build their own :class:`IngestPipeline` and ingest
inputs in parallel. A run interrupted at any point is simply run again: inputs
already catalogued come back as duplicates, nothing is stored or quarantined twice.

Only regular files are inputs (:mod:`.folder_inputs`): links, FIFOs, sockets and devices
are never opened, and are counted per reason in the summary's ``refused`` (not inputs, so
the accounting of inputs is untouched). A path that yields no input at all is an error.
Worker processes die with the import (see :func:`_die_with_parent`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.models import ImportRun, utcnow
from medai.collection.labels import rematch_labels
from medai.collection.outcomes import Offer, Outcome, OutcomeCounts
from medai.collection.pipeline import IngestPipeline
from medai.collection.receivers.folder_inputs import (
    InputReader,
    InputRef,
    OversizedInput,
    Unreadable,
    iter_inputs,
    read_input,
    walk_inputs,
)
from medai.config import Settings, get_settings
from medai.errors import MedaiError, NothingToImport, Rejected
from medai.log_privacy import configure_worker

__all__ = [
    "ImportSummary",
    "InputRef",
    "OversizedInput",
    "Unreadable",
    "import_path",
    "iter_inputs",
    "read_input",
    "walk_inputs",
]

logger = logging.getLogger(__name__)

SOURCE = "folder"
ACTOR = actors.system("import")
_MIN_INPUTS_PER_WORKER = 16
# Inputs per catalog transaction: amortizes the commit, and bounds what a crash
# makes a re-run redo.
_BATCH_SIZE = 16
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(kw_only=True)
class ImportSummary(OutcomeCounts):
    run_id: int
    inputs: int
    seconds: float = 0.0
    # Entries never read, by reason (symlink-outside-root, fifo, device, ...): not inputs.
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def offered(self) -> int:
        return self.accounted


# -- worker processes --------------------------------------------------------------

_worker_pipeline: IngestPipeline | None = None
_worker_reader: InputReader | None = None  # kept open: a zip's members in one pass
_worker_parent = 0


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when the import that started it dies, even by SIGKILL.

    Otherwise a killed import leaves its workers blocked forever on the task queue, whose
    pipe they hold both ends of. Linux: the kernel sends SIGKILL (PR_SET_PDEATHSIG);
    elsewhere a thread watches the parent pid. Either way, a parent already gone by now
    (the race before prctl) is caught by comparing the parent pid.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(settings_json: str, parent: int) -> None:
    global _worker_pipeline, _worker_reader, _worker_parent
    _die_with_parent(parent)
    _worker_parent = parent
    settings = Settings.model_validate_json(settings_json)
    configure_worker(settings.log_level)  # a spawned worker has no handler that withholds values
    _worker_pipeline = IngestPipeline.from_settings(settings)
    _worker_reader = _reader(settings)


def _ingest_batch_in_worker(refs: list[InputRef], site: str, run_id: int) -> list[Outcome]:
    assert _worker_pipeline is not None and _worker_reader is not None, "worker not initialised"
    if os.getppid() != _worker_parent:  # the import is gone: nobody will read the outcomes
        os._exit(1)
    return _ingest_batch(_worker_pipeline, refs, site, run_id, _worker_reader)


def _reader(settings: Settings) -> InputReader:
    return InputReader(settings.max_instance_bytes, settings.max_inflate_ratio)


def _offer(ref: InputRef, site: str, run_id: int, reader: InputReader) -> Offer:
    try:
        data = reader.read(ref)
    except Rejected as exc:
        raw = exc.raw if isinstance(exc, OversizedInput) else b""
        return Offer(raw, site, SOURCE, run_id, ref.name, rejected=exc)
    return Offer(data, site, SOURCE, run_id, ref.name)


def _ingest_batch(
    pipeline: IngestPipeline, refs: list[InputRef], site: str, run_id: int, reader: InputReader
) -> list[Outcome]:
    return pipeline.ingest_many([_offer(ref, site, run_id, reader) for ref in refs])


def _batches(refs: list[InputRef], size: int) -> Iterator[list[InputRef]]:
    for start in range(0, len(refs), size):
        yield refs[start : start + size]


# -- the run ---------------------------------------------------------------------------


def import_path(
    root: Path,
    site: str,
    *,
    settings: Settings | None = None,
    workers: int | None = None,
    on_total: Callable[[int], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> ImportSummary:
    """Import every file and zip member below ``root`` for ``site``.

    Parameters
    ----------
    root
        A folder, a zip file or a single file.
    site
        The campaign site id.
    workers
        Worker processes; ``None`` takes the setting (0 there = one per CPU core).
    on_total, on_outcome
        Progress callbacks: the number of inputs found, then each outcome.

    Raises
    ------
    UnknownSite, CampaignError, KeyFileError
        Before anything is offered.
    NothingToImport
        When ``root`` holds no regular file (an empty folder, a device, a FIFO), before a
        run is recorded.
    """
    settings = settings or get_settings()
    if not root.exists():
        raise MedaiError(f"{root} does not exist: give a folder, a zip file or a DICOM file")
    pipeline = IngestPipeline.from_settings(settings)  # fails early on set-up problems
    pipeline.check_site(site)
    started = time.perf_counter()
    refs, refused = walk_inputs(root, max_zip_members=settings.max_zip_members)
    if not refs:
        raise NothingToImport(_nothing_message(root, refused))
    if on_total:
        on_total(len(refs))
    run_id = _start_run(pipeline, site, len(refs), root, refused)
    summary = ImportSummary(run_id=run_id, inputs=len(refs), refused=refused)

    def record(outcome: Outcome) -> None:
        summary.add(outcome)
        if on_outcome:
            on_outcome(outcome)

    count = workers if workers is not None else settings.import_workers
    # One more worker than cores: while one waits on fsync, the cores stay busy.
    count = count or (os.cpu_count() or 1) + 1
    # Starting worker processes costs seconds; a small hand-over is faster in-process.
    if count <= 1 or len(refs) < count * _MIN_INPUTS_PER_WORKER:
        with _reader(settings) as reader:
            for batch in _batches(refs, _BATCH_SIZE):
                for outcome in _ingest_batch(pipeline, batch, site, run_id, reader):
                    record(outcome)
    else:
        # Workers open their own connections: none may be inherited across fork.
        pipeline.engine.dispose()
        _run_pool(refs, site, run_id, settings, count, record)
    _finish_run(pipeline, run_id, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _run_pool(
    refs: list[InputRef],
    site: str,
    run_id: int,
    settings: Settings,
    workers: int,
    record: Callable[[Outcome], None],
) -> None:
    context = _worker_context()
    in_flight_limit = workers * 2  # bounded, so memory stays flat however many inputs
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(settings.model_dump_json(), os.getpid()),
    ) as pool:
        pending: set[Future[list[Outcome]]] = set()
        for batch in _batches(refs, _BATCH_SIZE):
            if len(pending) >= in_flight_limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    for outcome in future.result():
                        record(outcome)
            pending.add(pool.submit(_ingest_batch_in_worker, batch, site, run_id))
        for future in pending:
            for outcome in future.result():
                record(outcome)


def _worker_context() -> multiprocessing.context.BaseContext:
    """How to start workers: fork when that is safe (instant, modules already loaded).

    Forking is safe here only when this process runs no other thread (a lock held
    by another thread would stay locked in the child) and holds no database
    connection (the caller disposes its engine first); otherwise spawn.
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _nothing_message(root: Path, refused: Counter[str]) -> str:
    found = ", ".join(f"{count} {reason}" for reason, count in sorted(refused.items()))
    why = f" (refused, never read: {found})" if found else ""
    return (
        f"{root} holds no regular file to import{why}: give a folder, a zip file or a DICOM "
        "file (links, FIFOs and devices are never read)"
    )


def _start_run(
    pipeline: IngestPipeline, site: str, inputs: int, root: Path, refused: Counter[str]
) -> int:
    with audited_transaction(pipeline.engine) as session:
        run = ImportRun(site_id=site, source=SOURCE, inputs_found=inputs)
        session.add(run)
        session.flush()
        # Folder names may identify a patient: the audit keeps the run, site and count only.
        append_audit(
            session,
            actor=ACTOR,
            action="import.start",
            subject=f"run:{run.id}",
            details={"site": site, "inputs": inputs, "refused": dict(refused)},
        )
        return run.id


def _finish_run(pipeline: IngestPipeline, run_id: int, summary: ImportSummary) -> None:
    with audited_transaction(pipeline.engine) as session:
        run = session.get_one(ImportRun, run_id)
        run.finished_at = utcnow()
        append_audit(
            session,
            actor=ACTOR,
            action="import.finish",
            subject=f"run:{run_id}",
            details={
                "stored": summary.stored,
                "duplicate": summary.duplicate,
                "quarantined": dict(summary.quarantined),
            },
        )
        # Label-sheet rows imported before these images can find their studies now.
        rematch_labels(session, actor=ACTOR)
