"""FUSE requests and replies as bytes (linux/fuse.h; :mod:`pyvirtio.spec.fuse`).

Sans-I/O.  A request is untrusted: :func:`parse_request` checks the header against the bytes
the chain really carried before anything is read, and :class:`Args` hands out the opcode's
struct and its NUL-terminated names with a bound check on every step.  Whatever is wrong comes
back as :class:`FuseError` (an errno for the guest) or :class:`FuseProtocolError` (the request
cannot even be answered: no header).

Rules (fuse_lowlevel.c and Linux fs/fuse/dev.c agree):

* ``len`` counts the header and everything after it.  ``len`` smaller than the header, or past
  the bytes the driver gave, is a malformed request: EINVAL if there is a ``unique`` to answer.
  Bytes after ``len`` are ignored (a driver may hand over a larger buffer).
* A struct shorter than its opcode needs: EINVAL.  A name without its NUL: EINVAL.
* A reply is ``fuse_out_header`` + payload; ``len`` counts both; ``error`` is 0 or -errno and
  an error reply carries no payload.
"""

from __future__ import annotations

import errno
from struct import Struct
from typing import Callable, NamedTuple, Sequence

from ...errors import DriverFault
from ...spec import fuse as F

#: Longest name component a guest may send (Linux NAME_MAX); longer: ENAMETOOLONG.
NAME_MAX = 255
#: Longest symlink target or xattr value name we accept (Linux PATH_MAX / XATTR_NAME_MAX).
PATH_MAX = 4096

_HDR = F.FUSE_IN_HEADER
_OUT = F.FUSE_OUT_HEADER


class FuseError(Exception):
    """A request that gets an error reply: ``errno`` is the positive Linux errno."""

    def __init__(self, err: int, why: str = ""):
        super().__init__(err, why or errno.errorcode.get(err, str(err)))
        self.errno = err


class FuseProtocolError(DriverFault):
    """A request that cannot be answered at all (shorter than a fuse_in_header): the driver's
    fault; the chain goes back with nothing written."""


class Request(NamedTuple):
    """One parsed request: its header and the bytes after it (up to ``len``)."""

    header: F.FuseInHeader
    body: memoryview


def parse_request(data: bytes | bytearray | memoryview, tail_len: int = 0) -> Request:
    """The header and body of one request; FuseProtocolError without a whole header, FuseError
    (EINVAL, the header's ``unique`` is good to answer) when ``len`` disagrees with the bytes.
    ``tail_len``: more request bytes the caller holds elsewhere (a WRITE's data left in guest
    memory, :class:`Args` ``tail``); ``len`` may reach into them."""
    view = memoryview(data).cast("B")
    if len(view) < F.FUSE_IN_HEADER_SIZE:
        raise FuseProtocolError(f"FUSE request of {len(view)} bytes: shorter than fuse_in_header")
    header = F.FuseInHeader._make(_HDR.unpack_from(view))
    if header.len < F.FUSE_IN_HEADER_SIZE:
        raise FuseError(errno.EINVAL, f"fuse_in_header.len {header.len} is shorter than the header")
    if header.len > len(view) + tail_len:
        raise FuseError(errno.EINVAL, f"fuse_in_header.len {header.len} runs past the "
                                      f"{len(view) + tail_len} bytes the driver gave")
    return Request(header, view[F.FUSE_IN_HEADER_SIZE:header.len])


Sink = Callable[[int], list[memoryview]]


