"""Asynchronous file I/O for the block back-end: many requests of one ring in flight at once.

One ``AioEngine`` belongs to one thread (a blk ring worker): it *prepares* operations, *submits*
them in one go, and *reaps* completions in whatever order the kernel finishes them.  Its ``fd`` is
an eventfd that is readable while completions wait to be reaped, so the worker polls it next to
its kick fds.  Two back-ends implement the same protocol:

* ``io_uring`` (``uring.py``): a thin ctypes binding over the raw syscalls; every prepared op is
  handed to the kernel by one ``io_uring_enter`` per ``submit()``;
* ``threads`` (``threads.py``): a small pool of worker threads doing ``os.preadv``/``os.pwritev``
  (the GIL is released while they block); used where io_uring is disabled or refused.

Rules the caller keeps (both back-ends):

* at most ``depth`` operations prepared or in flight (``available`` says how many more fit);
  one more raises ``AioQueueFull`` (a ``UsageError``: the caller must limit itself);
* tokens are the caller's ints, returned as ``(token, result)``; ``result`` is the byte count
  (short reads and writes included, 0 at end of file) or ``-errno``;
* the iovecs are kept referenced until their op is reaped; the caller must not release or resize
  the memory under them while the op is in flight;
* the engine is not thread-safe: one thread calls ``prep_*``/``submit``/``reap``/``wait``/``close``;
* offset -1 means "at the file position" (pipes, sockets), as in io_uring;
* reading into a read-only buffer is the caller's bug: io_uring raises ``UsageError`` at prep,
  threads completes it with ``-EINVAL``; writing from one works (io_uring copies it first);
* O_DIRECT files need buffers, offsets and lengths aligned as the file system says (4096 is
  safe); guest memory views are page-aligned where the guest's buffers are.
"""

from __future__ import annotations

import errno
import os
import select
import time

from ..errors import Scope, TransportError, UsageError

__all__ = ["AioEngine", "AioError", "AioQueueFull", "AioSetupError", "open_aio",
           "io_uring_unavailable_reason"]


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
                   offload: bool = False) -> None:
        """``offload``: a hint that the op should not run inline in ``submit()`` (a large copy
        from the page cache): io_uring hands it to its kernel workers; threads always do."""
        raise NotImplementedError

    def prep_writev(self, fd: int, iovecs: list, offset: int, token: int, *,
                    dsync: bool = False, offload: bool = False) -> None:
        raise NotImplementedError

    def prep_fsync(self, fd: int, token: int, *, datasync: bool = True) -> None:
        raise NotImplementedError

    def prep_fallocate(self, fd: int, mode: int, offset: int, length: int, token: int) -> None:
        raise NotImplementedError

    def submit(self) -> int:
        raise NotImplementedError

    def reap(self) -> list[tuple[int, int]]:
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

    def _in_kernel(self) -> bool:
        """Whether submitted ops are still running (what ``wait`` may wait for)."""
        raise NotImplementedError

    def close(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def io_uring_unavailable_reason() -> str | None:
    """None if an io_uring can be set up here; else a sentence saying why not."""
    from . import uring

    return uring.unavailable_reason()


def open_aio(kind: str = "auto", depth: int = 128, *, workers: int = 4) -> AioEngine:
    """An engine of ``kind`` ("io_uring", "threads" or "auto": io_uring where allowed)."""
    if depth < 1 or depth > 4096:
        raise UsageError(f"aio depth {depth} is not in 1..4096")
    if kind not in ("auto", "io_uring", "threads"):
        raise UsageError(f"unknown aio kind {kind!r} (auto, io_uring or threads)")
    if kind == "auto":
        kind = "io_uring" if io_uring_unavailable_reason() is None else "threads"
    if kind == "io_uring":
        from .uring import IoUringEngine

        return IoUringEngine(depth)
    from .threads import ThreadEngine

    return ThreadEngine(depth, workers=workers)


def _negative_errno(exc: OSError) -> int:
    return -(exc.errno or errno.EIO)


def _read_eventfd(fd: int) -> None:
    """Clear a non-blocking eventfd (nothing to do when it is not readable)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
