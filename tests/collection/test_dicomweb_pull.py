"""`medai collect pull` against a real Orthanc (DICOMweb plugin) on loopback, on both databases.

The archive needs HTTP basic authentication. It is reached directly (QIDO-RS paged
with small pages), through a proxy that cuts downloads mid-way, or through a slow
proxy while the pull process is killed.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import Base, ImportRun, Instance, Study
from medai.cli import app
from medai.collection.accounting import verify_collection
from medai.collection.pseudonymize import Pseudonymizer, load_key
from medai.collection.receivers.dicomweb_archive import RetryPolicy, part10_from_response
from medai.collection.receivers.dicomweb_pull import SOURCE, PullCheckpoint, pull_site
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.errors import IncompleteResponse, PullError, PullStopped
from tests.utils.campaign import dataset_bytes, init_example_campaign
from tests.utils.orthanc import Orthanc
from tests.utils.tcp_proxy import CuttingProxy

pytestmark = pytest.mark.slow

SITE = "site-a"
USER, PASSWORD = "medai", "s3cret-pull-pw"
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)
SINCE = dt.date(2000, 1, 1)  # before every synthetic study
# CuttingProxy's downstream cut does not always reach the client as a reset (see the
# report to the lead); a short read timeout turns such a silent cut into a retry too.
CUT_TIMEOUT = (5.0, 1.5)


@dataclass(frozen=True)
class Archive:
    """The module's Orthanc, loaded with synthetic studies."""

    orthanc: Orthanc
    synth: SynthResult

    def url(self, port: int | None = None, *, credentials: bool = True) -> str:
        userinfo = f"{USER}:{PASSWORD}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{port or self.orthanc.http_port}/dicom-web"

    @property
    def instances(self) -> int:
        return self.synth.instances

    def dates(self) -> list[dt.date]:
        return sorted(record.study_date for record in self.synth.study_records)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    synth = generate(
        tmp_path_factory.mktemp("archive"),
        studies=4,
        seed=5,
        image_size=64,
        ct_slices=3,
        sites=(SITE,),
    )
    assert len({r.study_date for r in synth.study_records}) == synth.studies  # windows below
    with Orthanc(credentials=(USER, PASSWORD)) as orthanc:
        orthanc.upload_files(synth.files)
        yield Archive(orthanc, synth)


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


def _catalog_text(settings: Settings) -> str:
    """Every value of every catalog table, as one string to search."""
    engine = create_engine_for(settings.resolved_database_url)
    chunks: list[str] = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            chunks.extend(repr(tuple(row)) for row in connection.execute(select(table)))
    engine.dispose()
    return "\n".join(chunks)


def _instance_count(settings: Settings) -> int:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        count = session.scalar(select(func.count()).select_from(Instance)) or 0
    engine.dispose()
    return count


def _study_uids(settings: Settings) -> set[str]:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        uids = set(session.scalars(select(Study.study_uid)))
    engine.dispose()
    return uids


def _assert_complete_once(settings: Settings, archive: Archive) -> None:
    """Every archive instance catalogued exactly once, and the accounting proves it."""
    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.instances == archive.instances
    assert report.events.get("stored") == archive.instances
    assert report.events.get("quarantined", 0) == 0  # no cut download was offered


# -- against the archive directly -------------------------------------------------------------


