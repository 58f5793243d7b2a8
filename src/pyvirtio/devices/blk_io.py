"""The block device's I/O for one queue: requests in flight in the kernel, completed as they finish.

One :class:`QueueIO` per request queue, owned by that queue's worker (pyvirtio.engine), so it
needs no lock.  Reads and writes go to an :class:`~pyvirtio.aio.AioEngine` (io_uring or a thread
pool) straight between the image and guest memory; completions come back in the order the
kernel finishes them, and so the used ring follows completion order, not submission order.

* A short transfer is resubmitted for the rest (a read past the image's end ends in IOERR).
* ``O_DIRECT``: a request whose guest buffers are not aligned as the image requires comes back
  from the kernel with EINVAL; it is then done through an aligned bounce buffer, never failed.
* FLUSH is an asynchronous ``fdatasync``: it covers every write that completed before it was
  received (what the guest was told is done), which is what 5.2.6 asks of a flush.
* Write-through (``writeback`` off): each write carries ``RWF_DSYNC``.
* Requests go to the kernel in small batches (``SUBMIT_EVERY`` requests, or ``SUBMIT_BYTES``)
  while a ring is drained; while large ones are in flight the driver's kicks stay on
  (``KICKS_ON_BYTES``).
* Page cache: a small read whose data is cached is copied at once (one ``preadv`` with
  ``RWF_NOWAIT``, no round trip through the engine); large copies are offloaded to the
  kernel's workers so several run in parallel.
* ``O_DIRECT`` at queue depth 1: a read or write alone on its queue (nothing else in flight,
  nothing more available) is done at once, one ``preadv``/``pwritev`` that waits for the disk —
  as the turn's linger would wait for it through the engine, at a fraction of the cost — unless
  one done so failed, or a few in a row took longer than ``AT_ONCE_MAX_WAIT``: the queue's
  requests then go through the engine for ``AT_ONCE_PAUSE`` seconds (a slow disk holds
  requests, not the worker; one that never ends holds the worker as it would the request).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from time import monotonic as _monotonic
from typing import Callable

from ..aio import AioEngine, open_aio
from ..virtq import DescriptorChain

log = logging.getLogger(__name__)

READ, WRITE, FLUSH = 0, 1, 2
#: Requests prepared before they go to the kernel while a ring is being drained.  Not the whole
#: drain at once: the disk starts on the first ones while the rest are still popped, and the
#: completions then come back spread out instead of as one convoy (measured at queue depth 32,
#: O_DIRECT: every 1: 0.65x qemu-storage-daemon, every 4-8: 0.8-0.9x, every 32: 0.66x).
SUBMIT_EVERY = 8
#: ... or once the batch holds this many bytes: large requests go one or two at a time.  Eight
#: 256 KiB writes sent together finish together, the driver sends the next eight together, and
#: the disk idles while both sides turn the convoy around (O_DIRECT, queue depth 8, io_uring,
#: from the host, against the same code with only SUBMIT_EVERY: 256 KiB writes 1.26-1.53x,
#: reads 1.18-1.30x, 1 MiB writes 1.19-1.24x, reads 1.10-1.12x; 4 KiB unchanged, whose batches
#: stay at eight).
SUBMIT_BYTES = 64 << 10
#: Requests at least this large are offloaded (``AioEngine.prep_readv(offload=True)``) when they
#: go through the page cache; smaller reads of cached data are copied at once in the worker.  A
#: 128 KiB read in 32 pages (a guest's) at queue depth 8: 19.2k/18.5k IOPS offloaded, 21.3k/20.2k
#: copied at once — the worker's trip through the engine and back costs more than the copy;
#: 256 KiB reads are even either way (28.4k/33.8k against 30.3k/30.4k), 1 MiB need the
#: parallel copies.
OFFLOAD_BYTES = 256 << 10
#: While the last request started is at least this large, the driver's kicks stay on with
#: requests in flight (:attr:`QueueIO.large`): completions come a few hundred microseconds apart
#: and a request made available between two of them starts at once instead of waiting for the
#: next (O_DIRECT, queue depth 8, from the host, against kicks held, three runs: 1 MiB reads
#: 1.47/1.13/1.26x, 1 MiB writes 0.90/0.93/1.09x, 256 KiB writes 1.10/0.90/1.11x; page cache
#: 1 MiB and 128 KiB reads 1.01/1.05x).  Smaller requests finish often enough that their
#: completion turns pick up the next ones, and holding the kicks saves a wake-up per request.
KICKS_ON_BYTES = 64 << 10
#: O_DIRECT reads and writes done at once (:meth:`QueueIO._direct_now`): after
#: ``AT_ONCE_SLOW_RUN`` in a row took longer than ``AT_ONCE_MAX_WAIT`` seconds each (the turn's
#: linger, ``BlkDevice.linger``: the longest the worker waits for the engine), or one failed,
#: the queue's requests go through the engine for ``AT_ONCE_PAUSE`` seconds.  A run, not one: a
#: disk that answers in 0.1 ms has outliers of 10 ms, and pausing at each gave back a third of
#: the gain.  4 KiB at queue depth 1 from the host (``benchmarks/README.md``, session 19), same
#: run against qemu-storage-daemon: reads 0.66x -> 0.79x, writes 0.61x -> 0.80x; in a guest,
#: 10-30 us less of the worker's CPU per request.
AT_ONCE_MAX_WAIT = 1e-3
AT_ONCE_SLOW_RUN = 3
AT_ONCE_PAUSE = 0.5


class Request:
    """One request in flight: the chain, where its data goes, what is left of it."""

    __slots__ = ("chain", "kind", "views", "offset", "length", "done", "dsync", "addresses")

    def __init__(self, chain: DescriptorChain, kind: int, views: list[memoryview], offset: int,
                 length: int, dsync: bool = False, addresses: list[int] | None = None):
        self.chain, self.kind, self.views = chain, kind, views
        self.offset, self.length, self.done, self.dsync = offset, length, 0, dsync
        #: the views' host addresses when the walk knew them (DescriptorChain.addresses)
        self.addresses = addresses


class QueueIO:
    """Requests of one queue in flight; ``finish(request, error)`` is called for each as it ends."""

    def __init__(self, fd: int, *, aio: str, depth: int, align: int, direct: bool):
        self.fd = fd
        self.engine: AioEngine = open_aio(aio, depth)
        self.align = align
        self.direct = direct
        self.inflight: dict[int, Request] = {}  # token (the chain's head index) -> request
        self._nowait = not direct and hasattr(os, "RWF_NOWAIT")
        self._nowait_flag = getattr(os, "RWF_NOWAIT", 0)
        self._prepared = 0
        self._prepared_bytes = 0
        #: the last request started was large (``KICKS_ON_BYTES``)
        self.large = False
        #: something was sent that the kernel may finish inside io_uring_enter (not offloaded to
        #: its workers): worth a look at the completions right after the submit
        self._inline = False
        #: Batches sent to the kernel so far (:meth:`submit`).
        self.submits = 0
        #: O_DIRECT: until when (monotonic seconds) requests go through the engine, not at once,
        #: and how many done at once in a row took longer than AT_ONCE_MAX_WAIT
        self._at_once_after = 0.0
        self._slow_at_once = 0

    @property
    def completion_fd(self) -> int:
        return self.engine.fd

    def copy_now(self, views: list[memoryview], offset: int, length: int, alone: bool = False) -> bool:
        """Whether a read of ``length`` bytes at ``offset`` into ``views`` was done at once,
        with no round trip through the engine (else it goes there, :meth:`start`).

        Page cache: a small read whose data is cached is copied in one ``preadv`` with
        ``RWF_NOWAIT`` (which fails rather than wait for the disk); never reads the kernel's
        workers copy faster in parallel (``OFFLOAD_BYTES``).  O_DIRECT: a read the caller says
        is ``alone`` (nothing more available on its ring), as :meth:`_direct_now` allows."""
        if self.direct:
            return alone and self._direct_now(os.preadv, views, offset, length, 0)
        if not self._nowait or length >= OFFLOAD_BYTES:
            return False
        try:
            return os.preadv(self.fd, views, offset, self._nowait_flag) == length
        except BlockingIOError:
            return False
        except OSError as exc:  # any other error: the engine's attempt reports it
            if exc.errno == errno.EOPNOTSUPP:
                # No RWF_NOWAIT here: on a memory file system (tmpfs) a read never waits for
                # a disk, so it is still copied at once; elsewhere it goes to the engine.
                self._nowait, self._nowait_flag = in_memory_fs(self.fd), 0
            return False

    def write_now(self, views: list[memoryview], offset: int, length: int, dsync: bool,
                  alone: bool) -> bool:
        """O_DIRECT: whether a write the caller says is ``alone`` on its ring was done at once
        (one ``pwritev``, ``RWF_DSYNC`` in write-through), as :meth:`_direct_now` allows; else
        it goes to the engine (:meth:`start`).  Never through the page cache, where a write
        is a copy the engine's submit does inline anyway."""
        return self.direct and alone and self._direct_now(
            os.pwritev, views, offset, length, os.RWF_DSYNC if dsync else 0)

    def _direct_now(self, op, views: list[memoryview], offset: int, length: int, flags: int) -> bool:
        """An O_DIRECT transfer done at once by ``op`` (``os.preadv``/``os.pwritev``), waiting for
        the disk — when nothing of this queue is in flight, and unless, less than
        ``AT_ONCE_PAUSE`` seconds ago, one failed or ``AT_ONCE_SLOW_RUN`` in a row took longer
        than ``AT_ONCE_MAX_WAIT``.  A failure (a buffer not aligned for O_DIRECT, an I/O error,
        a short transfer) leaves the request to the engine, which bounces, retries or reports
        it (a transfer is idempotent: done again whole)."""
        if self.inflight:
            return False
        start = _monotonic()
        if start < self._at_once_after:
            return False
        try:
            done = op(self.fd, views, offset, flags) == length
        except OSError:
            done = False
        end = _monotonic()
        if done and end - start <= AT_ONCE_MAX_WAIT:
            self._slow_at_once = 0
        else:
            self._slow_at_once = AT_ONCE_SLOW_RUN if not done else self._slow_at_once + 1
            if self._slow_at_once >= AT_ONCE_SLOW_RUN:
                self._at_once_after, self._slow_at_once = end + AT_ONCE_PAUSE, 0
        return done

    def start(self, req: Request) -> None:
        """Prepare ``req``; it goes to the kernel with the next :meth:`submit` (or now, once
        ``SUBMIT_EVERY`` requests or ``SUBMIT_BYTES`` are prepared), and :meth:`reap` finishes it."""
        token = req.chain.head_index
        self.inflight[token] = req
        self._prep(token, req)
        self.large = req.length >= KICKS_ON_BYTES
        if self._prepared >= SUBMIT_EVERY or self._prepared_bytes >= SUBMIT_BYTES:
            self.submit()

    def _prep(self, token: int, req: Request) -> None:
        # A large copy through the page cache goes to the kernel's workers, so that several run
        # on several cores instead of one after another inside submit() (O_DIRECT never copies).
        # A copy that is not offloaded is done inside the submit: worth a look right after it.
        # O_DIRECT I/O ends by the disk's interrupt, seldom before the submit returns: the
        # linger's wait (submit_and_wait) or the completion fd takes it.
        offload = not self.direct and req.length >= OFFLOAD_BYTES
        if not offload and not self.direct:
            self._inline = True
        done = req.done
        if done:  # what is left of a short transfer (the walk's addresses describe it whole)
            views, addresses, offset = _advance_views(req.views, done), None, req.offset + done
        else:
            views, addresses, offset = req.views, req.addresses, req.offset
        kind = req.kind
        if kind == READ:
            self.engine.prep_readv(self.fd, views, offset, token, offload=offload, addresses=addresses)
        elif kind == WRITE:
            self.engine.prep_writev(self.fd, views, offset, token, dsync=req.dsync, offload=offload,
                                    addresses=addresses)
        else:
            self.engine.prep_fsync(self.fd, token, datasync=True)
        self._prepared += 1
        self._prepared_bytes += req.length - done

    def submit(self) -> None:
        if self._batch():
            self.engine.submit()

    def submit_and_wait(self, timeout: float) -> list[tuple[int, int]]:
        """Send what is prepared and wait up to ``timeout`` seconds for the first completion,
        in one system call where the engine can; the completions (for :meth:`reap`)."""
        self._batch()
        return self.engine.submit_and_wait(timeout)

    def _batch(self) -> bool:
        """Count what is prepared as one more batch sent (:attr:`submits`); False if nothing is."""
        if not self._prepared:
            return False
        self._prepared = 0
        self._prepared_bytes = 0
        self.submits += 1
        return True

    def finished_inline(self) -> bool:
        """Whether what was submitted since the last call may have finished inside the submit
        (the kernel may do a request at once in io_uring_enter; one offloaded to its workers runs
        on them, and its completion comes through the completion fd like any later one: a look
        right after the submit would almost always find nothing)."""
        inline, self._inline = self._inline, False
        return inline

    def reap(self, finish: Callable[[Request, OSError | None], None],
             completions: list[tuple[int, int]] | None = None, *, clear: bool = True) -> int:
        """Handle every completion waiting (or ``completions``); returns how many requests ended.
        ``clear``: see :meth:`~pyvirtio.aio.base.AioEngine.reap`."""
        ended = 0
        inflight = self.inflight
        for token, result in (self.engine.reap(clear) if completions is None else completions):
            req = inflight.pop(token, None)
            if req is None:
                log.error("blk: completion for token %d that is not in flight", token)
                continue
            if result > 0 and result == req.length - req.done:  # the usual: all of it at once
                finish(req, None)
            else:
                error = self._advance(token, req, result)
                if error is False:  # goes on: resubmitted
                    inflight[token] = req
                    continue
                finish(req, error)
            ended += 1
        self.submit()  # resubmitted remainders
        return ended

    def _advance(self, token: int, req: Request, result: int):
        """False if the request goes on (resubmitted); else None (done) or the OSError."""
        if result < 0:
            if result == -errno.EINVAL and self.direct and req.kind != FLUSH:
                return self._bounce(req)
            if result in (-errno.EAGAIN, -errno.EINTR):
                self._prep(token, req)
                return False
            return OSError(-result, os.strerror(-result))
        if req.kind == FLUSH:
            return None
        if result == 0:
            return OSError(errno.EIO, "short transfer: the image is shorter than its capacity")
        req.done += result
        if req.done < req.length:
            self._prep(token, req)
            return False
        return None

    def _bounce(self, req: Request):
        """O_DIRECT refused the guest's buffers (alignment): go through aligned memory."""
        try:
            bounce_io(self.fd, req.kind == WRITE, req.offset + req.done, _rest(req), self.align,
                      dsync=req.dsync)
        except OSError as exc:
            return exc
        return None

    def wait_all(self, finish: Callable[[Request, OSError | None], None], timeout: float) -> bool:
        """Block until nothing is in flight (``finish`` called for each); False on timeout."""
        import time
        self.submit()
        deadline = time.monotonic() + timeout
        while self.inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.reap(finish, self.engine.wait(left))
        return True

    def close(self) -> None:
        self.engine.close()
        self.inflight.clear()


