"""Hostile inputs that are tiny on disk and huge once inflated: deflate and zip bombs.

Each is written by streaming zeros through zlib, so making one costs little memory and
a few hundred KB of disk, whatever it inflates to.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

__all__ = ["deflate_bomb", "many_member_zip", "peak_rss_bytes", "quarantined_bytes", "zip_bomb"]

_CHUNK = 1024 * 1024
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _zeros(compressor: zlib._Compress, count: int) -> bytes:
    chunk, out = bytes(_CHUNK), []
    while count > 0:
        out.append(compressor.compress(chunk[: min(count, _CHUNK)]))
        count -= _CHUNK
    return b"".join(out)


def deflate_bomb(inflated_bytes: int, *, seed: str = "bomb") -> bytes:
    """A Deflated Explicit VR Little Endian CT instance whose pixel data is all zeros.

    Well formed (its Rows x Columns match the pixel data), so only its inflated size is
    wrong with it: about ``inflated_bytes`` once inflated, about a thousandth of that
    sent.
    """
    side = max(int((inflated_bytes // 2) ** 0.5), 1)
    ds = pydicom.Dataset()
    ds.SOPClassUID = _CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality = "CT"
    ds.PatientID = "BOMB-1"
    ds.PatientName = "BOMB^DEFLATE"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = generate_uid(entropy_srcs=[seed, "impl"])
    whole = io.BytesIO()
    pydicom.dcmwrite(whole, ds, enforce_file_format=True)
    # Keep the file meta pydicom wrote (preamble, DICM, group 0002), deflate the rest here.
    group_length = struct.unpack_from("<L", whole.getvalue(), 132 + 8)[0]
    meta = whole.getvalue()[: 132 + 12 + group_length]
    plain = DicomBytesIO()
    plain.is_little_endian, plain.is_implicit_VR = True, False
    write_dataset(plain, ds)
    pixels = side * side * 2
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [
        compressor.compress(plain.getvalue()),
        compressor.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", pixels)),
        _zeros(compressor, pixels),
        compressor.flush(),
    ]
    return meta + b"".join(body)


def zip_bomb(
    path: Path, inflated_bytes: int, *, name: str = "scan.dcm", zip64: bool = True
) -> Path:
    """A zip of one member, ``inflated_bytes`` of zeros (deflated: about 1/1000 of that)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(name, "w", force_zip64=zip64) as member:
            chunk = bytes(_CHUNK)
            left = inflated_bytes
            while left > 0:
                member.write(chunk[: min(left, _CHUNK)])
                left -= _CHUNK
    return path


def many_member_zip(path: Path, members: int, content: bytes = b"not dicom") -> Path:
    """A zip of ``members`` small members (stored)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for index in range(members):
            archive.writestr(f"part-{index:06d}.dcm", content)
    return path


def peak_rss_bytes(pid: int) -> int:
    """The peak resident memory of a running process (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def quarantined_bytes(quarantine: Path) -> list[int]:
    """The size of each raw file held in a quarantine folder (its JSON records left out)."""
    return sorted(path.stat().st_size for path in quarantine.rglob("*.raw"))
