"""Bounded inflation: a compressed input expands in chunks, and is refused past a ceiling.

A few hundred kilobytes of deflated zeros inflate to gigabytes (a "deflate bomb"), and
both zlib's one-shot ``decompress`` and pydicom (which inflates a deflated data set in
one call) would hold all of it in memory. Here inflation is streamed in chunks of
:data:`CHUNK_BYTES` and stops as soon as the output passes a limit, so the memory an
input costs is bounded by that limit, never by what the input claims or expands to.

The limit is the smaller of a ceiling (the largest instance accepted) and a ratio to the
compressed size: real DICOM and real zip members seldom deflate to less than a tenth of
their size, a bomb to a thousandth. Inputs that inflate to no more than
:data:`RATIO_GRACE_BYTES` are never refused for their ratio, so a small all-black image,
which deflates very well, is still accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

from medai.errors import DecompressionBomb

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_MAX_RATIO",
    "RATIO_GRACE_BYTES",
    "inflate_limit",
    "inflate_raw_deflate",
    "read_bounded",
]

CHUNK_BYTES: Final = 1024 * 1024
DEFAULT_MAX_RATIO: Final = 200.0
RATIO_GRACE_BYTES: Final = 8 * 1024 * 1024


def inflate_limit(compressed: int, *, max_bytes: int, max_ratio: float) -> int:
    """The most bytes an input of ``compressed`` bytes may inflate to.

    Parameters
    ----------
    compressed
        The compressed size, as counted (never as an archive declares it).
    max_bytes
        The ceiling: the largest instance accepted.
    max_ratio
        The largest inflated / compressed ratio accepted beyond :data:`RATIO_GRACE_BYTES`.

    Examples
    --------
    >>> inflate_limit(300_000, max_bytes=2**31, max_ratio=200)
    60000000
    >>> inflate_limit(1_000, max_bytes=2**31, max_ratio=200) == RATIO_GRACE_BYTES
    True
    """
    return min(max_bytes, max(int(compressed * max_ratio), RATIO_GRACE_BYTES))


def read_bounded(read: Callable[[int], bytes], limit: int, *, compressed: int) -> bytes:
    """Everything ``read`` yields, in chunks, refused as soon as it passes ``limit`` bytes.

    Parameters
    ----------
    read
        A stream's ``read(n)``: at most ``n`` bytes, empty at the end (a zip member's
        ``ZipExtFile.read`` inflates no more than it is asked for).
    limit
        The most bytes accepted (see :func:`inflate_limit`).
    compressed
        The compressed size, for the error's message.

    Raises
    ------
    DecompressionBomb
        Past ``limit``; the chunks read so far are dropped.
    """
    chunks: list[bytes] = []
    total = 0
    while chunk := read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise DecompressionBomb(limit, compressed)
        chunks.append(chunk)
    return b"".join(chunks)


def inflate_raw_deflate(payload: bytes, limit: int) -> bytes:
    """Inflate a raw deflate stream (no zlib header: PS3.5 A.5's deflated data set).

    Parameters
    ----------
    payload
        The compressed bytes.
    limit
        The most bytes accepted (see :func:`inflate_limit`).

    Raises
    ------
    DecompressionBomb
        When the stream inflates past ``limit``: inflation stops there.
    zlib.error
        When the stream is damaged.
    EOFError
        When the stream ends before its final block (cut short).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = memoryview(payload)

    def read(size: int) -> bytes:
        nonlocal pending
        if inflater.eof:
            return b""
        # max_length bounds each step's output; what it leaves unread waits in the tail.
        # An empty chunk means all input was taken: the tail only holds input when the
        # output filled max_length.
        chunk = inflater.decompress(pending, size)
        pending = memoryview(inflater.unconsumed_tail)
        return chunk

    inflated = read_bounded(read, limit, compressed=len(payload))
    if not inflater.eof:
        raise EOFError("the deflate stream ends before its last block")
    return inflated
