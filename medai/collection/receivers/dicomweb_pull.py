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
from pathlib import Path

from medai.collection.outcomes import Offer, Outcome
from medai.collection.pipeline import IngestPipeline
from medai.collection.pseudonymize import Pseudonymizer
from medai.collection.receivers.dicomweb_archive import (
    DicomwebSource,
    RemoteStudy,
    quiet_identifying_loggers,
)
from medai.collection.receivers.dicomweb_retry import RetryPolicy
from medai.collection.receivers.pull_checkpoint import SOURCE, PullCheckpoint
from medai.collection.receivers.pull_run import (
    PullBatches,
    PullSummary,
    finish_run,
    resume_checkpoint,
    start_run,
    stopped_run,
)
from medai.config import Settings, get_settings
from medai.errors import PullError, TooLarge

__all__ = [
    "SOURCE",
    "PullCheckpoint",
    "PullError",
    "PullSummary",
    "RetryPolicy",
    "pull_site",
]

logger = logging.getLogger(__name__)


# -- the pull ---------------------------------------------------------------------------


class _Pull(PullBatches):
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
        super().__init__(
            pipeline=pipeline, checkpoint=checkpoint, summary=summary, on_outcome=on_outcome
        )
        self.source = source
        self.pseudo = pseudonymizer
        self.site = site
        self.max_bytes = max_bytes

    def study(self, study: RemoteStudy) -> None:
        """Pull what is missing of one study, then mark it done."""
        key = self.pseudo.uid(study.uid)
        done = self.checkpoint.done.get(key)
        if done is not None and (study.instances is None or study.instances <= done):
            self.summary.studies_skipped += 1
            return
        listed = {self.pseudo.uid(i.sop_uid): i for i in self.source.instances(study)}
        skip = self.catalogued(list(listed)) | set(self.checkpoint.quarantined.get(key, ()))
        todo = [(sop, instance) for sop, instance in listed.items() if sop not in skip]
        self.summary.instances_found += len(listed)
        self.summary.instances_skipped += len(listed) - len(todo)
        for sop, instance in todo:
            data = self.source.retrieve(instance, self.max_bytes)
            if isinstance(data, TooLarge):
                offer = Offer(b"", self.site, SOURCE, self.summary.run_id, rejected=data)
            else:
                offer = Offer(data, self.site, SOURCE, self.summary.run_id)
            self.add(key, sop, offer)
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
        checkpoint = resume_checkpoint(
            pipeline, site, SOURCE, source.url, since, until, fresh=fresh
        )
        started = time.perf_counter()
        summary = PullSummary(run_id=start_run(pipeline, site, SOURCE, checkpoint))
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
            raise stopped_run(pull, exc, time.perf_counter() - started, source.retries) from None
        checkpoint.complete = summary.complete = True
        finish_run(pull, time.perf_counter() - started, source.retries)
        return summary
