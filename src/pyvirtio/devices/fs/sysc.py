"""The few Linux calls the os module lacks, through libc: fchownat(AT_EMPTY_PATH),
utimensat with UTIME_NOW/UTIME_OMIT, renameat2, fallocate with modes, and getdents64 (a
directory read from a seekable position, as seekdir/readdir do).

Each raises OSError with the call's errno, as the os module does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
#: struct timespec tv_nsec values of utimensat(2).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW): works on O_PATH
    descriptors, symlinks included; -1 keeps the id."""
    _check(_libc.fchownat(fd, b"", ctypes.c_uint32(uid & 0xFFFFFFFF), ctypes.c_uint32(gid & 0xFFFFFFFF),
                          AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), "fchownat")


def utimens(dir_fd: int, path: bytes, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """utimensat(dir_fd, path, [atime, mtime], 0); each time is (sec, nsec) with nsec possibly
    UTIME_NOW or UTIME_OMIT.  ``path`` b"" with ``dir_fd`` an open file: futimens."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if path:
        _check(_libc.utimensat(dir_fd, path, times, 0), "utimensat")
    else:
        _check(_libc.futimens(dir_fd, times), "futimens")


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    """renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
    _check(_libc.renameat2(old_dir, old, new_dir, new, ctypes.c_uint(flags)), "renameat2")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its ``mode`` (FALLOC_FL_KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE ...)."""
    _check(_libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_int64(offset), ctypes.c_int64(length)),
           "fallocate")


#: statfs f_type of file systems whose data lives in memory (linux/magic.h TMPFS_MAGIC,
#: RAMFS_MAGIC): a read or write there never waits for a disk.
_MEMORY_FS = frozenset({0x01021994, 0x858458F6})


def in_memory_fs(fd: int) -> bool:
    """Whether ``fd``'s file lives on tmpfs or ramfs (fstatfs f_type)."""
    buf = (ctypes.c_long * 32)()  # struct statfs: f_type first
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return (buf[0] & 0xFFFFFFFF) in _MEMORY_FS


#: getdents64's syscall number by machine (the os module has no seekable directory reading).
_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61, "ppc64le": 202, "s390x": 220}
#: struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
_DIRENT64 = struct.Struct("<QqHB")


def getdents(fd: int, size: int = 32768) -> list[tuple[bytes, int, int, int]]:
    """The next entries of the directory ``fd`` from its position (``lseek`` it to 0 or to an
    entry's ``d_off`` first): (name, d_ino, d_type, d_off) each; [] at the end."""
    number = _SYS_GETDENTS64.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, "getdents64: unknown machine")
    buf = ctypes.create_string_buffer(size)
    n = _libc.syscall(ctypes.c_long(number), ctypes.c_int(fd), buf, ctypes.c_size_t(size))
    _check(n, "getdents64")
    raw = buf.raw[:n]
    out, pos = [], 0
    while pos < n:
        ino, off, reclen, dtype = _DIRENT64.unpack_from(raw, pos)
        name_end = raw.index(b"\0", pos + _DIRENT64.size)
        out.append((raw[pos + _DIRENT64.size:name_end], ino, dtype, off))
        pos += reclen
    return out


__all__ = ["UTIME_NOW", "UTIME_OMIT", "fallocate", "fchown_empty", "getdents", "in_memory_fs", "renameat2",
           "utimens"]
