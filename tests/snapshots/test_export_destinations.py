"""`medai snapshot export NAME --to DEST`: a DICOMDIR folder, Orthanc over STOW-RS and C-STORE.

Every instance must land (Orthanc holds exactly the snapshot's SOP Instance UIDs, byte for
byte where it keeps the file), the DICOMDIR must read with dcmtk, and an export stopped
part-way (a link cut by the tests' CuttingProxy, retries exhausted) must resume and send
only what was not confirmed.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import zlib
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.fileset import FileSet
from typer.testing import CliRunner

from medai.cli import app
from medai.collection.receivers.dicomweb_retry import RetryPolicy
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.errors import SnapshotError
from medai.snapshots import create_snapshot, load_snapshot
from medai.snapshots.destinations import destination_kind
from medai.snapshots.destinations_remote import StowDestination
from medai.snapshots.export import export_to, snapshot_keys
from medai.store import ObjectStore
from tests.utils.orthanc import Orthanc
from tests.utils.research import ingest_labelled
from tests.utils.tcp_proxy import CuttingProxy

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
ONE_TRY = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(
        tmp_path_factory.mktemp("synth"), studies=8, seed=11, image_size=32, ct_slices=3
    )


@pytest.fixture
def snapshot(settings: Settings, synth: SynthResult) -> Settings:
    """A catalog with every synthetic study, and snapshot ``share`` of it."""
    ingest_labelled(settings, synth, synth.label_sheets)
    create_snapshot("share", settings=settings)
    return settings


def _expected(settings: Settings) -> dict[str, str]:
    """SOP Instance UID -> sha256 of its stored bytes, for every instance of ``share``."""
    frame = load_snapshot("share", settings=settings)
    store = ObjectStore(settings.resolved_store_dir)
    out = {}
    for key in snapshot_keys(frame.to_dict("records")):
        data = store.read(key)
        out[str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)] = key
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- folder with a DICOMDIR --------------------------------------------------------------------


def test_folder_export_is_a_dicomdir_dcmtk_reads_with_every_instance(
    snapshot: Settings, tmp_path: Path
) -> None:
    expected = _expected(snapshot)
    out = tmp_path / "media"
    result = export_to("share", str(out), settings=snapshot)
    assert result.kind == "folder" and result.instances == result.sent == len(expected)
    # dcmtk reads the DICOMDIR and every file it references.
    dump = subprocess.run(
        ["dcmdump", "-q", "+P", "0004,1500", str(out / "DICOMDIR")],
        capture_output=True,
        text=True,
        check=True,
    )
    file_ids = [line.split("[", 1)[1].split("]", 1)[0] for line in dump.stdout.splitlines()]
    assert len(file_ids) == len(expected)
    files = [out / Path(*fid.split("\\")) for fid in file_ids]
    test = subprocess.run(["dcmftest", *map(str, files)], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout
    # Byte for byte the stored instances, nothing else in the tree.
    fileset = FileSet(pydicom.dcmread(out / "DICOMDIR"))
    assert {i.SOPInstanceUID: _sha(Path(i.path)) for i in fileset} == expected
    assert not (out / ".medai-staging").exists()
    description = json.loads((out / "snapshot.json").read_text())
    assert description["content_hash"] == result.content_hash
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert all((out / f).exists() for f in manifest["file"])
    # Into a folder that holds something else: refused.
    with pytest.raises(SnapshotError, match="not an empty directory"):
        export_to("share", str(tmp_path / "media" / "PT000000"), settings=snapshot)


def test_folder_export_cut_off_resumes_from_what_is_staged(
    snapshot: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "media"
    staging = out / ".medai-staging"
    staging.mkdir(parents=True)
    keys = list(_expected(snapshot).values())
    store = ObjectStore(snapshot.resolved_store_dir)
    (staging / f"{keys[0]}.dcm").write_bytes(store.read(keys[0]))  # staged and whole
    (staging / f"{keys[1]}.dcm").write_bytes(store.read(keys[1])[:100])  # cut mid-write
    result = export_to("share", str(out), settings=snapshot)
    assert result.already == 1 and result.sent == len(keys) - 1
    fileset = FileSet(pydicom.dcmread(out / "DICOMDIR"))
    assert sorted(_sha(Path(i.path)) for i in fileset) == sorted(keys)


# -- Orthanc over STOW-RS and C-STORE ----------------------------------------------------------


def _data_set_sha(data: bytes) -> str:
    """sha256 of a Part 10 file's data set, after its file meta group.

    A C-STORE carries no file meta: the receiver writes its own (its implementation UID, its
    AE title), so only the data set can be compared byte for byte (a deflated one once
    inflated: sender and receiver may deflate the same bytes differently).
    """
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    body = data[144 + group_length :]
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    if meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian:
        body = zlib.decompress(body, -zlib.MAX_WBITS)  # the deflate stream may be redone
    return hashlib.sha256(body).hexdigest()


def _orthanc_sops(orthanc: Orthanc, *, whole: bool = True) -> dict[str, str]:
    """SOP Instance UID -> sha256 of the file Orthanc keeps (or of its data set)."""
    out = {}
    for ident in orthanc.instances():
        tags = orthanc.request("GET", f"/instances/{ident}/simplified-tags")
        data = orthanc._session.get(f"{orthanc.http_url}/instances/{ident}/file", timeout=30)
        digest = hashlib.sha256 if whole else None
        out[str(tags["SOPInstanceUID"])] = (
            digest(data.content).hexdigest() if digest else _data_set_sha(data.content)
        )
    return out


def _expected_data_sets(settings: Settings) -> dict[str, str]:
    store = ObjectStore(settings.resolved_store_dir)
    return {sop: _data_set_sha(store.read(key)) for sop, key in _expected(settings).items()}


def test_stow_export_to_orthanc_lands_every_instance_and_resumes_after_a_cut(
    snapshot: Settings,
) -> None:
    expected = _expected(snapshot)
    with Orthanc(aet="PARTNER") as orthanc:
        # The first request's upload is cut 20 kB in, and with one attempt the export stops.
        with CuttingProxy(orthanc.http_port, cut_after=20_000, cuts=1) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/dicom-web"
            with pytest.raises(SnapshotError, match="STOW-RS upload.*kept failing|cannot reach"):
                export_to("share", url, settings=snapshot, retry=ONE_TRY)
            result = export_to("share", url, settings=snapshot, retry=FAST)
            again = export_to("share", url, settings=snapshot, retry=FAST)
        assert proxy.cut_connections == 1
        assert result.kind == "stow-rs" and result.instances == len(expected)
        assert result.sent + result.already == len(expected)
        assert _orthanc_sops(orthanc) == expected  # every one, byte for byte
        # Run again: everything is confirmed already, nothing is sent.
        assert again.sent == 0 and again.already == len(expected)
        assert len(orthanc.instances()) == len(expected)


def test_c_store_export_to_orthanc_lands_every_instance_and_resumes(
    snapshot: Settings,
) -> None:
    expected = _expected(snapshot)
    with Orthanc(aet="PARTNER", extra_config={"DicomCheckCalledAet": True}) as orthanc:
        with CuttingProxy(orthanc.dicom_port, cut_after=8_000, cuts=1) as proxy:
            cut_node = f"PARTNER@127.0.0.1:{proxy.port}"
            with pytest.raises(SnapshotError, match="C-STORE to .* kept failing"):
                export_to("share", cut_node, settings=snapshot, retry=ONE_TRY)
            first = len(orthanc.instances())
            assert 0 < first < len(expected)
            result = export_to("share", cut_node, settings=snapshot, retry=FAST)
        assert proxy.cut_connections == 1
        assert result.kind == "c-store" and result.already >= 1
        assert result.sent + result.already == len(expected)
        # Every data set, byte for byte (the file meta is the receiver's own).
        assert _orthanc_sops(orthanc, whole=False) == _expected_data_sets(snapshot)
        again = export_to("share", cut_node, settings=snapshot, retry=FAST)
        assert again.sent == 0 and again.already == len(expected)
        # A node that refuses the calling AE title: a clear error.
        with pytest.raises(SnapshotError, match="rejected the association"):
            export_to(
                "share", f"WRONG@127.0.0.1:{orthanc.dicom_port}", settings=snapshot, retry=ONE_TRY
            )


def test_c_store_export_checked_by_c_find_resends_what_the_node_lost(
    snapshot: Settings,
) -> None:
    expected = _expected(snapshot)
    config = {"DicomAlwaysAllowFind": True}
    with Orthanc(aet="PARTNER", extra_config=config) as orthanc:
        node = f"PARTNER@127.0.0.1:{orthanc.dicom_port}"
        first = export_to("share", node, settings=snapshot, verify_find=True)
        assert first.sent == len(expected)
        # The node loses one instance: the check finds it and the next run sends it again.
        orthanc.request("DELETE", f"/instances/{orthanc.instances()[0]}")
        with pytest.raises(SnapshotError, match="does not hold 1 of the .* run the same export"):
            export_to("share", node, settings=snapshot, verify_find=True)
        again = export_to("share", node, settings=snapshot, verify_find=True)
        assert again.sent == 1 and again.already == len(expected) - 1
        assert _orthanc_sops(orthanc, whole=False) == _expected_data_sets(snapshot)


def test_destinations_are_told_apart_and_bad_ones_refused() -> None:
    assert destination_kind("https://pacs.example.org/dicom-web") == "stow-rs"
    assert destination_kind("PACS@10.0.0.5:104") == "c-store"
    assert destination_kind("./out") == "folder"
    with pytest.raises(SnapshotError, match="not a destination"):
        destination_kind("ftp://example.org/x")
    # A STOW-RS URL is checked as the DICOMweb pull checks it; its password is never echoed.
    with pytest.raises(SnapshotError, match="must not carry a query") as refused:
        StowDestination("https://user:s3cret@pacs.example.org/dicom-web?x=1")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(SnapshotError, match="invalid port") as refused:
        StowDestination("https://user:s3cret@pacs.example.org:99999/dicom-web")
    assert "s3cret" not in str(refused.value)
    stow = StowDestination("https://user:s3cret@pacs.example.org/dicom-web/")
    assert stow.describe() == "https://pacs.example.org/dicom-web"
    assert stow.session.auth == ("user", "s3cret")


def test_the_command_exports_to_a_dicomdir_folder(snapshot: Settings, tmp_path: Path) -> None:
    out = tmp_path / "cli-media"
    result = CliRunner().invoke(app, ["snapshot", "export", "share", "--to", str(out), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["kind"] == "folder" and answer["instances"] == answer["sent"] > 0
    assert (out / "DICOMDIR").is_file()
    both = CliRunner().invoke(
        app, ["snapshot", "export", "share", str(tmp_path / "x"), "--to", str(out)]
    )
    assert both.exit_code != 0 and "either DIR" in both.output
