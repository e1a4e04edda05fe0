"""One run of a pull (DICOMweb or DIMSE): batches into the pipeline, checkpoint, accounting.

Both pulls fetch a site's studies from its archive and differ only in how they search and
retrieve. What they share lives here: :class:`PullBatches` offers the fetched instances to
the :class:`~medai.collection.pipeline.IngestPipeline` in batches (one catalog transaction
each), keeps the :class:`~medai.collection.receivers.pull_checkpoint.PullCheckpoint` in the
run's :class:`~medai.catalog.models.ImportRun` row, and :func:`start_run` /
:func:`finish_run` open and close that row with their audit records, so that ``medai
collect verify`` accounts for every instance a run fetched.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import session_factory
from medai.catalog.models import ImportRun, Instance, utcnow
from medai.collection.labels import rematch_labels
from medai.collection.outcomes import Offer, Outcome, OutcomeCounts
from medai.collection.pipeline import IngestPipeline
from medai.collection.receivers.pull_checkpoint import PullCheckpoint, previous_checkpoint
from medai.errors import PullError, PullStopped

__all__ = [
    "ACTOR",
    "PullBatches",
    "PullSummary",
    "finish_run",
    "resume_checkpoint",
    "start_run",
    "stopped_run",
]

logger = logging.getLogger(__name__)

ACTOR = actors.system("pull")
_BATCH_SIZE = 16  # instances per catalog transaction, as in the folder import
_BATCH_BYTES = 256 * 1024**2  # ... or fewer when they are large
_QUERY_CHUNK = 500  # pseudonymized UIDs per catalog look-up


@dataclass(kw_only=True)
class PullSummary(OutcomeCounts):
    """What one run of a pull did."""

    run_id: int
    studies_found: int = 0
    studies_pulled: int = 0  # completed by this run
    studies_skipped: int = 0  # completed by an earlier run, unchanged since
    instances_found: int = 0  # listed in the studies this run looked into
    instances_skipped: int = 0  # already catalogued or quarantined: not downloaded
    retries: int = 0
    seconds: float = 0.0
    complete: bool = False

    @property
    def downloaded(self) -> int:
        """Instances fetched and offered to the pipeline (this run's inputs)."""
        return self.accounted


@dataclass
class _Pending:
    study: str  # pseudonymized UIDs
    sop: str
    offer: Offer


class PullBatches:
    """Feeds one run's fetched instances to the pipeline in batches; keeps the checkpoint."""

    def __init__(
        self,
        *,
        pipeline: IngestPipeline,
        checkpoint: PullCheckpoint,
        summary: PullSummary,
        on_outcome: Callable[[Outcome], None] | None,
    ) -> None:
        self.pipeline = pipeline
        self.checkpoint = checkpoint
        self.summary = summary
        self.on_outcome = on_outcome
        self.pending: list[_Pending] = []
        self.pending_bytes = 0
        self._sessions = session_factory(pipeline.engine)
        self._reads = session_factory(pipeline.engine.execution_options(sqlite_begin="DEFERRED"))

    def add(self, study: str, sop: str, offer: Offer) -> None:
        """Queue one fetched instance (pseudonymized UIDs); a full batch is offered at once."""
        self.pending.append(_Pending(study, sop, offer))
        self.pending_bytes += len(offer.data)
        if len(self.pending) >= _BATCH_SIZE or self.pending_bytes >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> list[Outcome]:
        """Offer the queued instances to the pipeline (one catalog transaction)."""
        if not self.pending:
            return []
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        outcomes = self.pipeline.ingest_many([item.offer for item in batch])
        quarantined = False
        for item, outcome in zip(batch, outcomes, strict=True):
            self.summary.add(outcome)
            if outcome.kind == "quarantined":
                held = self.checkpoint.quarantined.setdefault(item.study, [])
                if item.sop not in held:
                    held.append(item.sop)
                quarantined = True
            if self.on_outcome:
                self.on_outcome(outcome)
        if quarantined:
            self.save()
        return outcomes

    def save(self) -> None:
        """Write the checkpoint and the inputs accounted for so far to the run's row."""
        with self._sessions.begin() as session:
            session.execute(
                update(ImportRun)
                .where(ImportRun.id == self.summary.run_id)
                .values(checkpoint=self.checkpoint.to_json(), inputs_found=self.summary.downloaded)
            )

    def catalogued(self, sop_uids: list[str]) -> set[str]:
        """Which of these pseudonymized SOP Instance UIDs the catalog holds."""
        found: set[str] = set()
        with self._reads() as session:
            for start in range(0, len(sop_uids), _QUERY_CHUNK):
                chunk = sop_uids[start : start + _QUERY_CHUNK]
                found.update(
                    session.scalars(
                        select(Instance.sop_instance_uid).where(
                            Instance.sop_instance_uid.in_(chunk)
                        )
                    )
                )
        return found


def resume_checkpoint(
    pipeline: IngestPipeline,
    site: str,
    source: str,
    url: str,
    since: dt.date,
    until: dt.date | None,
    *,
    fresh: bool,
) -> PullCheckpoint:
    """The new run's checkpoint, carrying the progress of the same pull's earlier runs.

    ``fresh`` starts from nothing (what is catalogued is still not fetched again).
    """
    identity = PullCheckpoint.identity(site, url, since, until)
    previous = None if fresh else previous_checkpoint(pipeline.engine, site, identity, source)
    return PullCheckpoint(
        pull=identity,
        url=url,
        since=since.isoformat(),
        until=until.isoformat() if until else None,
        done=dict(previous.done) if previous else {},
        quarantined={k: list(v) for k, v in previous.quarantined.items()} if previous else {},
        windows_done=list(previous.windows_done) if previous else [],
    )


def start_run(pipeline: IngestPipeline, site: str, source: str, checkpoint: PullCheckpoint) -> int:
    """Open the run's ImportRun row (with its checkpoint) and audit the start; its id."""
    with audited_transaction(pipeline.engine) as session:
        run = ImportRun(site_id=site, source=source, checkpoint=checkpoint.to_json())
        session.add(run)
        session.flush()
        append_audit(
            session,
            actor=ACTOR,
            action="pull.start",
            subject=f"run:{run.id}",
            details={
                "site": site,
                "url": checkpoint.url,
                "since": checkpoint.since,
                "until": checkpoint.until,
                "studies_done_before": len(checkpoint.done),
            },
        )
        return run.id


def finish_run(batches: PullBatches, seconds: float, retries: int) -> None:
    """Close the run's row (checkpoint, inputs, end time), audit it, re-match labels."""
    summary = batches.summary
    summary.retries = retries
    summary.seconds = seconds
    with audited_transaction(batches.pipeline.engine) as session:
        session.execute(
            update(ImportRun)
            .where(ImportRun.id == summary.run_id)
            .values(
                checkpoint=batches.checkpoint.to_json(),
                inputs_found=summary.downloaded,
                finished_at=utcnow(),
            )
        )
        append_audit(
            session,
            actor=ACTOR,
            action="pull.finish",
            subject=f"run:{summary.run_id}",
            details={
                "complete": batches.checkpoint.complete,
                "studies_pulled": summary.studies_pulled,
                "studies_skipped": summary.studies_skipped,
                "stored": summary.stored,
                "duplicate": summary.duplicate,
                "quarantined": dict(summary.quarantined),
                "skipped": summary.instances_skipped,
                "retries": summary.retries,
            },
        )
        # Label-sheet rows imported before these images can find their studies now.
        rematch_labels(session, actor=ACTOR)


def stopped_run(
    batches: PullBatches, error: PullError, seconds: float, retries: int
) -> PullStopped:
    """Close a run that ``error`` stopped (its batches already flushed): the error to raise.

    What was pulled until then is kept and accounted for; the same pull run again resumes.
    """
    batches.checkpoint.error = str(error)
    finish_run(batches, seconds, retries)
    return PullStopped(
        f"{error}. What was pulled is kept; run the same pull again to resume it", batches.summary
    )
