"""Bounded work per input: deflate and zip bombs, lying zips, many members, nested zips.

Every bomb here is a few hundred KB that inflates to hundreds of MB. Each must be refused
as ``too-large`` after inflating no more than its limit, the quarantine holding at most
the bytes received, never the inflated ones; and no medai process may pass 512 MB.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from medai.collection.pipeline import IngestPipeline
from medai.collection.receivers.folder import import_path
from medai.collection.receivers.folder_inputs import (
    InputReader,
    OversizedInput,
    Unreadable,
    walk_inputs,
)
from medai.collection.receivers.stow import identify_part
from medai.config import Settings
from medai.dicom.inflate import RATIO_GRACE_BYTES
from medai.dicom.read import parse_instance
from medai.errors import DecompressionBomb, TooLarge
from tests.utils.bombs import (
    deflate_bomb,
    many_member_zip,
    peak_rss_bytes,
    quarantined_bytes,
    zip_bomb,
)
from tests.utils.campaign import init_example_campaign

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MB = 1024 * 1024
CEILING = 512 * MB  # no medai process may pass it, whatever one input holds
T = TypeVar("T")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 300 MB CT instance, Deflated Explicit VR Little Endian: about 300 KB sent."""
    return deflate_bomb(300 * MB)


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One member of 400 MB of zeros: about 400 KB."""
    return zip_bomb(tmp_path_factory.mktemp("zip") / "handover.zip", 400 * MB)


def _peak(action: Callable[[], T]) -> tuple[T | BaseException, int]:
    """What ``action`` returned (or raised) and the most Python memory it held at once."""
    tracemalloc.start()
    try:
        result: T | BaseException = action()
    except BaseException as exc:  # returned, to be checked by the test
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


# -- deflated data sets ---------------------------------------------------------------------


def test_a_deflate_bomb_is_refused_past_its_limit_not_inflated_whole(bomb: bytes) -> None:
    assert len(bomb) < 400 * 1024
    refused, peak = _peak(lambda: parse_instance(bomb, max_bytes=2 * 1024**3))
    assert isinstance(refused, DecompressionBomb) and isinstance(refused, TooLarge)
    assert refused.reason_code == "too-large"
    assert "MEDAI_MAX_INFLATE_RATIO" in str(refused)
    # Inflation stopped at 200 x the ~300 KB received (60 MB), never 300 MB.
    assert refused.limit < 64 * MB
    assert peak < 2 * refused.limit
    # The ceiling applies too: under a smaller instance limit, inflation stops sooner.
    with pytest.raises(DecompressionBomb) as capped:
        parse_instance(bomb, max_bytes=RATIO_GRACE_BYTES // 2)
    assert capped.value.limit == RATIO_GRACE_BYTES // 2


def test_real_deflated_instances_still_parse() -> None:
    bundled = Path(str(get_testdata_file("image_dfl.dcm"))).read_bytes()
    assert parse_instance(bundled, max_bytes=2 * 1024**3).Rows
    # An all-black image deflates far past the ratio, but is small: accepted.
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.Rows = ds.Columns = 1024
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype=np.int16).tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    black = buffer.getvalue()
    assert len(ds.PixelData) / len(black) > 200
    assert parse_instance(black, max_bytes=2 * 1024**3).Rows == ds.Rows


def test_stow_reads_a_bombs_uids_without_inflating_it(bomb: bytes) -> None:
    """pydicom inflates a deflated data set whole, even to read three UIDs."""
    identity, peak = _peak(lambda: identify_part(bomb))
    assert not isinstance(identity, BaseException)
    assert identity.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert identity.sop_instance_uid and identity.study_instance_uid
    assert peak < 16 * MB


@SQLITE
def test_the_pipeline_quarantines_a_deflate_bomb_as_it_was_received(
    settings: Settings, bomb: bytes
) -> None:
    init_example_campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    outcome, peak = _peak(lambda: pipeline.ingest(bomb, "site-a", "c-store"))
    assert not isinstance(outcome, BaseException)
    assert (outcome.kind, outcome.reason_code) == ("quarantined", "too-large")
    assert quarantined_bytes(settings.resolved_quarantine_dir) == [len(bomb)]
    assert peak < 128 * MB
    pipeline.engine.dispose()


# -- zip members ------------------------------------------------------------------------------


def test_a_zip_bomb_member_is_refused_keeping_only_its_compressed_bytes(bomb_zip: Path) -> None:
    (ref,), _ = walk_inputs(bomb_zip)

    def read() -> bytes:
        with InputReader(2 * 1024**3) as reader:
            return reader.read(ref)

    refused, peak = _peak(read)
    assert isinstance(refused, OversizedInput)
    assert refused.reason_code == "too-large"
    assert 0 < len(refused.raw) < bomb_zip.stat().st_size
    assert peak < 128 * MB


def _lie_about_sizes(path: Path, *, compressed: int, uncompressed: int) -> None:
    """Rewrite the sizes the central directory declares for a zip's only member."""
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")
    struct.pack_into("<LL", data, entry + 20, compressed, uncompressed)
    path.write_bytes(bytes(data))


