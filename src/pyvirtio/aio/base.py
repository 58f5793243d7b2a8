"""The engine protocol both back-ends implement, its errors, and the small helpers they share
(``fallocate`` through libc, errno and eventfd handling).  See :mod:`pyvirtio.aio` for the rules."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import time

from ..errors import Scope, TransportError, UsageError

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class AioError(TransportError):
    """The asynchronous I/O engine failed (setup refused, ring broken, engine closed)."""

    scope = Scope.DEVICE  # the device's I/O path is gone; the connection itself may live on

    def __init__(self, message: str, err: int = 0):
        self.errno = err
        super().__init__(message)


class AioSetupError(AioError):
    """Creating the engine failed (carries the OS errno)."""


class AioQueueFull(UsageError):
    """More operations prepared than the engine's depth: the caller must reap first."""


class AioEngine:
    """The protocol both back-ends implement (see the module docstring for the rules)."""

    name: str
    fd: int
    depth: int
    inflight: int
    _closed: bool

    @property
    def available(self) -> int:
        """How many more operations may be prepared before ``AioQueueFull``."""
        return self.depth - self.inflight

    def prep_readv(self, fd: int, iovecs: list, offset: int, token: int, *,
                   offload: bool = False, addresses: list[int] | None = None) -> None:
        """``offload``: a hint that the op should not run inline in ``submit()`` (a large copy
        from the page cache): io_uring hands it to its kernel workers; threads always do.
        ``addresses``: each view's host address, when the caller knows them
        (``DescriptorChain.addresses``) — io_uring then need not look each up; ignored unless
        there is one per view."""
        raise NotImplementedError

    def prep_writev(self, fd: int, iovecs: list, offset: int, token: int, *,
                    dsync: bool = False, offload: bool = False,
                    addresses: list[int] | None = None) -> None:
        raise NotImplementedError

    def prep_fsync(self, fd: int, token: int, *, datasync: bool = True) -> None:
        raise NotImplementedError

    def prep_fallocate(self, fd: int, mode: int, offset: int, length: int, token: int) -> None:
        raise NotImplementedError

    def submit(self) -> int:
        raise NotImplementedError

    def reap(self, clear: bool = True) -> list[tuple[int, int]]:
        """Every finished op as (token, result); never blocks.  ``clear``: read the completion
        eventfd first (a later completion signals again); without it — a look right after a
        submit, not because the fd fired — no system call, and the fd may stay readable (the
        next poll then turns once more)."""
        raise NotImplementedError

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        """Block until at least one completion (or ``timeout`` seconds: then []); at once when
        nothing is in the kernel (or the pool) to wait for."""
        done = self.reap()
        if done or self._closed or not self._in_kernel():
            return done
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            poller.poll(None if left is None else left * 1000)
            done = self.reap()
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done

    def submit_and_wait(self, timeout: float) -> list[tuple[int, int]]:
        """:meth:`submit`, then :meth:`wait` for up to ``timeout`` seconds (an engine that can
        do both in one system call does)."""
        self.submit()
        return self.wait(timeout)

    def _in_kernel(self) -> bool:
        """Whether submitted ops are still running (what ``wait`` may wait for)."""
        raise NotImplementedError

    def close(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) on ``fd`` (punch a hole, zero a range ...); raises OSError."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _negative_errno(exc: OSError) -> int:
    return -(exc.errno or errno.EIO)


def _read_eventfd(fd: int) -> None:
    """Clear a non-blocking eventfd (nothing to do when it is not readable)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
