"""A site's hand-over as inputs: walk it without following links, read each input bounded.

Only regular files are inputs. The walk never follows a symbolic link: one that leaves the
root would import what is not the site's (``/etc/passwd``, another site's folder), and one
that stays inside names a file the walk reads under its own name anyway. Links, FIFOs,
sockets and devices are never opened; :func:`walk_inputs` counts them per reason. Files are
opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again, so an entry swapped for a link or
a FIFO after the walk is refused too, and never hangs the import.

Every input is read bounded (:class:`InputReader`): a plain file up to the instance size
limit, a zip member inflated in chunks up to its limit, a zip's members in one pass
(:mod:`.zip_members`), so one input costs at most its limit in memory, whatever it holds.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medai.collection.receivers.zip_members import (
    DEFAULT_MAX_MEMBERS,
    MEMBER_ERRORS,
    ArchiveReader,
    OversizedInput,
    directory_refusal,
)
from medai.dicom.inflate import DEFAULT_MAX_RATIO
from medai.errors import Rejected

__all__ = [
    "InputReader",
    "InputRef",
    "OversizedInput",
    "Unreadable",
    "iter_inputs",
    "read_input",
    "walk_inputs",
]

_ZIP_MAGIC = b"PK\x03\x04"
# Never follow a link swapped in after the walk; never block on a FIFO raced in.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class Unreadable(Rejected):
    """A file that was found but could not be read (permissions, I/O error)."""

    reason_code = "unreadable"


@dataclass(frozen=True)
class InputRef:
    """One input: a plain file, or a member of a zip archive.

    ``index`` is the member's position in its archive's central directory (so members
    with the same name stay apart); ``refusal`` says why an input is refused unread
    (a zip with more members than allowed).
    """

    path: Path
    member: str | None = None
    index: int = -1
    refusal: str | None = None

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


def walk_inputs(
    root: Path, *, max_zip_members: int = DEFAULT_MAX_MEMBERS
) -> tuple[list[InputRef], Counter[str]]:
    """Every regular file below ``root`` (sorted, so runs are repeatable), zips expanded.

    Returns the inputs and the entries refused without being read, counted by reason. A zip
    that cannot be opened is itself an input (it will be quarantined), and so is a zip with
    more than ``max_zip_members`` members (refused unread, as too large).
    """
    refused: Counter[str] = Counter()
    refs: list[InputRef] = []
    for path in _walk_files(root, refused):
        if not _is_zip(path):
            refs.append(InputRef(path))
            continue
        try:
            with _open_regular(path) as handle:
                refusal = directory_refusal(handle, max_zip_members)
                if refusal is not None:
                    refs.append(InputRef(path, refusal=refusal))
                    continue
                with zipfile.ZipFile(handle) as archive:
                    members = archive.infolist()
        except (zipfile.BadZipFile, OSError):
            refs.append(InputRef(path))
            continue
        refs.extend(
            InputRef(path, info.filename, index)
            for index, info in enumerate(members)
            if not info.is_dir()
        )
    return refs, refused


def iter_inputs(root: Path) -> Iterator[InputRef]:
    """The inputs of :func:`walk_inputs`, without the refused entries."""
    yield from walk_inputs(root)[0]


class InputReader:
    """Reads inputs in the walk's order, each bounded; a zip is opened once for its members.

    The walk lists a zip's members one after another, so keeping the last archive open
    reads a whole zip in one pass: its central directory is parsed once, not once per
    member (4,000 members took 45 s when each reopened the archive).

    Parameters
    ----------
    max_bytes
        The largest input accepted (a plain file, or what a zip member inflates to).
    max_inflate_ratio
        The largest inflated / compressed ratio of a zip member (see
        :func:`medai.dicom.inflate.inflate_limit`).
    """

    def __init__(self, max_bytes: int, max_inflate_ratio: float = DEFAULT_MAX_RATIO) -> None:
        self.max_bytes = max_bytes
        self.max_inflate_ratio = max_inflate_ratio
        self._archive: ArchiveReader | None = None

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the archive kept open, if any."""
        if self._archive is not None:
            archive, self._archive = self._archive, None
            archive.close()

    def read(self, ref: InputRef) -> bytes:
        """The bytes of one input, never holding more than its limit of them.

        Raises
        ------
        OversizedInput
            When the input exceeds its limit; its ``raw`` is what can be kept.
        Unreadable
            When the file, or the zip member, cannot be read.
        """
        if ref.refusal is not None:
            raise OversizedInput(ref.refusal, b"")
        try:
            if ref.member is None:
                return self._read_file(ref.path)
            return self._open_archive(ref.path).read(ref.member, ref.index)
        except OversizedInput:
            raise
        except MEMBER_ERRORS as exc:
            # RuntimeError/NotImplementedError: encrypted members, unsupported compression.
            raise Unreadable(f"cannot read the input ({type(exc).__name__})") from exc

    def _read_file(self, path: Path) -> bytes:
        with _open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > self.max_bytes:
                raise OversizedInput(
                    f"file of {size} bytes exceeds the limit of {self.max_bytes}", b""
                )
            return handle.read()

    def _open_archive(self, path: Path) -> ArchiveReader:
        if self._archive is not None and self._archive.path == path:
            return self._archive
        self.close()
        handle = _open_regular(path)
        try:
            self._archive = ArchiveReader(
                path, handle, max_bytes=self.max_bytes, max_ratio=self.max_inflate_ratio
            )
        except BaseException:
            handle.close()
            raise
        return self._archive


def read_input(ref: InputRef, max_bytes: int) -> bytes:
    """The bytes of one input (see :meth:`InputReader.read`); reopens a zip every call."""
    with InputReader(max_bytes) as reader:
        return reader.read(ref)
