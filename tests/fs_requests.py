"""Raw FUSE requests for the virtio-fs device tests (linux/fuse.h layouts from spec.fuse)."""

from __future__ import annotations

import itertools
import struct

from pyvirtio.spec import fuse as F

_unique = itertools.count(1)


def request(opcode: int, nodeid: int = F.FUSE_ROOT_ID, *parts: bytes, uid: int = 0, gid: int = 0,
            unique: int | None = None, length: int | None = None) -> bytes:
    """One request: fuse_in_header (``len`` computed unless given) then ``parts``."""
    body = b"".join(parts)
    size = F.FUSE_IN_HEADER_SIZE + len(body) if length is None else length
    u = next(_unique) if unique is None else unique
    return F.FUSE_IN_HEADER.pack(size, opcode, u, nodeid, uid, gid, 1234, 0, 0) + body


def init(major: int = 7, minor: int = 38, flags: int = 0xFFFFFFFF & ~F.FuseInitFlag.INIT_EXT,
         max_readahead: int = 1 << 17) -> bytes:
    """FUSE_INIT as the Linux driver sends it (the full 64-byte fuse_init_in)."""
    return request(F.FuseOpcode.INIT, 0, F.FUSE_INIT_IN.pack(major, minor, max_readahead, flags, 0))


def name(text: str | bytes) -> bytes:
    """A NUL-terminated name."""
    return (text.encode() if isinstance(text, str) else text) + b"\0"


def split(reply) -> tuple[F.FuseOutHeader, bytes]:
    """A reply (list of parts) as its header and payload; checks ``len``."""
    data = b"".join(bytes(p) for p in reply)
    hdr = F.FuseOutHeader._make(F.FUSE_OUT_HEADER.unpack_from(data))
    assert hdr.len == len(data)
    return hdr, data[F.FUSE_OUT_HEADER_SIZE:]


def entry(payload: bytes) -> tuple[F.FuseEntryOutHead, F.FuseAttr]:
    """A fuse_entry_out payload."""
    head = F.FuseEntryOutHead._make(F.FUSE_ENTRY_OUT_HEAD.unpack_from(payload))
    attr = F.FuseAttr._make(F.FUSE_ATTR.unpack_from(payload, F.FUSE_ENTRY_OUT_ATTR_OFFSET))
    return head, attr


def read_in(fh: int, offset: int, size: int) -> bytes:
    """fuse_read_in (READ, READDIR, READDIRPLUS)."""
    return F.FUSE_READ_IN.pack(fh, offset, size, 0, 0, 0, 0)


def dirents(payload: bytes, plus: bool = False) -> list[tuple[bytes, int, int, int]]:
    """(name, ino, off, type) of each fuse_dirent (or direntplus) in a READDIR payload."""
    out, pos = [], 0
    while pos < len(payload):
        if plus:
            pos += F.FUSE_ENTRY_OUT_SIZE
        ino, off, namelen, dtype = F.FUSE_DIRENT.unpack_from(payload, pos)
        nm = payload[pos + F.FUSE_NAME_OFFSET:pos + F.FUSE_NAME_OFFSET + namelen]
        out.append((nm, ino, off, dtype))
        pos += (F.FUSE_NAME_OFFSET + namelen + 7) & ~7
    return out


def u32s(payload: bytes, n: int) -> tuple[int, ...]:
    """The first ``n`` u32 of a payload."""
    return struct.unpack_from(f"<{n}I", payload)
