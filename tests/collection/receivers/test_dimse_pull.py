"""`medai collect pull --dimse` against real PACS: Orthanc and dcmtk's dcmqrscp, on loopback.

Orthanc serves C-FIND and C-MOVE (to medai's storage SCP, registered in its
DicomModalities) and C-GET; dcmqrscp serves C-FIND and C-MOVE from its own index, loaded
with storescu. The links are cut mid-transfer by the tests' CuttingProxy: in front of
medai's storage SCP (what the C-MOVE sends) and in front of the PACS (what a C-GET
receives). Every instance must end up catalogued exactly once, the accounting balanced.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medai.cli import app
from medai.collection.accounting import verify_collection
from medai.collection.receivers.dicomweb_retry import RetryPolicy
from medai.collection.receivers.dimse_pull import DimsePeer, pull_site_dimse
from medai.collection.receivers.pull_run import PullSummary
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.errors import PullError, PullStopped
from tests.utils.campaign import init_example_campaign
from tests.utils.dicom_net import free_port
from tests.utils.orthanc import Orthanc
from tests.utils.tcp_proxy import CuttingProxy

pytestmark = pytest.mark.slow

SITE = "site-a"
PACS_AE = "SITE_PACS"
MEDAI_AE = "MEDAI_PULL"
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)


@dataclass(frozen=True)
class Archive:
    orthanc: Orthanc
    synth: SynthResult

    @property
    def since(self) -> dt.date:
        return min(r.study_date for r in self.synth.study_records)

    @property
    def until(self) -> dt.date:
        return max(r.study_date for r in self.synth.study_records)

    def peer(self, port: int | None = None) -> str:
        return f"{PACS_AE}@127.0.0.1:{port or self.orthanc.dicom_port}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    synth = generate(
        tmp_path_factory.mktemp("pacs"),
        studies=4,
        seed=7,
        image_size=64,
        ct_slices=6,
        sites=(SITE,),
    )
    # Orthanc answers C-FIND/C-GET of any caller, and only when called by its own AE title.
    config = {
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomCheckCalledAet": True,
    }
    with Orthanc(aet=PACS_AE, extra_config=config) as orthanc:
        orthanc.upload_files(synth.files)
        yield Archive(orthanc, synth)


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


def _pull(
    campaign: Settings, archive: Archive, peer: str | None = None, **options: Any
) -> PullSummary:
    """A DIMSE pull of the archive's date range as MEDAI_AE; ``options`` go to pull_site_dimse."""
    return pull_site_dimse(
        SITE,
        peer or archive.peer(),
        archive.since,
        archive.until,
        settings=campaign,
        ae_title=MEDAI_AE,
        **options,
    )


def _assert_once(settings: Settings, instances: int, *, resent: bool = False) -> None:
    """Every instance catalogued once, the accounting balanced; none received twice unless
    ``resent`` (a study retrieved whole again)."""
    report = verify_collection(settings)
    assert report.ok, report.problems
    assert report.instances == instances
    assert report.events.get("stored") == instances
    assert report.events.get("quarantined", 0) == 0
    if not resent:
        assert report.events.get("duplicate", 0) == 0


def test_c_move_pull_catalogues_every_study_and_resumes_to_nothing(
    campaign: Settings, archive: Archive
) -> None:
    store_port = free_port()
    archive.orthanc.set_modality("medai", MEDAI_AE, "127.0.0.1", store_port)
    summary = _pull(
        campaign,
        archive,
        store_host="127.0.0.1",
        store_port=store_port,
        window_days=3,
        retry=FAST,
    )
    assert summary.complete
    assert summary.studies_found == summary.studies_pulled == archive.synth.studies
    assert summary.stored == archive.synth.instances
    _assert_once(campaign, archive.synth.instances)
    # Again: every window is in the past and done, so nothing is searched or fetched.
    again = _pull(campaign, archive, store_host="127.0.0.1", store_port=store_port, window_days=3)
    assert again.complete and again.downloaded == 0 and again.studies_found == 0
    _assert_once(campaign, archive.synth.instances)


