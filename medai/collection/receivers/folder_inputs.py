"""A site's hand-over as inputs: walk it without following links, read each input bounded.

Only regular files are inputs. The walk never follows a symbolic link: one that leaves the
root would import what is not the site's (``/etc/passwd``, another site's folder), and one
that stays inside names a file the walk reads under its own name anyway. Links, FIFOs,
sockets and devices are never opened; :func:`walk_inputs` counts them per reason. Files are
opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again, so an entry swapped for a link or
a FIFO after the walk is refused too, and never hangs the import.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medai.errors import Rejected, TooLarge

__all__ = [
    "InputRef",
    "OversizedInput",
    "Unreadable",
    "iter_inputs",
    "read_input",
    "walk_inputs",
]

_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the zip local file header, 30 bytes
# Never follow a link swapped in after the walk; never block on a FIFO raced in.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


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


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading only if it is still a regular file (not a link, not a FIFO)."""
    fd = os.open(path, _OPEN_FLAGS | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is no longer a regular file")
        os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with _open_regular(path) as handle:
            return handle.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def _refusal(mode: int) -> str | None:
    """Why an entry of this (lstat) mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not-a-file"


def _link_refusal(path: Path, real_root: str) -> str:
    target = os.path.realpath(path)
    inside = target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)
    return "symlink-inside-root" if inside else "symlink-outside-root"


def _walk_files(root: Path, refused: Counter[str]) -> list[Path]:
    """The regular files below ``root``, sorted; everything else counted in ``refused``."""
    # The root itself is what the user named: a link to it is followed, once.
    try:
        mode = os.stat(root).st_mode
    except OSError:
        refused["unreadable"] += 1
        return []
    if not stat.S_ISDIR(mode):
        reason = _refusal(mode)
        if reason:
            refused[reason] += 1
            return []
        return [root]
    real_root = os.path.realpath(root)
    files: list[Path] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError:
            refused["unreadable-folder"] += 1
            continue
        for entry in listed:
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    refused[_link_refusal(path, real_root)] += 1
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                elif (reason := _refusal(entry.stat(follow_symlinks=False).st_mode)) is None:
                    files.append(path)
                else:
                    refused[reason] += 1
            except OSError:
                refused["unreadable"] += 1
    return sorted(files)


def walk_inputs(root: Path) -> tuple[list[InputRef], Counter[str]]:
    """Every regular file below ``root`` (sorted, so runs are repeatable), zips expanded.

    Returns the inputs and the entries refused without being read, counted by reason. A zip
    that cannot be opened is itself an input (it will be quarantined).
    """
    refused: Counter[str] = Counter()
    refs: list[InputRef] = []
    for path in _walk_files(root, refused):
        if not _is_zip(path):
            refs.append(InputRef(path))
            continue
        try:
            with _open_regular(path) as handle, zipfile.ZipFile(handle) as archive:
                members = [info.filename for info in archive.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError):
            refs.append(InputRef(path))
            continue
        refs.extend(InputRef(path, member) for member in members)
    return refs, refused


def iter_inputs(root: Path) -> Iterator[InputRef]:
    """The inputs of :func:`walk_inputs`, without the refused entries."""
    yield from walk_inputs(root)[0]


def _raw_member(path: Path, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's compressed bytes as stored in the archive (never inflated).

    Used to quarantine a zip bomb without expanding it.
    """
    with _open_regular(path) as handle:
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
            with _open_regular(ref.path) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > max_bytes:
                    raise OversizedInput(
                        f"file of {size} bytes exceeds the limit of {max_bytes}", b""
                    )
                return handle.read()
        with _open_regular(ref.path) as handle, zipfile.ZipFile(handle) as archive:
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