class Args:
    """A cursor over a request's body: structs, names and raw bytes, each bound-checked.

    ``tail``: the rest of the request where the driver put it (views of guest memory: a
    WRITE's data, never copied), counted after the body.  ``sink``: where a reply's bulk data
    may go straight (``sink(n)``: views of the ``n`` bytes after the reply header), so a READ
    lands in guest memory without a copy (the reply then carries a :class:`Placed`)."""

    __slots__ = ("_view", "_pos", "tail", "sink")

    def __init__(self, body: memoryview, tail: Sequence[memoryview] = (), sink: Sink | None = None):
        self._view = body
        self._pos = 0
        self.tail = tail
        self.sink = sink

    def struct(self, layout: Struct) -> tuple:
        """The next ``layout`` (EINVAL if the body is too short)."""
        end = self._pos + layout.size
        if end > len(self._view):
            raise FuseError(errno.EINVAL, f"request body too short for a {layout.size}-byte struct")
        values = layout.unpack_from(self._view, self._pos)
        self._pos = end
        return values

    def prefix(self, layout: Struct, short: Struct) -> tuple:
        """``layout`` if the body holds it whole, else the older ``short`` form zero-extended
        (fuse_init_in before 7.36, fuse_setxattr_in without SETXATTR_EXT)."""
        if self._pos + layout.size <= len(self._view):
            return self.struct(layout)
        values = self.struct(short)
        return values + (0,) * (len(layout.unpack(bytes(layout.size))) - len(values))

    def name(self, limit: int = NAME_MAX) -> bytes:
        """The next NUL-terminated string (without its NUL); EINVAL without a NUL,
        ENAMETOOLONG past ``limit`` bytes."""
        view = self._view
        end = bytes(view[self._pos:self._pos + limit + 1]).find(b"\0")
        if end < 0:
            if len(view) - self._pos > limit:
                raise FuseError(errno.ENAMETOOLONG, "name longer than NAME_MAX")
            raise FuseError(errno.EINVAL, "name without its terminating NUL")
        text = bytes(view[self._pos:self._pos + end])
        self._pos += end + 1
        return text

    def data(self, size: int) -> memoryview:
        """The next ``size`` raw bytes (EINVAL if fewer are left)."""
        end = self._pos + size
        if size < 0 or end > len(self._view):
            raise FuseError(errno.EINVAL, f"request carries fewer than {size} data bytes")
        out = self._view[self._pos:end]
        self._pos = end
        return out

    def data_views(self, size: int) -> list[memoryview]:
        """The next ``size`` bytes as views: what is left of the body, then the tail (EINVAL if
        fewer are left)."""
        if size < 0:
            raise FuseError(errno.EINVAL, "negative data size")
        here = min(size, len(self._view) - self._pos)
        out = [self._view[self._pos:self._pos + here]] if here else []
        self._pos += here
        need = size - here
        for view in self.tail:
            if need <= 0:
                break
            take = view[:need]
            out.append(take)
            need -= len(take)
        if need > 0:
            raise FuseError(errno.EINVAL, f"request carries fewer than {size} data bytes")
        return out

    def rest(self) -> memoryview:
        """Everything not read yet."""
        out = self._view[self._pos:]
        self._pos = len(self._view)
        return out


class Placed:
    """``n`` reply bytes already written into the driver's buffers through a sink (right after
    the reply header); a writer skips them."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


Reply = Sequence["bytes | bytearray | memoryview | Placed"]


def reply_error(unique: int, err: int) -> list[bytes]:
    """An error reply: the header alone, ``error`` = -err."""
    return [_OUT.pack(F.FUSE_OUT_HEADER_SIZE, -err, unique)]


def reply_ok(unique: int, *parts: "bytes | bytearray | memoryview | Placed") -> list:
    """A success reply: the header, then ``parts`` in order."""
    size = F.FUSE_OUT_HEADER_SIZE + sum(len(p) for p in parts)
    return [_OUT.pack(size, 0, unique), *parts]


def reply_len(reply: Reply) -> int:
    """Bytes a reply takes in the driver's buffers."""
    return sum(len(p) for p in reply)


def align8(n: int) -> int:
    """FUSE_DIRENT_ALIGN: rounded up to 64 bits."""
    return (n + F.FUSE_DIRENT_ALIGNMENT - 1) & ~(F.FUSE_DIRENT_ALIGNMENT - 1)


def dirent(ino: int, next_off: int, dtype: int, name: bytes) -> bytes:
    """One fuse_dirent with its name, NUL-padded to 64 bits."""
    size = align8(F.FUSE_NAME_OFFSET + len(name))
    return F.FUSE_DIRENT.pack(ino, next_off, len(name), dtype) + name + bytes(size - F.FUSE_NAME_OFFSET - len(name))


__all__ = ["Args", "FuseError", "FuseProtocolError", "NAME_MAX", "PATH_MAX", "Placed", "Reply", "Request", "Sink",
           "align8", "dirent", "parse_request", "reply_error", "reply_len", "reply_ok"]
