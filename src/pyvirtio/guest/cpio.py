"""The ``newc`` cpio format the kernel unpacks an initramfs from: a writer, and a reader for
the initrds we build (plain, gzip- and xz-compressed parts, concatenated)."""

from __future__ import annotations

import lzma
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

from .errors import InitramfsError

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110  # 6 magic + 13 fields * 8 hex digits


def pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class CpioEntry:
    name: str  # path inside the archive, no leading "/"
    mode: int  # full st_mode (type bits + permissions)
    data: bytes = b""  # file contents, or the link target of a symlink
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    ino: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    devmajor: int = 0
    devminor: int = 0


class CpioWriter:
    """Collects entries and writes a ``newc`` (SVR4, no CRC) cpio archive.

    Parent directories are created implicitly (mode 0755).  A later entry with the
    same path replaces the earlier one.  Timestamps are 0, so output is reproducible.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    @staticmethod
    def _norm(path: str | os.PathLike) -> str:
        p = PurePosixPath("/", os.fspath(path))
        parts = [x for x in p.parts[1:] if x not in ("", ".")]
        if any(x == ".." for x in parts):
            raise InitramfsError(f"'..' not allowed in archive path {path!r}")
        return "/".join(parts) or "."

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._entries:
                self._entries[d] = CpioEntry(d, stat.S_IFDIR | 0o755, nlink=2)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFDIR | (mode & 0o7777), nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFREG | (mode & 0o7777), bytes(data))

    def add_symlink(self, path: str, target: str) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = self._norm(path)
        self._parents(name)
        self._entries[name] = CpioEntry(name, stat.S_IFCHR | (mode & 0o7777),
                                        rdevmajor=major, rdevminor=minor)

    def __contains__(self, path: str) -> bool:
        return self._norm(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def to_bytes(self) -> bytes:
        out = bytearray()
        ino = 1
        for e in self._entries.values():
            _write_entry(out, e, ino)
            ino += 1
        _write_entry(out, CpioEntry(TRAILER, 0, nlink=1), 0)
        # Keep the archive a multiple of 512 bytes (like GNU cpio); the kernel skips the
        # zero padding before the next concatenated archive.
        out += b"\0" * ((512 - len(out) % 512) % 512)
        return bytes(out)


def _write_entry(out: bytearray, e: CpioEntry, ino: int) -> None:
    name = e.name.encode() + b"\0"
    fields = (ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, len(e.data), e.devmajor,
              e.devminor, e.rdevmajor, e.rdevminor, len(name), 0)
    out += NEWC_MAGIC + b"".join(b"%08X" % f for f in fields) + name
    out += b"\0" * pad4(_HEADER_LEN + len(name))
    out += e.data
    out += b"\0" * pad4(len(e.data))


def read_newc(data: bytes, offset: int = 0) -> tuple[list[CpioEntry], int]:
    """Parse one ``newc`` archive starting at ``offset``.

    Returns the entries (without the trailer) and the offset just after the trailer
    entry.  Raises :class:`InitramfsError` on a malformed archive.
    """
    entries: list[CpioEntry] = []
    pos = offset
    while True:
        if pos % 4:
            raise InitramfsError(f"cpio header at {pos} is not 4-byte aligned")
        hdr = data[pos:pos + _HEADER_LEN]
        if len(hdr) < _HEADER_LEN or hdr[:6] != NEWC_MAGIC:
            raise InitramfsError(f"bad newc magic at offset {pos}: {hdr[:6]!r}")
        try:
            f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise InitramfsError(f"bad newc header at offset {pos}") from exc
        ino, mode, uid, gid, nlink, mtime, fsize, dmaj, dmin, rmaj, rmin, nsize, _ = f
        npos = pos + _HEADER_LEN
        raw_name = data[npos:npos + nsize]
        if len(raw_name) != nsize or not raw_name.endswith(b"\0"):
            raise InitramfsError(f"bad name at offset {npos}")
        name = raw_name[:-1].decode()
        dpos = npos + nsize + pad4(_HEADER_LEN + nsize)
        body = data[dpos:dpos + fsize]
        if len(body) != fsize:
            raise InitramfsError(f"truncated data for {name!r}")
        pos = dpos + fsize + pad4(fsize)
        if name == TRAILER:
            return entries, pos
        entries.append(CpioEntry(name, mode, bytes(body), uid, gid, mtime, nlink, ino,
                                 rmaj, rmin, dmaj, dmin))


def read_initrd(data: bytes) -> list[CpioEntry]:
    """Parse a concatenation of plain and gzip/xz-compressed ``newc`` archives
    (what the kernel accepts as an initrd); later entries come later in the list."""
    entries: list[CpioEntry] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data[pos:pos + 6] == NEWC_MAGIC:
            part, pos = read_newc(data, pos)
            entries += part
        elif data[pos:pos + 2] == b"\x1f\x8b":
            d = _GzipMember(data, pos)
            entries += read_initrd(d.payload)
            pos = d.end
        elif data[pos:pos + 6] == b"\xfd7zXZ\x00":
            dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            payload = dec.decompress(data[pos:])
            entries += read_initrd(payload)
            pos = len(data) - len(dec.unused_data)
        else:
            raise InitramfsError(f"unknown initrd part at offset {pos}: {data[pos:pos+6]!r}")
    return entries


class _GzipMember:
    def __init__(self, data: bytes, pos: int):
        import zlib
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.payload = d.decompress(data[pos:])
        self.end = len(data) - len(d.unused_data)
