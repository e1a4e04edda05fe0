"""DICOMweb pull: fetch a site's studies in a date window from its archive, resumably.

The archive is searched and read through
:class:`~medai.collection.receivers.dicomweb_archive.DicomwebSource` (QIDO-RS, WADO-RS, retries
with back-off, cut downloads detected). Each instance's Part 10 bytes are offered to
the :class:`~medai.collection.pipeline.IngestPipeline` (source ``dicomweb-pull``,
in batches: one catalog transaction each), which stores, de-duplicates or
quarantines it; each run is an :class:`~medai.catalog.models.ImportRun` whose
``inputs_found`` is the number of instances it downloaded, so ``medai collect
verify`` accounts for every one.

Resuming. A pull is identified by its site, URL (without credentials) and date
window. Its state is a :class:`~medai.collection.receivers.pull_checkpoint.PullCheckpoint`
in the ``checkpoint`` column of the run's row, written after every study and after
every batch that quarantined something. A run of the same pull starts from the newest
earlier checkpoint: studies done are skipped without listing them (unless the archive
now reports more instances for them), and within a study, instances already
catalogued (or quarantined by an earlier run) are not downloaded again. A crash
between a batch's commit and the next checkpoint costs nothing but a listing: those
instances are catalogued. The checkpoint names studies and instances only by their
pseudonymized UIDs: no original UID, name or credential reaches the catalog or the log.

A pull that stops on a :class:`~medai.errors.PullError` (refused, or retries
exhausted) first offers every instance it had fully downloaded, then finishes its run
with the error in the checkpoint; running the same pull again resumes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from medai.audit import actors, append_audit, audited_transaction
from medai.catalog.db import session_factory
from medai.catalog.models import ImportRun, Instance, utcnow
from medai.collection.labels import rematch_labels
from medai.collection.outcomes import Offer, Outcome, OutcomeCounts
from medai.collection.pipeline import IngestPipeline
from medai.collection.pseudonymize import Pseudonymizer
from medai.collection.receivers.dicomweb_archive import (
    DicomwebSource,
    RemoteStudy,
    quiet_identifying_loggers,
)
from medai.collection.receivers.dicomweb_retry import RetryPolicy
from medai.collection.receivers.pull_checkpoint import (
    SOURCE,
    PullCheckpoint,
    previous_checkpoint,
)
from medai.config import Settings, get_settings
from medai.errors import PullError, PullStopped, TooLarge

__all__ = [
    "SOURCE",
    "PullCheckpoint",
    "PullError",
    "PullSummary",
    "RetryPolicy",
    "pull_site",
]

logger = logging.getLogger(__name__)

ACTOR = actors.system("pull")
_BATCH_SIZE = 16  # instances per catalog transaction, as in the folder import
_BATCH_BYTES = 256 * 1024**2  # ... or fewer when they are large
_QUERY_CHUNK = 500  # pseudonymized UIDs per catalog look-up


# -- the pull ---------------------------------------------------------------------------


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


class _Pull:
    """One run: walks the studies, feeds the pipeline in batches, keeps the checkpoint."""

    def __init__(
        self,
        *,
        pipeline: IngestPipeline,
        source: DicomwebSource,
        pseudonymizer: Pseudonymizer,
        site: str,
        checkpoint: PullCheckpoint,
        summary: PullSummary,
        max_bytes: int,
        on_outcome: Callable[[Outcome], None] | None,
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.pseudo = pseudonymizer
        self.site = site
        self.checkpoint = checkpoint
        self.summary = summary
        self.max_bytes = max_bytes
        self.on_outcome = on_outcome
        self.pending: list[_Pending] = []
        self.pending_bytes = 0
        self._sessions = session_factory(pipeline.engine)
        self._reads = session_factory(pipeline.engine.execution_options(sqlite_begin="DEFERRED"))

    def study(self, study: RemoteStudy) -> None:
        """Pull what is missing of one study, then mark it done."""
        key = self.pseudo.uid(study.uid)
        done = self.checkpoint.done.get(key)
        if done is not None and (study.instances is None or study.instances <= done):
            self.summary.studies_skipped += 1
            return
        listed = {self.pseudo.uid(i.sop_uid): i for i in self.source.instances(study)}
        skip = self._catalogued(list(listed)) | set(self.checkpoint.quarantined.get(key, ()))
        todo = [(sop, instance) for sop, instance in listed.items() if sop not in skip]
        self.summary.instances_found += len(listed)
        self.summary.instances_skipped += len(listed) - len(todo)
        for sop, instance in todo:
            data = self.source.retrieve(instance, self.max_bytes)
            if isinstance(data, TooLarge):
                offer = Offer(b"", self.site, SOURCE, self.summary.run_id, rejected=data)
            else:
                offer = Offer(data, self.site, SOURCE, self.summary.run_id)
            self.pending.append(_Pending(key, sop, offer))
            self.pending_bytes += len(offer.data)
            if len(self.pending) >= _BATCH_SIZE or self.pending_bytes >= _BATCH_BYTES:
                self.flush()
        self.flush()
        self.checkpoint.done[key] = len(listed)
        self.summary.studies_pulled += 1
        self.save()
        logger.info(
            "pulled study %s: %d instances, %d already here",
            key,
            len(listed),
            len(listed) - len(todo),
        )

    def flush(self) -> None:
        """Offer the downloaded instances to the pipeline (one catalog transaction)."""
        if not self.pending:
            return
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

    def save(self) -> None:
        """Write the checkpoint and the inputs accounted for so far to the run's row."""
        with self._sessions.begin() as session:
            session.execute(
                update(ImportRun)
                .where(ImportRun.id == self.summary.run_id)
                .values(checkpoint=self.checkpoint.to_json(), inputs_found=self.summary.downloaded)
            )

    def _catalogued(self, sop_uids: list[str]) -> set[str]:
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


