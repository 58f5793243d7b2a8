"""The few Linux calls the os module lacks, through libc: fchownat(AT_EMPTY_PATH),
utimensat with UTIME_NOW/UTIME_OMIT, renameat2 and fallocate with modes.

Each raises OSError with the call's errno, as the os module does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

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


__all__ = ["UTIME_NOW", "UTIME_OMIT", "fallocate", "fchown_empty", "renameat2", "utimens"]