#: statfs f_type of file systems whose data lives in memory (linux/magic.h).
_MEMORY_FS = {0x01021994, 0x858458F6}  # TMPFS_MAGIC, RAMFS_MAGIC


def in_memory_fs(fd: int) -> bool:
    """Whether ``fd``'s file lives on tmpfs or ramfs (a read of it never waits for a disk)."""
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = (ctypes.c_long * 32)()  # struct statfs: f_type first
    if libc.fstatfs(fd, buf) != 0:
        return False
    return (buf[0] & 0xFFFFFFFF) in _MEMORY_FS


def _rest(req: Request) -> list[memoryview]:
    return _advance_views(req.views, req.done) if req.done else req.views


def _advance_views(views: list[memoryview], n: int) -> list[memoryview]:
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:])
        n = 0
    return out


def bounce_io(fd: int, write: bool, offset: int, views: list[memoryview], align: int, *,
              dsync: bool = False) -> None:
    """Synchronous I/O of ``views`` at ``offset`` through an aligned buffer covering the aligned
    range around it (a write reads the edges first: read-modify-write)."""
    length = sum(len(v) for v in views)
    start = offset - offset % align
    end = -(-(offset + length) // align) * align
    size = -(-(end - start) // mmap.PAGESIZE) * mmap.PAGESIZE
    with mmap.mmap(-1, size) as buf:
        view = memoryview(buf)
        try:
            span = view[:end - start]
            inner = view[offset - start:offset - start + length]
            if not write or start != offset or end != offset + length:
                _full(os.preadv, fd, span, start, allow_short=True)
            if write:
                _gather(views, inner)
                _full(os.pwritev, fd, span, start, flags=os.RWF_DSYNC if dsync else 0)
            else:
                _scatter(inner, views)
        finally:
            del span, inner
            view.release()


def _full(op, fd: int, view: memoryview, offset: int, *, allow_short: bool = False, flags: int = 0) -> None:
    done = 0
    while done < len(view):
        n = op(fd, [view[done:]], offset + done, flags) if flags else op(fd, [view[done:]], offset + done)
        if n <= 0:
            if allow_short:
                return
            raise OSError(errno.EIO, "short transfer")
        done += n


def _gather(views: list[memoryview], out: memoryview) -> None:
    pos = 0
    for v in views:
        out[pos:pos + len(v)] = v
        pos += len(v)


def _scatter(data: memoryview, views: list[memoryview]) -> None:
    pos = 0
    for v in views:
        v[:] = data[pos:pos + len(v)]
        pos += len(v)
