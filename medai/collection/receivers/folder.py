"""Folder and zip import: walk a site's hand-over, offer every file to the pipeline.

The walk happens first (so the run knows how many inputs it must account for),
then worker processes each build their own :class:`IngestPipeline` and ingest
inputs in parallel. A run interrupted at any point is simply run again: inputs
already catalogued come back as duplicates, nothing is stored or quarantined twice.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.models import ImportRun, utcnow
from medai.collection.labels import rematch_labels
from medai.collection.outcomes import Offer, Outcome, OutcomeCounts
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings, get_settings
from medai.errors import MedaiError, Rejected, TooLarge

__all__ = [
    "ImportSummary",
    "InputRef",
    "OversizedInput",
    "Unreadable",
    "import_path",
    "iter_inputs",
    "read_input",
]

logger = logging.getLogger(__name__)

SOURCE = "folder"
ACTOR = actors.system("import")
_ZIP_MAGIC = b"PK\x03\x04"
_MIN_INPUTS_PER_WORKER = 16
# Inputs per catalog transaction: amortizes the commit, and bounds what a crash
# makes a re-run redo.
_BATCH_SIZE = 16
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the zip local file header, 30 bytes


class OversizedInput(TooLarge):
    """An input over the size limit, with what can be kept of it for the quarantine.

    ``raw`` is a zip member's compressed bytes (never inflated), or empty for a
    plain file too large to copy.
    """

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw


class Unreadable(Rejected):
    """A file that was found but could not be read (permissions, I/O error)."""

    reason_code = "unreadable"


@dataclass(frozen=True)
class InputRef:
    """One input: a plain file, or a member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


@dataclass(kw_only=True)
class ImportSummary(OutcomeCounts):
    run_id: int
    inputs: int
    seconds: float = 0.0

    @property
    def offered(self) -> int:
        return self.accounted


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def iter_inputs(root: Path) -> Iterator[InputRef]:
    """Every file below ``root`` (sorted, so runs are repeatable), expanding zip archives.

    A zip that cannot be opened is itself an input (it will be quarantined).
    """
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        if not _is_zip(path):
            yield InputRef(path)
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                members = [info.filename for info in archive.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError):
            yield InputRef(path)
            continue
        for member in members:
            yield InputRef(path, member)


def _raw_member(path: Path, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's compressed bytes as stored in the archive (never inflated).

    Used to quarantine a zip bomb without expanding it.
    """
    with path.open("rb") as handle:
        handle.seek(info.header_offset)
        header = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
        name_length, extra_length = header[-2], header[-1]
        handle.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        return handle.read(min(info.compress_size, limit))


def read_input(ref: InputRef, max_bytes: int) -> bytes:
    """The bytes of one input, never reading more than ``max_bytes`` + 1 of them.

    Raises
    ------
    OversizedInput
        When the input exceeds ``max_bytes``; its ``raw`` is what can be kept.
    Unreadable
        When the file cannot be read.
    """
    try:
        if ref.member is None:
            size = ref.path.stat().st_size
            if size > max_bytes:
                raise OversizedInput(f"file of {size} bytes exceeds the limit of {max_bytes}", b"")
            return ref.path.read_bytes()
        with zipfile.ZipFile(ref.path) as archive:
            info = archive.getinfo(ref.member)
            if info.file_size > max_bytes:
                raw = _raw_member(ref.path, info, max_bytes)
                raise OversizedInput(
                    f"zip member declares {info.file_size} bytes uncompressed "
                    f"({info.compress_size} compressed), over the limit of {max_bytes}",
                    raw,
                )
            with archive.open(info) as member:
                # The declared size can lie: never inflate past the limit.
                data = member.read(max_bytes + 1)
            if len(data) > max_bytes:
                raw = _raw_member(ref.path, info, max_bytes)
                raise OversizedInput(f"zip member inflates past the limit of {max_bytes}", raw)
            return data
    except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        # RuntimeError/NotImplementedError: encrypted members, unsupported compression.
        raise Unreadable(f"cannot read the input ({type(exc).__name__})") from exc


# -- worker processes --------------------------------------------------------------

_worker_pipeline: IngestPipeline | None = None
_worker_max_bytes = 0


def _init_worker(settings_json: str) -> None:
    global _worker_pipeline, _worker_max_bytes
    settings = Settings.model_validate_json(settings_json)
    _worker_pipeline = IngestPipeline.from_settings(settings)
    _worker_max_bytes = settings.max_instance_bytes


def _ingest_batch_in_worker(refs: list[InputRef], site: str, run_id: int) -> list[Outcome]:
    assert _worker_pipeline is not None, "worker not initialised"
    return _ingest_batch(_worker_pipeline, refs, site, run_id, _worker_max_bytes)


def _offer(ref: InputRef, site: str, run_id: int, max_bytes: int) -> Offer:
    try:
        data = read_input(ref, max_bytes)
    except Rejected as exc:
        raw = exc.raw if isinstance(exc, OversizedInput) else b""
        return Offer(raw, site, SOURCE, run_id, ref.name, rejected=exc)
    return Offer(data, site, SOURCE, run_id, ref.name)


def _ingest_batch(
    pipeline: IngestPipeline, refs: list[InputRef], site: str, run_id: int, max_bytes: int
) -> list[Outcome]:
    return pipeline.ingest_many([_offer(ref, site, run_id, max_bytes) for ref in refs])


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
    """
    settings = settings or get_settings()
    if not root.exists():
        raise MedaiError(f"{root} does not exist: give a folder, a zip file or a DICOM file")
    pipeline = IngestPipeline.from_settings(settings)  # fails early on set-up problems
    pipeline.check_site(site)
    started = time.perf_counter()
    refs = list(iter_inputs(root))
    if on_total:
        on_total(len(refs))
    run_id = _start_run(pipeline, site, len(refs), root)
    summary = ImportSummary(run_id=run_id, inputs=len(refs))

    def record(outcome: Outcome) -> None:
        summary.add(outcome)
        if on_outcome:
            on_outcome(outcome)

    count = workers if workers is not None else settings.import_workers
    # One more worker than cores: while one waits on fsync, the cores stay busy.
    count = count or (os.cpu_count() or 1) + 1
    # Starting worker processes costs seconds; a small hand-over is faster in-process.
    if count <= 1 or len(refs) < count * _MIN_INPUTS_PER_WORKER:
        for batch in _batches(refs, _BATCH_SIZE):
            for outcome in _ingest_batch(
                pipeline, batch, site, run_id, settings.max_instance_bytes
            ):
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
        initargs=(settings.model_dump_json(),),
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


def _start_run(pipeline: IngestPipeline, site: str, inputs: int, root: Path) -> int:
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
            details={"site": site, "inputs": inputs},
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
