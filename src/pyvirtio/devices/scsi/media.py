"""What an emulated logical unit stores its blocks on: a small interface and two media.

:class:`ImageMedium` is a raw image file or host block device, opened, checked and locked as
``pyvirtio serve blk`` does (:func:`pyvirtio.devices.blk_image.open_image`); reads and writes go
straight between the file and guest memory (``os.preadv`` / ``os.pwritev`` into the request's
views, no copy), synchronously in the device's worker; a disk's READ and WRITE go instead through
the block device's asynchronous engine (:mod:`.disk_io`) unless its ``aio`` is ``off``.
:class:`MemoryMedium` keeps the blocks in a bytearray (tests, and the SG_IO stand-in).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol

from ...errors import UsageError
from ...aio.base import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from ..blk_image import Image, open_image

#: Zero-fill and pattern writes go out in pieces of at most this many bytes (memory bound).
CHUNK = 1 << 20


class Medium(Protocol):
    """The storage under a logical unit: byte addressed, ``size`` bytes."""

    size: int
    read_only: bool
    path: str

    def readv(self, offset: int, views: list[memoryview]) -> None:
        """Fill ``views`` from ``offset`` (bytes past the end read as zeros); OSError on failure."""

    def writev(self, offset: int, views: list[memoryview]) -> None:
        """Write ``views`` at ``offset``; OSError on failure."""

    def flush(self) -> None:
        """Make written data durable."""

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range; it reads back as zeros afterwards."""

    def close(self) -> None:
        """Release the host resources."""


class ImageMedium:
    """A raw image (or host block device): ``open_image`` rules, locks included."""

    def __init__(self, path: str, *, read_only: bool = False, locking: bool = True):
        self.image: Image = open_image(path, read_only=read_only, lock=locking)
        self.path = path
        self.read_only = read_only
        self.size = self.image.size

    def readv(self, offset: int, views: list[memoryview]) -> None:
        """Read into ``views``; a short read (an image shrunk under us) is zero-filled."""
        fd = self.image.fd
        while views:
            n = os.preadv(fd, views, offset)
            if n == 0:
                for v in views:
                    v[:] = bytes(len(v))
                return
            offset += n
            views = _advance(views, n)

    def writev(self, offset: int, views: list[memoryview]) -> None:
        """Write ``views`` at ``offset`` (loops over short writes)."""
        fd = self.image.fd
        while views:
            n = os.pwritev(fd, views, offset)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            offset += n
            views = _advance(views, n)

    def flush(self) -> None:
        """fdatasync(2)."""
        os.fdatasync(self.image.fd)

    def resize(self, size: int) -> None:
        """Grow or shrink the image file to ``size`` bytes (a host block device keeps its size)."""
        if self.read_only:
            raise UsageError(f"{self.path}: read-only; cannot resize")
        if not stat.S_ISREG(os.fstat(self.image.fd).st_mode):
            raise UsageError(f"{self.path}: a block device has the size the host gives it")
        os.ftruncate(self.image.fd, size)
        self.size = self.image.size = size

    def discard(self, offset: int, length: int) -> None:
        """Punch a hole; where the file system cannot, write zeros."""
        try:
            fallocate(self.image.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENODEV):
                raise
            write_zeroes(self, offset, length)

    def close(self) -> None:
        """Close the image (drops its locks)."""
        self.image.close()


class MemoryMedium:
    """Blocks in memory: ``size`` bytes (or a copy of ``data``)."""

    def __init__(self, size: int = 0, *, data: bytes | None = None, read_only: bool = False,
                 path: str = "<memory>"):
        self.data = bytearray(data if data is not None else bytes(size))
        self.size = len(self.data)
        self.read_only = read_only
        self.path = path
        self.flushes = 0

    def readv(self, offset: int, views: list[memoryview]) -> None:
        """Copy out of the bytearray."""
        for v in views:
            chunk = self.data[offset:offset + len(v)]
            v[:len(chunk)] = chunk
            v[len(chunk):] = bytes(len(v) - len(chunk))
            offset += len(v)

    def writev(self, offset: int, views: list[memoryview]) -> None:
        """Copy into the bytearray (never grows it)."""
        for v in views:
            n = max(0, min(len(v), self.size - offset))
            self.data[offset:offset + n] = v[:n]
            offset += len(v)

    def flush(self) -> None:
        """Count it (tests look)."""
        self.flushes += 1

    def resize(self, size: int) -> None:
        """Grow (zeros) or shrink the bytearray."""
        if self.read_only:
            raise UsageError(f"{self.path}: read-only; cannot resize")
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))
        self.size = size

    def discard(self, offset: int, length: int) -> None:
        """Zero the range."""
        end = min(self.size, offset + length)
        self.data[offset:end] = bytes(max(0, end - offset))

    def close(self) -> None:
        """Nothing to release."""


def write_zeroes(medium: Medium, offset: int, length: int) -> None:
    """Write zeros over a range, a bounded chunk at a time."""
    zero = memoryview(bytes(min(CHUNK, length)))
    while length > 0:
        n = min(length, len(zero))
        medium.writev(offset, [zero[:n]])
        offset += n
        length -= n


def write_pattern(medium: Medium, offset: int, block: bytes, count: int) -> None:
    """Write ``block`` ``count`` times from ``offset`` (WRITE SAME), a bounded chunk at a time."""
    per = max(1, CHUNK // len(block))
    chunk = memoryview(block * min(per, count))
    while count > 0:
        n = min(per, count)
        medium.writev(offset, [chunk[:n * len(block)]])
        offset += n * len(block)
        count -= n


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:] if n else v)
        n = 0
    return out