def test_declared_member_sizes_are_not_trusted(tmp_path: Path) -> None:
    # Declared huge: the ratio counts against what the file can hold, not the claim.
    huge = zip_bomb(tmp_path / "huge.zip", 100 * MB, zip64=False)
    _lie_about_sizes(huge, compressed=0x7FFFFFFF, uncompressed=0x7FFFFFFF)
    # Declared tiny: inflation stops at the declared size, and the member is damaged.
    tiny = zip_bomb(tmp_path / "tiny.zip", 100 * MB, zip64=False)
    _lie_about_sizes(tiny, compressed=tiny.stat().st_size // 2, uncompressed=1000)
    with InputReader(2 * 1024**3) as reader:
        with pytest.raises(OversizedInput) as refused:
            reader.read(walk_inputs(huge)[0][0])
        assert len(refused.value.raw) <= huge.stat().st_size
        with pytest.raises(Unreadable):
            reader.read(walk_inputs(tiny)[0][0])


@pytest.fixture
def zip_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The archives zipfile.ZipFile opens, recorded."""
    opened: list[str] = []
    original = zipfile.ZipFile.__init__

    def counting(self: zipfile.ZipFile, file: object, *args: object, **kwargs: object) -> None:
        opened.append(str(getattr(file, "name", file)))
        original(self, file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(zipfile.ZipFile, "__init__", counting)
    return opened


def test_a_zips_members_are_read_in_one_pass(tmp_path: Path, zip_opens: list[str]) -> None:
    """4,000 members took 45 s to read when each reopened the archive; now one pass."""
    archive = many_member_zip(tmp_path / "many.zip", 4000, b"member")
    zip_opens.clear()  # making it counts for nothing
    started = time.perf_counter()
    refs, _ = walk_inputs(archive)
    with InputReader(1024**3) as reader:
        assert {reader.read(ref) for ref in refs} == {b"member"}
    assert len(refs) == 4000
    assert len(zip_opens) == 2  # the walk lists it once, the reader opens it once
    assert time.perf_counter() - started < 10


def _lie_about_count(path: Path, count: int) -> None:
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, count, count)
    path.write_bytes(bytes(data))


@SQLITE
def test_a_zip_with_too_many_members_is_refused_unopened(
    settings: Settings, tmp_path: Path, zip_opens: list[str]
) -> None:
    folder = tmp_path / "handover"
    folder.mkdir()
    # It declares one member: the members are counted, not taken from the declaration.
    _lie_about_count(many_member_zip(folder / "parts.zip", 101), 1)
    many_member_zip(folder / "fine.zip", 3)
    zip_opens.clear()
    init_example_campaign(settings)
    limited = settings.model_copy(update={"max_zip_members": 100})
    refs, _ = walk_inputs(folder, max_zip_members=100)
    assert [ref.name for ref in refs if ref.refusal] == [str(folder / "parts.zip")]
    assert str(folder / "parts.zip") not in zip_opens  # never parsed

    summary = import_path(folder, "site-a", settings=limited, workers=1)
    assert summary.inputs == 4  # the refused zip is one input, the other's three members
    assert summary.quarantined["too-large"] == 1
    # Of the refused zip only a record is kept, never its bytes.
    assert quarantined_bytes(settings.resolved_quarantine_dir)[0] == 0


@SQLITE
def test_a_zip_inside_a_zip_is_never_expanded(
    settings: Settings, tmp_path: Path, bomb_zip: Path
) -> None:
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(bomb_zip, "inner.zip")
    init_example_campaign(settings)
    summary = import_path(outer, "site-a", settings=settings, workers=1)
    assert (summary.inputs, dict(summary.quarantined)) == (1, {"not-dicom": 1})
    # The inner zip as it was sent, never what it inflates to.
    assert quarantined_bytes(settings.resolved_quarantine_dir) == [bomb_zip.stat().st_size]


# -- end to end: the peak memory of the processes -----------------------------------------------


def _children_peak_rss(command: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``command`` under a wrapper; the peak RSS of the largest process it started."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "run = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(run.stdout + run.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(run.returncode)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, timeout=300
    )
    return run, int(run.stdout.strip() or 0) * 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.slow
@SQLITE
def test_importing_a_zip_bomb_stays_under_512_mb(
    settings: Settings, tmp_path: Path, bomb_zip: Path
) -> None:
    folder = tmp_path / "handover"
    folder.mkdir()
    shutil.copy(bomb_zip, folder / "bomb.zip")
    many_member_zip(folder / "more.zip", 40)  # enough inputs for worker processes
    init_example_campaign(settings)
    run, peak = _children_peak_rss(
        [sys.executable, "-m", "medai.cli", "collect", "import", "--site", "site-a",
         "--workers", "2", "--json", str(folder)]
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert 0 < peak < CEILING, f"peak RSS {peak / MB:.0f} MB"
    sizes = quarantined_bytes(settings.resolved_quarantine_dir)
    assert max(sizes) <= bomb_zip.stat().st_size  # the compressed member at most


@pytest.fixture
def listener(settings: Settings) -> Iterator[tuple[int, int]]:
    from tests.utils.dicom_net import Listener

    init_example_campaign(settings)
    running = Listener()
    yield running.port, running.process.pid
    running.stop(timeout=30)


@pytest.mark.slow
@SQLITE
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_a_deflate_bomb_over_c_store_stays_under_512_mb(
    settings: Settings, listener: tuple[int, int], bomb: bytes, tmp_path: Path
) -> None:
    port, pid = listener
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bomb)
    run = subprocess.run(
        ["storescu", "--propose-deflated", "-aet", "STMARY_PACS", "-aec", "MEDAI",
         "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    peak = peak_rss_bytes(pid)
    assert peak < CEILING, f"peak RSS {peak / MB:.0f} MB"
    # Quarantined as received (dcmtk re-deflates it: about the size sent), never inflated.
    (size,) = quarantined_bytes(settings.resolved_quarantine_dir)
    assert size < 2 * len(bomb)