def test_c_move_cut_mid_transfer_stops_then_a_rerun_stores_each_instance_once(
    campaign: Settings, archive: Archive
) -> None:
    store_port = free_port()
    # Orthanc's C-STOREs to medai cross the proxy, which drops any link 25 kB in: the
    # whole-study move of the CT study (six ~10 kB instances) is cut after two or so;
    # single instances pass.
    with CuttingProxy(store_port, cut_after=25_000, cuts=100, direction="upstream") as proxy:
        archive.orthanc.set_modality("medai", MEDAI_AE, "127.0.0.1", proxy.port)
        one_try = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0)

        def pull(retry: RetryPolicy) -> PullSummary:
            return _pull(
                campaign,
                archive,
                store_host="127.0.0.1",
                store_port=store_port,
                window_days=1000,
                retry=retry,
            )

        with pytest.raises(PullStopped, match="retrieve.*kept failing.*run the same pull again"):
            pull(one_try)
        assert verify_collection(campaign).ok  # the stopped run is accounted for
        summary = pull(FAST)
    assert proxy.cut_connections == 1
    assert summary.complete and summary.retries == 0
    # The cut study's instances that had arrived were listed, not retrieved again; the
    # others were moved one by one (each link short enough to pass).
    assert summary.instances_skipped >= 1
    _assert_once(campaign, archive.synth.instances)


def test_c_get_through_a_cutting_link_is_retried_to_completion(
    campaign: Settings, archive: Archive
) -> None:
    # The first connection is the (one) C-FIND, too short to be cut; the next two, C-GETs
    # (their association answer is ~7 kB), drop 14 kB in: part-way into an instance.
    with CuttingProxy(
        archive.orthanc.dicom_port, cut_after=14_000, cuts=3, direction="downstream"
    ) as proxy:
        summary = _pull(
            campaign,
            archive,
            archive.peer(proxy.port),
            retrieve="get",
            retry=FAST,
            timeout=10,
            window_days=1000,
        )
    assert proxy.cut_connections == 2
    assert summary.complete and summary.retries >= 1
    _assert_once(campaign, archive.synth.instances)


# -- dcmtk's dcmqrscp as the PACS --------------------------------------------------------------


@dataclass(frozen=True)
class Dcmqrscp:
    port: int  # dcmqrscp's
    store_port: int  # medai's storage SCP, behind ``proxy`` (what dcmqrscp's HostTable names)
    proxy: CuttingProxy


