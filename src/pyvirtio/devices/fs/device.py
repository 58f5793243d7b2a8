"""The file system device, virtio-fs (VIRTIO 1.3, 5.11): FUSE requests over virtqueues.

Queues (5.11.2): hiprio (0), then ``num_request_queues`` request queues (NOTIFICATION is not
offered, so there is no notification queue).  Each chain is one FUSE request: the
device-readable buffers hold ``fuse_in_header`` and its arguments, the device-writable ones
receive ``fuse_out_header`` and the reply (5.11.6).

The hiprio queue carries FORGET and BATCH_FORGET (no reply; the driver gives no writable
buffers): they are served inline, in the queue's worker.  A request-queue chain is copied out
of guest memory (its header first, bounded by :data:`MAX_REQUEST`) and handed to a thread pool
that runs the FUSE server (:class:`~.server.FuseServer`) against the host directory; the worker
goes on with the next chain, and replies come back through an eventfd the worker watches
(:meth:`host_fds`), so a slow file system call never stalls the rings: requests complete out
of order, as they finish.  Guest memory is touched only in the worker (copy in, copy out);
:meth:`quiesce` waits for what is in flight before a ring stops or the memory table changes.

A request shorter than a fuse_in_header, or one with no room for a reply header, goes back with
nothing written (the driver's fault, counted in the queue's errors); every other failure is an
errno reply.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import select
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
from .wire import FuseProtocolError

log = logging.getLogger(__name__)

#: Threads that run requests (virtiofsd's --thread-pool-size).
DEFAULT_THREADS = 4
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
        self._done_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._done: deque[tuple[int, DescriptorChain, list | None]] = deque()
        self._inflight: dict[int, set[concurrent.futures.Future]] = {}
        self._lock = threading.Condition()  # guards _inflight between the worker and pool threads
        self.stats = {"requests": 0, "errors": 0}

    # --- config space (5.11.4) ------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        return spec.FS_CONFIG.pack(self.tag.encode(), self.num_request_queues, 0)

    # --- requests -------------------------------------------------------------------------------

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int | None:
        self.stats["requests"] += 1
        data = self._request_bytes(queue_index, chain)
        if data is None:
            return 0
        if queue_index == spec.HIPRIOQ:
            return self._write_reply(queue_index, chain, self._run(data, chain.writable_len))
        future = self._executor().submit(self._run, data, chain.writable_len)
        with self._lock:
            self._inflight.setdefault(queue_index, set()).add(future)
        future.add_done_callback(lambda f: self._finished(queue_index, chain, f))
        return None

    def _request_bytes(self, queue_index: int, chain: DescriptorChain) -> bytes | None:
        """The request copied out of the chain, up to its header's ``len`` (or what the chain
        has, if less: the server then answers EINVAL); None if there is no header at all."""
        if chain.readable_len < F.FUSE_IN_HEADER_SIZE:
            self._fault(queue_index, "chain of %d readable bytes: no fuse_in_header", chain.readable_len)
            return None
        head = chain.read(0, F.FUSE_IN_HEADER_SIZE)
        length = F.FUSE_IN_HEADER.unpack(head)[0]
        if length > self.max_request:
            length = F.FUSE_IN_HEADER_SIZE  # the server sees len past the bytes: EINVAL
        return chain.read(0, min(max(length, F.FUSE_IN_HEADER_SIZE), chain.readable_len))

    def _run(self, data: bytes, out_size: int) -> list | None:
        """One request through the FUSE server (a pool thread, or inline for hiprio)."""
        try:
            reply = self.server.handle(data, out_size)
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
        self._done.append((queue_index, chain, reply))
        with self._lock:
            self._inflight.get(queue_index, set()).discard(future)
            self._lock.notify_all()
        try:
            os.eventfd_write(self._done_fd, 1)
        except OSError:
            pass

    def _write_reply(self, queue_index: int, chain: DescriptorChain, reply: list | None) -> int:
        if reply is None:
            return 0
        for part in reply:
            chain.write(part)
        return chain.written

    def _fault(self, queue_index: int, msg: str, *args) -> None:
        self.stats["errors"] += 1
        if 0 <= queue_index < len(self.queues):
            self.queues[queue_index].stats.errors += 1
        self.guest_log.warning("virtio-fs: " + msg, *args)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="virtiofs")
        return self._pool

    # --- the engine: completions ----------------------------------------------------------------

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        with self._lock:
            busy = any(self._inflight.values())
        return [(self._done_fd, select.POLLIN)] if busy or self._done else []

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        """Replies came back from the pool: write them, one used-ring update per queue."""
        try:
            os.eventfd_read(self._done_fd)
        except OSError:
            pass
        return self._publish(mem)

    def _publish(self, mem: GuestMemory) -> set[int]:
        used: dict[int, list[tuple[int, int]]] = {}
        while self._done:
            queue_index, chain, reply = self._done.popleft()
            used.setdefault(queue_index, []).append(
                (chain.head_index, self._write_reply(queue_index, chain, reply)))
        notify = set()
        for index, elems in used.items():
            queue = self.queues[index]
            if queue.broken or not queue.ready:
                continue
            queue.add_used_batch(mem, elems)
            if queue.needs_notification(mem):
                notify.add(index)
        return notify

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        def idle() -> bool:
            return not any(fs for i, fs in self._inflight.items() if index is None or i == index)

        with self._lock:  # a request leaves _inflight only after its reply is in _done
            finished = self._lock.wait_for(idle, timeout)
        if mem is not None:
            self._publish(mem)
        else:  # the ring is gone: its replies have nowhere to go
            keep = [d for d in self._done if index is not None and d[0] != index]
            self._done.clear()
            self._done.extend(keep)
        return finished

    # --- lifecycle ------------------------------------------------------------------------------

    def on_reset(self) -> None:
        self.quiesce(None)
        self.server.destroy()

    def statistics(self) -> dict:
        stats = super().statistics()
        stats["fs"] = dict(self.stats, inodes=len(self.backend.inodes), handles=len(self.backend.handles),
                           tag=self.tag, cache=self.server.cache, read_only=self.backend.read_only)
        return stats

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.backend.close()
        if self._done_fd >= 0:
            fd, self._done_fd = self._done_fd, -1
            os.close(fd)


__all__ = ["DEFAULT_THREADS", "FsDevice", "MAX_REQUEST"]
