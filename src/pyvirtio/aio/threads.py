"""The fallback engine: a small pool of threads doing blocking ``os.preadv``/``os.pwritev``.

``submit()`` puts the prepared ops on a work queue; each worker runs one op at a time (the GIL
is released inside the syscall, so several run in parallel), appends ``(token, result)`` to a
deque and writes the eventfd.  ``reap()`` clears the eventfd *before* draining the deque, so a
result appended later always leaves the eventfd readable.  ``fallocate`` runs on a worker like
the rest (it may block on a large range).

Closing waits (bounded) for the workers to finish the queued ops and leave.  A worker still stuck
in a syscall at the deadline (a read from a pipe that never gets data, a hung NFS server) is
abandoned: it is a daemon thread, its result is dropped, and the last worker out closes the
eventfd, so its number is never reused under a thread that may still write to it.
"""

from __future__ import annotations

import collections
import errno
import os
import queue
import threading
import time

from .base import AioEngine, AioError, AioQueueFull, _negative_errno, _read_eventfd, fallocate

_STOP = None


def _readv(fd, iovecs, offset, _flag):
    if offset == -1:  # the file position, as io_uring does (pipes, sockets, ttys)
        return os.readv(fd, iovecs)
    return os.preadv(fd, iovecs, offset)


def _writev(fd, iovecs, offset, dsync):
    if offset == -1:
        return os.pwritev(fd, iovecs, offset, os.RWF_DSYNC) if dsync else os.writev(fd, iovecs)
    if dsync:
        return os.pwritev(fd, iovecs, offset, os.RWF_DSYNC)
    return os.pwritev(fd, iovecs, offset)


def _fsync(fd, _iovecs, _offset, datasync):
    (os.fdatasync if datasync else os.fsync)(fd)
    return 0


def _fallocate(fd, args, offset, mode):
    fallocate(fd, mode, offset, args)
    return 0


class ThreadEngine(AioEngine):
    """``workers`` threads; at most ``depth`` ops prepared or in flight."""

    name = "threads"

    def __init__(self, depth: int = 128, *, workers: int = 4):
        if workers < 1:
            raise AioError(f"thread engine needs at least one worker, not {workers}")
        self.depth = depth
        self.inflight = 0
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._prepared: list[tuple] = []
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque = collections.deque()
        self._closed = False
        self._lock = threading.Lock()  # guards _live and the eventfd's closing only
        self._live = workers
        self._threads = [threading.Thread(target=self._worker, name=f"aio-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def _worker(self) -> None:
        work, done, fd = self._work, self._done, self.fd
        try:
            while (op := work.get()) is not _STOP:
                func, file, iovecs, offset, flag, token = op
                try:
                    result = func(file, iovecs, offset, flag)
                except OSError as e:
                    result = _negative_errno(e)
                except (TypeError, ValueError, OverflowError, BufferError):
                    result = -errno.EINVAL  # a caller's bug (read into a read-only buffer …)
                op = iovecs = None  # let go of guest memory before waiting for more work
                if self._closed:
                    return  # abandoned at close: nobody reaps any more
                done.append((token, result))
                os.eventfd_write(fd, 1)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._live -= 1
            last = self._live == 0 and self._closed
        if last and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _prep(self, op: tuple) -> None:
        if self._closed:
            raise AioError("thread engine is closed", errno.EBADF)
        if self.inflight >= self.depth:
            raise AioQueueFull(f"thread engine already has {self.depth} ops in flight")
        self._prepared.append(op)
        self.inflight += 1

    def prep_readv(self, fd: int, iovecs: list, offset: int, token: int, *, offload: bool = False,
                   addresses: list[int] | None = None) -> None:
        self._prep((_readv, fd, iovecs, offset, False, token))  # os.preadv takes the views

    def prep_writev(self, fd: int, iovecs: list, offset: int, token: int, *, dsync: bool = False,
                    offload: bool = False, addresses: list[int] | None = None) -> None:
        self._prep((_writev, fd, iovecs, offset, dsync, token))

    def prep_fsync(self, fd: int, token: int, *, datasync: bool = True) -> None:
        self._prep((_fsync, fd, None, 0, datasync, token))

    def prep_fallocate(self, fd: int, mode: int, offset: int, length: int, token: int) -> None:
        self._prep((_fallocate, fd, length, offset, mode, token))

    def submit(self) -> int:
        ops, self._prepared = self._prepared, []
        put = self._work.put
        for op in ops:
            put(op)
        return len(ops)

    def reap(self, clear: bool = True) -> list[tuple[int, int]]:
        if self._closed:
            return []
        if clear:
            _read_eventfd(self.fd)  # first: a result appended after this signals again
        done, out = self._done, []
        while done:
            out.append(done.popleft())
        self.inflight -= len(out)
        return out

    def _in_kernel(self) -> bool:
        return self.inflight > len(self._prepared)

    def close(self, timeout: float = 10.0) -> None:
        """Let the workers finish what was submitted (at most ``timeout`` s), then stop them.

        Prepared but unsubmitted ops are dropped; results not reaped are lost.
        """
        if self._closed:
            return
        self._prepared = []
        for _ in self._threads:
            self._work.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closed = True
            last = self._live == 0
        if last and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._done.clear()
        self.inflight = 0