def test_pull_catalogues_a_date_window_pseudonymized_and_resumes_to_nothing(
    campaign: Settings, archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    records = sorted(archive.synth.study_records, key=lambda r: r.study_date)
    early = records[:2]  # the window holds the two earliest studies only
    first = pull_site(
        SITE,
        archive.url(),
        early[0].study_date,
        early[1].study_date,
        settings=campaign,
        retry=FAST,
        page_size=1,  # one result per QIDO page: paging by offset
    )
    assert first.complete
    assert (first.studies_found, first.studies_pulled, first.studies_skipped) == (2, 2, 0)
    early_instances = sum(len(r.files) for r in early)
    assert (first.stored, first.duplicate, first.instances_skipped) == (early_instances, 0, 0)
    key = Pseudonymizer(load_key(campaign.resolved_key_file))
    assert _study_uids(campaign) == {key.uid(r.study_instance_uid) for r in early}

    # The open-ended window adds the rest only.
    everything = pull_site(SITE, archive.url(), SINCE, settings=campaign, retry=FAST, page_size=3)
    assert (everything.studies_found, everything.studies_pulled) == (4, 4)
    assert everything.instances_skipped == early_instances  # catalogued: not downloaded again
    assert everything.stored == everything.downloaded == archive.instances - early_instances
    assert _study_uids(campaign) == {
        key.uid(r.study_instance_uid) for r in archive.synth.study_records
    }

    # The same pull again resumes from its checkpoint: nothing left to do.
    again = pull_site(SITE, archive.url(), SINCE, settings=campaign, retry=FAST)
    assert again.complete
    assert (again.studies_skipped, again.studies_pulled, again.downloaded) == (4, 0, 0)
    _assert_complete_once(campaign, archive)

    # Only pseudonymized UIDs, and no name or password, in the catalog or the log.
    catalog = _catalog_text(campaign)
    logs = "\n".join(record.getMessage() for record in caplog.records)
    for secret in [*archive.synth.uid_values, *archive.synth.phi_values, PASSWORD]:
        assert secret not in catalog, f"{secret!r} in the catalog"
        assert secret not in logs, f"{secret!r} in the log"
    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        stored = list(session.scalars(select(ImportRun.checkpoint).order_by(ImportRun.id)))
    engine.dispose()
    checkpoint = PullCheckpoint.from_json(stored[-1])
    assert checkpoint is not None and checkpoint.complete
    assert checkpoint.url == archive.url(credentials=False)
    assert set(checkpoint.done) == _study_uids(campaign)


def test_refusals_are_clear_errors(campaign: Settings, archive: Archive) -> None:
    with pytest.raises(PullStopped, match="HTTP 401: authentication is required"):
        pull_site(SITE, archive.url(credentials=False), SINCE, settings=campaign, retry=FAST)
    wrong_root = archive.url().replace("/dicom-web", "/not-dicom-web")
    with pytest.raises(PullStopped, match="HTTP 404: check that the URL is the DICOMweb root"):
        pull_site(SITE, wrong_root, SINCE, settings=campaign, retry=FAST)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(PullStopped, match="cannot reach http://127.0.0.1:.*resume"):
        pull_site(SITE, archive.url(closed), SINCE, settings=campaign, retry=FAST)
    with pytest.raises(PullError, match="not a DICOMweb URL"):
        pull_site(SITE, "ftp://example.org/dicom-web", SINCE, settings=campaign)
    report = verify_collection(campaign)
    assert report.ok and report.inputs == 0, report.problems


def _variant(template: Path, study: str, series: str, *, burned_in: bool = False) -> bytes:
    """A new instance of ``template`` in the given study and series, dated 1999."""
    ds = pydicom.dcmread(template)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "19990301"
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    return dataset_bytes(ds)


def test_a_grown_study_is_listed_again_without_refetching_its_quarantined_instance(
    campaign: Settings, archive: Archive
) -> None:
    orthanc, template = archive.orthanc, archive.synth.files[0]
    study, series = generate_uid(), generate_uid()
    window = (dt.date(1999, 1, 1), dt.date(1999, 12, 31))  # before the module's studies
    added = [orthanc.upload(_variant(template, study, series, burned_in=True))["ID"]]
    try:
        first = pull_site(SITE, archive.url(), *window, settings=campaign, retry=FAST)
        assert first.complete and first.studies_pulled == 1
        assert (first.stored, dict(first.quarantined)) == (0, {"burned-in-annotation": 1})

        added.append(orthanc.upload(_variant(template, study, series))["ID"])  # it grows
        grown = pull_site(SITE, archive.url(), *window, settings=campaign, retry=FAST)
        assert (grown.studies_pulled, grown.instances_found) == (1, 2)
        # The quarantined instance is known from the checkpoint: only the new one comes.
        assert (grown.instances_skipped, grown.downloaded, grown.stored) == (1, 1, 1)

        again = pull_site(SITE, archive.url(), *window, settings=campaign, retry=FAST)
        assert (again.studies_skipped, again.downloaded) == (1, 0)
    finally:
        for orthanc_id in added:  # the module's archive, as it was
            orthanc.request("DELETE", f"/instances/{orthanc_id}")
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.events == {"stored": 1, "quarantined": 1}


def _words(output: str) -> str:
    """CLI output as single-spaced words, without rich's box drawing."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def test_the_command_pulls_and_explains_its_errors(campaign: Settings, archive: Archive) -> None:
    runner = CliRunner()
    pull = ["collect", "pull", "--site", SITE, "--url", archive.url()]
    done = runner.invoke(app, [*pull, "--since", "20000101", "--until", "2099-12-31"])
    assert done.exit_code == 0, done.output
    assert "pull complete" in done.output and "instances stored" in done.output
    assert PASSWORD not in done.output
    assert verify_collection(campaign).instances == archive.instances

    for args, message in [
        (["--since", "2022-02-30"], "'2022-02-30' is not a date: give YYYY-MM-DD or YYYYMMDD"),
        (["--since", "2022-02-01", "--until", "20220101"], "is before --since"),
        (["--since", "2022-02-01", "--header", "no colon"], "'Name: value'"),
    ]:
        refused = runner.invoke(app, [*pull, *args])
        assert refused.exit_code == 2 and message in _words(refused.output), args
    unknown = runner.invoke(app, [*pull[:3], "nowhere", *pull[4:], "--since", "20000101"])
    assert unknown.exit_code == 2 and "site-a, site-b, site-c" in unknown.output
    unreachable = runner.invoke(
        app,
        [*pull[:5], "http://127.0.0.1:9/dicom-web", "--since", "20000101", "--max-attempts", "1"],
    )
    output = _words(unreachable.output)
    assert unreachable.exit_code == 1, output
    assert "cannot reach http://127.0.0.1:9/dicom-web" in output
    assert "run the same pull again to resume it" in output


# -- faults -----------------------------------------------------------------------------------


def test_downloads_cut_mid_way_are_retried_never_offered_truncated(
    campaign: Settings, archive: Archive
) -> None:
    # Every cut connection drops 6 kB into what it carries, mid-way through an instance
    # of about 10 kB or a QIDO answer; later connections pass.
    with CuttingProxy(
        archive.orthanc.http_port, cut_after=6000, cuts=3, direction="downstream"
    ) as proxy:
        summary = pull_site(
            SITE,
            archive.url(proxy.port),
            SINCE,
            settings=campaign,
            retry=FAST,
            timeout=CUT_TIMEOUT,
        )
    assert proxy.cut_connections == 3
    assert summary.complete and summary.retries >= 3
    assert summary.stored == archive.instances
    _assert_complete_once(campaign, archive)


def test_pull_out_of_attempts_stops_clearly_then_the_same_pull_completes(
    campaign: Settings, archive: Archive
) -> None:
    tight = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05)
    with CuttingProxy(
        archive.orthanc.http_port, cut_after=4000, cuts=3, direction="downstream"
    ) as proxy:
        url = archive.url(proxy.port)
        with pytest.raises(PullStopped, match="kept failing.*run the same pull again") as stopped:
            pull_site(SITE, url, SINCE, settings=campaign, retry=tight, timeout=CUT_TIMEOUT)
        assert not stopped.value.summary.complete
        assert verify_collection(campaign).ok  # the stopped run is accounted for
        summary = pull_site(SITE, url, SINCE, settings=campaign, retry=tight, timeout=CUT_TIMEOUT)
    assert proxy.cut_connections == 3
    assert summary.complete
    _assert_complete_once(campaign, archive)


class _SlowProxy:
    """Forwards loopback connections to ``target_port``, each server chunk ``delay`` s late."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            for source, sink, slow in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, slow), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if slow:
                    time.sleep(self.delay)
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            sock.close()


def _latest_checkpoint(settings: Settings) -> PullCheckpoint | None:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        data = session.scalar(
            select(ImportRun.checkpoint)
            .where(ImportRun.source == SOURCE)
            .order_by(ImportRun.id.desc())
            .limit(1)
        )
    engine.dispose()
    return PullCheckpoint.from_json(data)


def test_killed_pull_resumes_from_its_checkpoint(campaign: Settings, archive: Archive) -> None:
    proxy = _SlowProxy(archive.orthanc.http_port, delay=0.15)
    url = archive.url(proxy.port, credentials=False)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medai.cli",
            "collect",
            "pull",
            "--site",
            SITE,
            "--url",
            url,
            "--since",
            "2000-01-01",
            "--header",
            f"Authorization: Basic {basic}",
        ],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the pull finished no study in time"
            checkpoint = _latest_checkpoint(campaign)
            if checkpoint is not None and checkpoint.done:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, output
    held = _instance_count(campaign)
    done = _latest_checkpoint(campaign)
    assert done is not None and not done.complete
    assert 1 <= held < archive.instances, "the kill came too late to test resuming"

    proxy.delay = 0.0
    try:
        resumed = pull_site(
            SITE,
            url,
            SINCE,
            settings=campaign,
            retry=FAST,
            headers={"Authorization": f"Basic {basic}"},
        )
    finally:
        proxy.close()
    assert resumed.complete
    assert resumed.studies_skipped >= len(done.done)  # from the checkpoint: not even listed
    assert resumed.downloaded == archive.instances - held  # nothing catalogued comes again
    assert resumed.duplicate == 0
    _assert_complete_once(campaign, archive)


