"""Zip hand-overs read bounded: members counted first, each inflated under a limit, one pass.

A zip says how large its members are, and may lie. So nothing it declares is trusted:
:func:`directory_refusal` counts the entries of the central directory itself, without
parsing them into memory, before :mod:`zipfile` is let at it (a zip of a million empty
members would otherwise cost gigabytes just to list); :class:`ArchiveReader` inflates
each member in chunks and stops at the member's limit
(:func:`medai.dicom.inflate.inflate_limit`: the instance size limit, and a ratio to the
compressed size counted against what the file can hold), keeping for the quarantine only
the member's compressed bytes, never what they inflate to. A zip inside a zip is a member
like any other: never expanded, it is offered as it is (and quarantined as not DICOM).

An :class:`ArchiveReader` keeps its archive open, so reading all members of a zip parses
its central directory once, not once per member.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Final

from medai.dicom.inflate import DEFAULT_MAX_RATIO, inflate_limit, read_bounded
from medai.errors import DecompressionBomb, TooLarge

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "MAX_DIRECTORY_BYTES",
    "MEMBER_ERRORS",
    "ArchiveReader",
    "OversizedInput",
    "directory_refusal",
]

DEFAULT_MAX_MEMBERS: Final = 100_000
# zipfile reads the whole central directory into memory: bound it (~250 bytes a member).
MAX_DIRECTORY_BYTES: Final = 64 * 1024 * 1024
# PKWARE APPNOTE 4.3.12 to 4.3.16: the records that locate and make up the directory.
_END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_END64_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator, 20 bytes
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record, 56 bytes
_ENTRY = struct.Struct("<4s6H3L5H2L")  # central directory file header, 46 bytes
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_MAX_COMMENT = 0xFFFF


class OversizedInput(TooLarge):
    """An input over its limit, with what can be kept of it for the quarantine.

    ``raw`` is a zip member's compressed bytes (never inflated), or empty for a plain
    file too large to copy, and for a zip that is refused whole.
    """

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw


def _directory(handle: BinaryIO) -> tuple[int, int] | None:
    """Where the central directory starts, and its size; None if there is no end record.

    Located from the end records backwards, as :mod:`zipfile` does (so a zip with data
    before it, a self-extracting archive, is read the same).
    """
    size = handle.seek(0, 2)
    tail_size = min(size, _END.size + _MAX_COMMENT)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _END.size > len(tail):
        return None
    directory_size = _END.unpack_from(tail, at)[5]
    end = size - tail_size + at
    locator_at = at - _END64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
        end64 = end - _END64_LOCATOR.size - _END64.size
        if end64 < 0:
            return None
        handle.seek(end64)
        record = handle.read(_END64.size)
        if len(record) < _END64.size or record[:4] != b"PK\x06\x06":
            return None
        directory_size, end = _END64.unpack(record)[8], end64
    return end - directory_size, directory_size


def _count_entries(handle: BinaryIO, start: int, limit: int) -> int:
    """The central directory's entries from ``start``, counted one by one, up to ``limit + 1``."""
    handle.seek(start)
    count = 0
    while count <= limit:
        header = handle.read(_ENTRY.size)
        if len(header) < _ENTRY.size or header[:4] != b"PK\x01\x02":
            break
        fields = _ENTRY.unpack(header)
        handle.seek(fields[10] + fields[11] + fields[12], 1)  # name, extra field, comment
        count += 1
    return count


def directory_refusal(handle: BinaryIO, max_members: int) -> str | None:
    """Why a zip is refused unopened (too many members, too large a directory), or None.

    The members are counted in the directory itself, never taken from the count the
    archive declares. None also when the directory cannot be found: :mod:`zipfile`
    then says the archive is damaged.
    """
    located = _directory(handle)
    if located is None:
        return None
    start, size = located
    if size > MAX_DIRECTORY_BYTES:
        return (
            f"the zip's list of members takes {size} bytes, more than the "
            f"{MAX_DIRECTORY_BYTES}-byte limit: split the hand-over into several zips"
        )
    if start < 0:
        return None
    count = _count_entries(handle, start, max_members)
    if count > max_members:
        return (
            f"the zip holds more than {max_members} members, the limit of one zip "
            "(MEDAI_MAX_ZIP_MEMBERS): split the hand-over into several zips"
        )
    return None


class ArchiveReader:
    """One zip archive, open for reading its members one after another, each bounded.

    Parameters
    ----------
    path
        The archive (for messages and for re-reading a member's compressed bytes).
    handle
        The archive, opened for reading; closed with the reader.
    max_bytes
        The largest instance accepted: no member inflates past it.
    max_ratio
        The largest inflated / compressed ratio accepted (see
        :func:`medai.dicom.inflate.inflate_limit`).

    Raises
    ------
    zipfile.BadZipFile
        When the archive cannot be read as a zip.
    """

    def __init__(
        self,
        path: Path,
        handle: BinaryIO,
        *,
        max_bytes: int,
        max_ratio: float = DEFAULT_MAX_RATIO,
    ) -> None:
        self.path = path
        self._handle = handle
        self._size = handle.seek(0, 2)
        self._archive = zipfile.ZipFile(handle)
        self._members = self._archive.infolist()
        self.max_bytes = max_bytes
        self.max_ratio = max_ratio

    def close(self) -> None:
        self._archive.close()
        self._handle.close()

    def _info(self, name: str, index: int) -> zipfile.ZipInfo:
        if 0 <= index < len(self._members) and self._members[index].filename == name:
            return self._members[index]
        return self._archive.getinfo(name)

    def read(self, name: str, index: int = -1) -> bytes:
        """The inflated bytes of member ``name`` (at ``index`` in the directory, if known).

        Raises
        ------
        OversizedInput
            When the member declares or inflates to more than its limit; its ``raw`` is
            the member's compressed bytes (empty if they alone are over ``max_bytes``).
        KeyError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError
            When the member is missing, damaged (its CRC), encrypted or compressed with a
            method zipfile lacks.
        """
        info = self._info(name, index)
        # The declared compressed size may lie too: never more than the file can hold.
        compressed = min(info.compress_size, self._size)
        limit = inflate_limit(compressed, max_bytes=self.max_bytes, max_ratio=self.max_ratio)
        if info.file_size > limit:
            raise OversizedInput(
                f"zip member declares {info.file_size} bytes uncompressed "
                f"({info.compress_size} compressed), over its limit of {limit} bytes",
                self._raw(info, compressed),
            )
        with self._archive.open(info) as member:
            try:
                return read_bounded(member.read, limit, compressed=compressed)
            except DecompressionBomb as exc:
                raise OversizedInput(str(exc), self._raw(info, compressed)) from None

    def _raw(self, info: zipfile.ZipInfo, compressed: int) -> bytes:
        """The member's compressed bytes as stored in the archive (never inflated)."""
        if compressed > self.max_bytes:
            return b""  # more than any input may hold in memory: only the record is kept
        self._handle.seek(info.header_offset)
        header = _LOCAL_HEADER.unpack(self._handle.read(_LOCAL_HEADER.size))
        name_length, extra_length = header[-2], header[-1]
        self._handle.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        return self._handle.read(compressed)


# Errors a member read may raise, besides OversizedInput: the member is unreadable.
MEMBER_ERRORS: Final = (
    KeyError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)
