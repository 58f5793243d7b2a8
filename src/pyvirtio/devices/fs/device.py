"""The file system device, virtio-fs (VIRTIO 1.3, 5.11): FUSE requests over virtqueues.

Queues (5.11.2): hiprio (0), then ``num_request_queues`` request queues (NOTIFICATION is not
offered, so there is no notification queue).  Each chain is one FUSE request: the
device-readable buffers hold ``fuse_in_header`` and its arguments, the device-writable ones
receive ``fuse_out_header`` and the reply (5.11.6).

The hiprio queue carries FORGET and BATCH_FORGET (no reply; the driver gives no writable
buffers).  Each queue is an engine group of its own (one worker each).  A chain is copied out
of guest memory (its header first, bounded by :data:`MAX_REQUEST`); requests that move or sync
file data (:data:`POOL_OPCODES`: READ, WRITE, FSYNC ...) go to a thread pool that runs the FUSE
server (:class:`~.server.FuseServer`) against the host directory, and the worker goes on with
the next chain; replies come back through the queue's eventfd, which the worker watches
(:meth:`host_fds`), so requests complete out of order, as they finish.  The other requests
(names, attributes, open/close, directory reads) run inline in the queue's worker, as
virtiofsd without a thread pool runs all of them: a pool round trip costs more than such a
call, and a call that blocks holds up its own queue only.  Guest memory is touched only in the
worker (copy in, copy out); :meth:`quiesce` waits for what is in flight before a ring stops or
the memory table changes.  ``threads=0`` runs everything inline.  A READ or WRITE that
cannot wait for a disk is done inline too (:meth:`PassthroughFs.read`/``write`` with
``nowait``): a read of up to 128 KiB from the page cache (``RWF_NOWAIT``, as blk's small reads),
any read or write of a file on tmpfs.

A request shorter than a fuse_in_header, or one with no room for a reply header, goes back with
nothing written (the driver's fault, counted in the queue's errors); every other failure is an
errno reply.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import select
import struct
import threading
from collections import deque

from ...device import VirtioDevice
from ...memory import GuestMemory
from ...spec import fs as spec
from ...spec import fuse as F
from ...spec.ids import DeviceType
from ...virtq import DescriptorChain
from .passthrough import PassthroughFs
from .server import MAX_WRITE, FuseServer
from .wire import FuseProtocolError, Placed

log = logging.getLogger(__name__)

#: Threads that run the requests that move file data (virtiofsd's --thread-pool-size).
DEFAULT_THREADS = 4
#: What goes to the pool: requests that move or sync file data and can take long.  The rest
#: (names, attributes, opening and closing, directory reads) runs inline in its queue's worker,
#: as virtiofsd without a thread pool runs everything: a round trip through the pool costs more
#: than the call itself.  Each queue is a group of its own, so an inline call that blocks holds
#: up its own queue only, never hiprio or another request queue.
POOL_OPCODES = frozenset({F.FuseOpcode.READ, F.FuseOpcode.WRITE, F.FuseOpcode.FSYNC,
                          F.FuseOpcode.FSYNCDIR, F.FuseOpcode.FALLOCATE,
                          F.FuseOpcode.COPY_FILE_RANGE, F.FuseOpcode.LSEEK})
#: The most of one request copied out of guest memory: a WRITE of max_write bytes with its
#: headers, or a SETXATTR with a 64 KiB value and its name; a longer ``len`` is refused (EINVAL).
MAX_REQUEST = MAX_WRITE + (128 << 10)


class FsDevice(VirtioDevice):
    """virtio-fs over a host directory (see the module docstring)."""

    device_type = DeviceType.FS
    queue_max_size = 1024

    def __init__(self, shared_dir: str, *, tag: str = "share", cache: str = "auto",
                 read_only: bool = False, xattr: bool = False, num_request_queues: int = 1,
                 threads: int = DEFAULT_THREADS, max_write: int = MAX_WRITE):
        encoded = tag.encode()
        if not 0 < len(encoded) <= spec.FS_TAG_SIZE:
            raise ValueError(f"tag {tag!r}: 1..{spec.FS_TAG_SIZE} bytes of UTF-8")
        if not 1 <= num_request_queues <= 64:
            raise ValueError(f"num_request_queues {num_request_queues}: 1..64")
        self.num_queues = 1 + num_request_queues
        super().__init__()
        self.tag = tag
        self.num_request_queues = num_request_queues
        self.backend = PassthroughFs(shared_dir, read_only=read_only, xattr=xattr)
        self.server = FuseServer(self.backend, cache=cache, max_write=max_write)
        self.threads = threads
        self.max_request = max(MAX_REQUEST, max_write + (128 << 10))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Per queue (each queue is a group of its own): replies back from the pool, the eventfd
        # that wakes the queue's worker for them, and the requests still in the pool.
        self._done_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(self.num_queues)]
        self._done: list[deque[tuple[DescriptorChain, list | None]]] = [deque() for _ in range(self.num_queues)]
        self._inflight = [0] * self.num_queues  # requests handed to the pool, not back yet
        self._lock = threading.Condition()  # guards _inflight between the worker and pool threads
        self.stats = {"requests": 0, "errors": 0}

    # --- config space (5.11.4) ------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return spec.FS_CONFIG.pack(self.tag.encode(), self.num_request_queues, 0)

    # --- requests -------------------------------------------------------------------------------

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int | None:
        self.stats["requests"] += 1
        request = self._request(queue_index, chain)
        if request is None:
            return 0
        data, tail = request
        opcode = _opcode(data)
        if queue_index == spec.HIPRIOQ or not self.threads or opcode not in POOL_OPCODES:
            return self._write_reply(chain, self._run(chain, data, tail))
        if opcode in (F.FuseOpcode.READ, F.FuseOpcode.WRITE):
            try:  # cannot wait for a disk (page cache, tmpfs): at once, as blk's small reads
                return self._write_reply(chain, self._run(chain, data, tail, nowait=True))
            except BlockingIOError:
                pass
        with self._lock:  # counted before it can finish
            self._inflight[queue_index] += 1
        try:
            future = self._executor().submit(self._run, chain, data, tail)
        except RuntimeError:  # the pool is shut down (the device is closing): run it here
            with self._lock:
                self._inflight[queue_index] -= 1
            return self._write_reply(chain, self._run(chain, data, tail))
        future.add_done_callback(lambda f: self._finished(queue_index, chain, f))
        return None

    def _request(self, queue_index: int, chain: DescriptorChain) -> tuple[bytes, list[memoryview]] | None:
        """The request: its bytes copied out of the chain up to its header's ``len`` (or what
        the chain has, if less: the server then answers EINVAL) -- except a WRITE's data, left
        in guest memory as views (the tail); None if there is no header at all."""
        if chain.readable_len < F.FUSE_IN_HEADER_SIZE:
            self._fault(queue_index, "chain of %d readable bytes: no fuse_in_header", chain.readable_len)
            return None
        head = chain.read(0, F.FUSE_IN_HEADER_SIZE)
        length, opcode = struct.unpack_from("<II", head)
        if length > self.max_request:
            length = F.FUSE_IN_HEADER_SIZE  # the server sees len past the bytes: EINVAL
        length = min(max(length, F.FUSE_IN_HEADER_SIZE), chain.readable_len)
        if opcode == F.FuseOpcode.WRITE and length > _WRITE_HEAD:
            return chain.read(0, _WRITE_HEAD), chain.readable_views(_WRITE_HEAD, length - _WRITE_HEAD)
        return chain.read(0, length), []

    def _run(self, chain: DescriptorChain, data: bytes, tail: list[memoryview],
             nowait: bool = False) -> list | None:
        """One request through the FUSE server (a pool thread, or inline); READ data goes
        straight into the chain's buffers.  With ``nowait`` a READ or WRITE that would wait for
        a disk raises BlockingIOError."""
        def sink(n: int) -> list[memoryview]:
            return chain.writable_views(F.FUSE_OUT_HEADER_SIZE, n)

        try:
            reply = self.server.handle(data, chain.writable_len, nowait=nowait, tail=tail, sink=sink)
        except BlockingIOError:
            if nowait:
                raise
            log.exception("virtio-fs: request failed")
            return None
        except FuseProtocolError as exc:
            self.guest_log.warning("virtio-fs: %s", exc)
            return None
        except Exception:  # a bug of ours: nothing written, the device goes on
            log.exception("virtio-fs: request failed")
            return None
        return None if reply is None else list(reply)

    def _finished(self, queue_index: int, chain: DescriptorChain, future: concurrent.futures.Future) -> None:
        """A pool thread finished a request: queue its reply for the worker and wake it."""
        reply = None if future.cancelled() or future.exception() else future.result()
        self._done[queue_index].append((chain, reply))
        with self._lock:
            self._inflight[queue_index] -= 1
            self._lock.notify_all()
            fd = self._done_fds[queue_index] if self._done_fds else -1
            if fd >= 0:
                os.eventfd_write(fd, 1)

    @staticmethod
    def _write_reply(chain: DescriptorChain, reply: list | None) -> int:
        """Copy a reply into the chain (parts already placed by the sink are skipped); the
        bytes the reply takes."""
        if reply is None:
            return 0
        pos = 0
        for part in reply:
            if not isinstance(part, Placed):
                chain.write(part, pos)
            pos += len(part)
        return pos

    def _fault(self, queue_index: int, msg: str, *args) -> None:
        self.stats["errors"] += 1
        if 0 <= queue_index < len(self.queues):
            self.queues[queue_index].stats.errors += 1
        self.guest_log.warning("virtio-fs: " + msg, *args)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="virtiofs")
        return self._pool

    # --- the engine: one group per queue, completions through each queue's eventfd -------------

    def queue_groups(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(len(self.queues))]

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        with self._lock:
            busy = bool(self._inflight[group]) or bool(self._done[group])
            return [(self._done_fds[group], select.POLLIN)] if busy else []

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        """Replies of queue ``group`` came back from the pool: write them, one used-ring update."""
        try:
            os.eventfd_read(self._done_fds[group])
        except OSError:
            pass
        return self._publish(mem, group)

    def _publish(self, mem: GuestMemory, index: int) -> set[int]:
        done = self._done[index]
        used = []
        while done:
            chain, reply = done.popleft()
            used.append((chain.head_index, self._write_reply(chain, reply)))
        queue = self.queues[index]
        if not used or queue.broken or not queue.ready:
            return set()
        queue.add_used_batch(mem, used)
        return {index} if queue.needs_notification(mem) else set()

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        indexes = range(len(self._done)) if index is None else [index]

        def idle() -> bool:
            return not any(self._inflight[i] for i in indexes)

        with self._lock:  # a request leaves _inflight only after its reply is in _done
            finished = self._lock.wait_for(idle, timeout)
        for i in indexes:
            if mem is not None:
                self._publish(mem, i)
            else:  # the ring is gone: its replies have nowhere to go
                self._done[i].clear()
        return finished

    # --- lifecycle ------------------------------------------------------------------------------

    def on_reset(self) -> None:
        self.quiesce(None)
        self.server.destroy()

    def statistics(self) -> dict:
        stats = super().statistics()
        stats.setdefault("device", {}).update(inodes=len(self.backend.inodes),
                                              handles=len(self.backend.handles))
        return stats

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.backend.close()
        with self._lock:
            fds, self._done_fds = self._done_fds, []
        for fd in fds:
            os.close(fd)


#: fuse_in_header + fuse_write_in: what of a WRITE is copied; its data stays in guest memory.
_WRITE_HEAD = F.FUSE_IN_HEADER_SIZE + F.FUSE_WRITE_IN_SIZE


def _opcode(data: bytes) -> int:
    return int.from_bytes(data[4:8], "little")


__all__ = ["DEFAULT_THREADS", "FsDevice", "MAX_REQUEST", "POOL_OPCODES"]