# -- the WADO-RS answer parser ----------------------------------------------------------------

_BOUNDARY = "b0undary-42"
_TYPE = f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'
_PAYLOAD = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4


def _multipart(payload: bytes, *, length: bool = True) -> bytes:
    headers = b"Content-Type: application/dicom\r\n"
    if length:
        headers += f"Content-Length: {len(payload)}\r\n".encode()
    return (
        f"--{_BOUNDARY}\r\n".encode()
        + headers
        + b"\r\n"
        + payload
        + f"\r\n--{_BOUNDARY}--\r\n".encode()
    )


@pytest.mark.parametrize("length", [True, False])
def test_a_complete_answer_gives_the_instance(length: bool) -> None:
    body = _multipart(_PAYLOAD, length=length)
    assert part10_from_response(body, _TYPE) == _PAYLOAD
    assert part10_from_response(b"preamble\r\n" + body, _TYPE) == _PAYLOAD
    assert part10_from_response(_PAYLOAD, "application/dicom") == _PAYLOAD


@pytest.mark.parametrize("length", [True, False])
def test_an_answer_cut_anywhere_is_incomplete_never_an_instance(length: bool) -> None:
    body = _multipart(_PAYLOAD, length=length)
    # Every cut short of the closing delimiter's "--" (the CRLF after it is optional).
    for cut in range(len(body) - 2):
        with pytest.raises(IncompleteResponse):
            part10_from_response(body[:cut], _TYPE)


def test_answers_that_are_not_one_instance_are_errors() -> None:
    two = _multipart(_PAYLOAD)[: -len("--\r\n")] + b"\r\nContent-Type: application/dicom\r\n\r\n"
    with pytest.raises(PullError, match="several parts"):
        part10_from_response(two + _PAYLOAD + f"\r\n--{_BOUNDARY}--".encode(), _TYPE)
    with pytest.raises(PullError, match="no instance"):
        part10_from_response(f"--{_BOUNDARY}--\r\n".encode(), _TYPE)
    with pytest.raises(PullError, match="'text/html'"):
        part10_from_response(b"<html>login</html>", "text/html")


def test_retry_delays_grow_with_jitter_and_honour_retry_after() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(1, retry_after=30.0) == 30.0
    assert policy.delay(1, retry_after=1e6) == 300.0