@pytest.fixture
def dcmqrscp(
    tmp_path: Path, archive: Archive, request: pytest.FixtureRequest
) -> Iterator[Dcmqrscp]:
    """dcmqrscp on a free port, loaded with the archive's files.

    Its C-MOVEs to medai cross a CuttingProxy that cuts the first ``request.param``
    connections (default none) 12 kB in.
    """
    port, store_port = free_port(), free_port()
    cuts = int(getattr(request, "param", 0))
    proxy = CuttingProxy(store_port, cut_after=12_000, cuts=cuts, direction="upstream")
    storage = tmp_path / "qr"
    storage.mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\n"
        f"medai = ({MEDAI_AE}, 127.0.0.1, {proxy.port})\n"
        f"loader = (LOADER, 127.0.0.1, {free_port()})\n"
        "HostTable END\nVendorTable BEGIN\nVendorTable END\n"
        "AETable BEGIN\n"
        f"{PACS_AE} {storage} RW (200, 1024mb) ANY\n"
        "AETable END\n"
    )
    proxy.__enter__()
    process = subprocess.Popen(
        ["dcmqrscp", "-c", str(config), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            ok = subprocess.run(
                ["echoscu", "-aet", "LOADER", "-aec", PACS_AE, "127.0.0.1", str(port)],
                capture_output=True,
            )
            if ok.returncode == 0:
                break
            time.sleep(0.1)
        # dcmqrscp takes uncompressed data only: dcmtk's dcmdrle decodes the RLE files.
        plain = []
        for n, path in enumerate(archive.synth.files):
            target = tmp_path / f"plain-{n}.dcm"
            subprocess.run(["dcmdrle", str(path), str(target)], check=True, capture_output=True)
            plain.append(str(target))
        subprocess.run(
            ["storescu", "-aet", "LOADER", "-aec", PACS_AE, "127.0.0.1", str(port), *plain],
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield Dcmqrscp(port, store_port, proxy)
    finally:
        process.terminate()
        process.wait(timeout=10)
        proxy.close()


@pytest.mark.parametrize("dcmqrscp", [0, 2], indirect=True, ids=["direct", "cut-twice"])
def test_c_move_pull_from_dcmqrscp(
    campaign: Settings, archive: Archive, dcmqrscp: Dcmqrscp, request: pytest.FixtureRequest
) -> None:
    store_port = dcmqrscp.store_port
    summary = _pull(
        campaign,
        archive,
        f"{PACS_AE}@127.0.0.1:{dcmqrscp.port}",
        store_host="127.0.0.1",
        store_port=store_port,
        window_days=400,
        retry=FAST,
    )
    assert summary.complete
    cuts = request.node.callspec.params["dcmqrscp"]
    assert dcmqrscp.proxy.cut_connections == cuts
    assert summary.retries >= cuts
    assert summary.stored == archive.synth.instances
    _assert_once(campaign, archive.synth.instances)


def test_c_get_pull_from_dcmqrscp(campaign: Settings, archive: Archive, dcmqrscp: Dcmqrscp) -> None:
    summary = _pull(
        campaign,
        archive,
        f"{PACS_AE}@127.0.0.1:{dcmqrscp.port}",
        retrieve="get",
        window_days=400,
        retry=FAST,
    )
    assert summary.complete and summary.stored == archive.synth.instances
    _assert_once(campaign, archive.synth.instances)


# -- errors and the command --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "PACS",
        "PACS@host",
        "@host:104",
        "PACS@host:0",
        "PACS@host:99999",
        "A_TITLE_LONGER_THAN_16@h:104",
    ],
)
def test_a_peer_that_is_not_ae_at_host_port_is_refused_clearly(text: str) -> None:
    with pytest.raises(PullError, match="AE@HOST:PORT"):
        DimsePeer.parse(text)


def test_the_command_pulls_and_explains_a_rejecting_pacs(
    campaign: Settings, archive: Archive
) -> None:
    store_port = free_port()
    archive.orthanc.set_modality("medai", MEDAI_AE, "127.0.0.1", store_port)
    base = [
        "collect",
        "pull",
        "--site",
        SITE,
        "--since",
        archive.since.isoformat(),
        "--until",
        archive.until.isoformat(),
        "--ae-title",
        MEDAI_AE,
        "--store-port",
        str(store_port),
        "--window-days",
        "30",
    ]
    result = CliRunner().invoke(app, [*base, "--dimse", archive.peer(), "--json"])
    assert result.exit_code == 0, result.output
    assert verify_collection(campaign).instances == archive.synth.instances
    # A PACS that does not know the calling AE title refuses: the error says what to check.
    wrong = CliRunner().invoke(
        app,
        [
            *base,
            "--dimse",
            f"OTHER_AE@127.0.0.1:{archive.orthanc.dicom_port}",
            "--max-attempts",
            "1",
            "--fresh",
        ],
    )
    assert wrong.exit_code != 0
    assert "rejected the association" in wrong.output and "OTHER_AE" in wrong.output
    both = CliRunner().invoke(app, [*base, "--dimse", archive.peer(), "--url", "http://x"])
    assert both.exit_code != 0 and "either" in both.output