def pull_site(
    site: str,
    url: str,
    since: dt.date,
    until: dt.date | None = None,
    *,
    settings: Settings | None = None,
    headers: Mapping[str, str] | None = None,
    retry: RetryPolicy | None = None,
    timeout: tuple[float, float] = (10.0, 120.0),
    page_size: int = 200,
    fresh: bool = False,
    ca_file: Path | None = None,
    on_total: Callable[[int], None] | None = None,
    on_study: Callable[[], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> PullSummary:
    """Pull ``site``'s studies dated ``since``..``until`` from its DICOMweb archive.

    Parameters
    ----------
    site
        The campaign site id the archive belongs to.
    url
        The archive's DICOMweb root; ``user:password@`` becomes basic authentication.
    since, until
        The StudyDate window, both days included; ``until`` None leaves it open.
    headers
        Extra request headers (e.g. ``{"Authorization": "Bearer ..."}``).
    retry, timeout, page_size
        See :class:`DicomwebSource`.
    fresh
        Ignore earlier checkpoints of this pull (instances already catalogued are
        still not downloaded again).
    ca_file
        PEM CA certificate(s) an ``https://`` archive's certificate is verified against
        (default: the system's CAs).
    on_total, on_study, on_outcome
        Progress: the number of studies found, each study finished or skipped, and
        each instance's outcome.

    Returns
    -------
    PullSummary

    Raises
    ------
    UnknownSite, CampaignError, KeyFileError
        Before anything is fetched.
    PullError
        Before anything is fetched: the URL is unusable, or ``until`` is before ``since``.
    PullStopped
        When the archive refuses, or stays unreachable through every retry. What was
        pulled until then is kept and accounted for (``summary``); the same pull run
        again resumes.
    """
    settings = settings or get_settings()
    if until is not None and until < since:
        raise PullError(f"--until {until} is before --since {since}")
    pipeline = IngestPipeline.from_settings(settings)  # fails early on set-up problems
    pipeline.check_site(site)
    pseudonymizer = pipeline.deidentifier.pseudonymizer  # its key checked by the pipeline
    quiet_identifying_loggers()
    with closing(
        DicomwebSource(
            url,
            headers=headers,
            retry=retry,
            timeout=timeout,
            page_size=page_size,
            ca_file=ca_file,
        )
    ) as source:
        identity = PullCheckpoint.identity(site, source.url, since, until)
        previous = None if fresh else previous_checkpoint(pipeline.engine, site, identity)
        checkpoint = PullCheckpoint(
            pull=identity,
            url=source.url,
            since=since.isoformat(),
            until=until.isoformat() if until else None,
            done=dict(previous.done) if previous else {},
            quarantined={k: list(v) for k, v in previous.quarantined.items()} if previous else {},
        )
        started = time.perf_counter()
        summary = PullSummary(run_id=_start_run(pipeline, site, checkpoint))
        pull = _Pull(
            pipeline=pipeline,
            source=source,
            pseudonymizer=pseudonymizer,
            site=site,
            checkpoint=checkpoint,
            summary=summary,
            max_bytes=settings.max_instance_bytes,
            on_outcome=on_outcome,
        )
        try:
            studies = source.studies(since, until)
            checkpoint.studies_found = summary.studies_found = len(studies)
            if on_total:
                on_total(len(studies))
            for study in studies:
                pull.study(study)
                if on_study:
                    on_study()
        except PullError as exc:
            # Keep every instance fully downloaded so far; the run ends balanced.
            pull.flush()
            checkpoint.error = str(exc)
            _finish_run(pull, time.perf_counter() - started)
            raise PullStopped(
                f"{exc}. What was pulled is kept; run the same pull again to resume it", summary
            ) from None
        checkpoint.complete = summary.complete = True
        _finish_run(pull, time.perf_counter() - started)
        return summary


def _start_run(pipeline: IngestPipeline, site: str, checkpoint: PullCheckpoint) -> int:
    with audited_transaction(pipeline.engine) as session:
        run = ImportRun(site_id=site, source=SOURCE, checkpoint=checkpoint.to_json())
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


def _finish_run(pull: _Pull, seconds: float) -> None:
    summary = pull.summary
    summary.retries = pull.source.retries
    summary.seconds = seconds
    with audited_transaction(pull.pipeline.engine) as session:
        session.execute(
            update(ImportRun)
            .where(ImportRun.id == summary.run_id)
            .values(
                checkpoint=pull.checkpoint.to_json(),
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
                "complete": pull.checkpoint.complete,
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
