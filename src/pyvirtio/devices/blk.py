"""Block device (VIRTIO 1.3, 5.2) over a raw image file.

Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES.  Every request is checked first: a
request past the capacity, a length that is not a whole number of sectors, a write to a read-only
disk, or an unknown type gets IOERR or UNSUPP in its status byte and the queue goes on.  A chain
with no room for the status byte is the driver's fault and is returned with 0 bytes.

Reads, writes and flushes are asynchronous (:mod:`.blk_io`): each queue is its own queue group
(one engine worker), keeps up to a ring's worth of requests in flight in the kernel through
io_uring or a thread pool, and completes them as they finish — zero copy between the image and
guest memory, the used ring in completion order.  GET_ID, DISCARD and WRITE_ZEROES complete at
once.  The image is opened, checked and locked as QEMU does (:mod:`.blk_image`), optionally
``O_DIRECT`` (``direct=True``, like qemu-storage-daemon's ``cache.direct=on``).
"""

from __future__ import annotations

import errno
import logging
import os

import select
import stat
import threading
import time
from collections import deque
from functools import partial
from typing import Callable

from ..aio.base import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate
from ..device import VirtioDevice
from ..errors import DriverFault, GuestMemoryError, UsageError
from ..memory import GuestMemory
from ..spec import blk as spec
from ..spec.features import Feature
from ..spec.ids import DeviceType
from ..virtq import DescriptorChain
from ..virtq.drain import drain_queue
from .blk_faults import Holding, faulty_request
from .blk_image import ImageError, open_image
from .blk_io import FLUSH, READ, WRITE, QueueIO, Request

log = logging.getLogger(__name__)

SECTOR = spec.SECTOR_SIZE
_HDR = spec.BLK_REQ_HEADER
_SEG = spec.BLK_DISCARD_WRITE_ZEROES
_F = spec.BlkFeature
_T = spec.BlkReqType
_S = spec.BlkStatus
_OK, _IOERR = int(_S.OK), int(_S.IOERR)
# Plain ints for the per-request path (an enum member lookup costs several times a global's).
_T_IN, _T_OUT, _T_FLUSH = int(_T.IN), int(_T.OUT), int(_T.FLUSH)
_HDR_SIZE = _HDR.size
_unpack_hdr = _HDR.unpack_from

#: The serial a guest sees unless told otherwise (never derived from the host file name).
DEFAULT_SERIAL = "pyvirtio-blk"
AIO_MODES = ("auto", "io_uring", "threads")


#: How long a shrink waits for requests in flight past the new end to finish.
SHRINK_TIMEOUT = 30.0


class ResizeError(ImageError):
    """A resize that cannot be done as asked (read-only image, a host block device of another
    size, a shrink without ``shrink=True``, requests that kept running past the new end)."""


class BlkDevice(VirtioDevice):
    """A virtio-blk device backed by a raw image file (or block device)."""

    device_type = DeviceType.BLOCK
    #: Requests complete out of order: a vhost-user back-end records those in flight in the
    #: front-end's inflight buffer (pyvirtio.vhost_user.backend.inflight), so a restarted daemon
    #: resubmits them (reads and writes are idempotent; nothing is lost on kill -9).
    inflight_tracking = True
    #: How long (s) a turn that sent requests to the kernel may wait for the first of them to
    #: finish before it ends (0: never).  Only where the transport lets the device notify
    #: mid-turn (vhost-user), never in-process (the driver's own thread would wait).
    linger = 0.001

    def __init__(self, path: str, *, read_only: bool = False, serial: str | None = None,
                 num_queues: int = 1, queue_max_size: int = 256, writeback: bool = True,
                 discard: bool = True, write_zeroes: bool = True, size_max: int = 1 << 20,
                 direct: bool = False, aio: str = "auto", image_format: str | None = None,
                 locking: bool = True, in_order: bool = False):
        if num_queues < 1 or num_queues > 64:
            raise UsageError(f"num_queues {num_queues} is not in 1..64")
        if aio not in AIO_MODES:
            raise UsageError(f"aio {aio!r} is not one of {', '.join(AIO_MODES)}")
        self.path = path
        self.read_only = read_only
        self.image = open_image(path, read_only=read_only, direct=direct, image_format=image_format,
                                lock=locking)
        self.fd = self.image.fd
        self.direct = direct
        self.aio = aio
        self.capacity = self.image.size // SECTOR
        #: A fixed default, as qemu-storage-daemon's: a guest must not learn host file names.
        self.serial = (serial if serial is not None else DEFAULT_SERIAL)[:spec.BLK_ID_BYTES]
        self.num_queues = num_queues
        self.queue_max_size = queue_max_size
        self.size_max = size_max
        self.seg_max = max(1, queue_max_size - 2)  # header and status take two descriptors
        self.max_discard_sectors = self.max_write_zeroes_sectors = 0x3FFFFF
        self.max_discard_seg = self.max_write_zeroes_seg = 32
        feats = (_F.SIZE_MAX, _F.SEG_MAX, _F.BLK_SIZE, _F.FLUSH, _F.TOPOLOGY, _F.CONFIG_WCE)
        mask = sum(1 << f for f in feats)
        if read_only:
            mask |= 1 << _F.RO
        if discard and not read_only:
            mask |= 1 << _F.DISCARD
        if write_zeroes and not read_only:
            mask |= 1 << _F.WRITE_ZEROES
        if num_queues > 1:
            mask |= 1 << _F.MQ
        self.device_specific_features = mask
        self.default_writeback = writeback
        super().__init__()
        self.writeback = writeback
        self.stats = {"read_bytes": 0, "write_bytes": 0, "requests": 0, "errors": 0}
        self._io: dict[int, QueueIO] = {}  # per queue, made by the queue's worker on first use
        if in_order:  # offered on request: completions then wait for the ones popped before them
            self.device_features |= 1 << Feature.IN_ORDER
        # With VIRTIO_F_IN_ORDER negotiated, per queue: heads in the order they were popped, and
        # the used length of those already finished (published once all before them are).
        self._order: dict[int, deque[int]] = {}
        self._finished: dict[int, dict[int, int]] = {}
        #: Completions held back by fault rules (``latency``: pyvirtio.devices.blk_faults).
        self.holding = Holding()
        #: Turns whose linger found a completion (a diagnostic count; the tests read it).
        self.lingered = 0
        #: Per queue, its drain through blk (process_queue): made once, reset by each pass.
        #: (Keyed by queue: each has its own worker thread.)
        self._passes: dict[int, _QueuePass] = {}

    @property
    def io_mode(self) -> str:
        """How requests reach the image, for the start-up line: engine and cache mode."""
        return f"aio={self.aio_name}, cache={'direct (O_DIRECT)' if self.direct else 'page cache'}"

    @property
    def aio_name(self) -> str:
        """The I/O engine requests go through ("io_uring" or "threads")."""
        from ..aio import io_uring_unavailable_reason
        if self.aio != "auto":
            return self.aio
        return "threads" if io_uring_unavailable_reason() else "io_uring"

    # --- config space (5.2.4) -------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        values = dict(
            capacity=self.capacity, size_max=self.size_max, seg_max=self.seg_max,
            blk_size=SECTOR, physical_block_exp=0, alignment_offset=0, min_io_size=1,
            opt_io_size=0, writeback=int(self.writeback), num_queues=self.num_queues,
            max_discard_sectors=self.max_discard_sectors, max_discard_seg=self.max_discard_seg,
            discard_sector_alignment=1, max_write_zeroes_sectors=self.max_write_zeroes_sectors,
            max_write_zeroes_seg=self.max_write_zeroes_seg, write_zeroes_may_unmap=1,
        )
        return spec.BLK_CONFIG.pack(*(values.get(name, 0) for name in spec.BLK_CONFIG_FIELDS))

    def write_config(self, offset: int, data: bytes) -> None:
        # Only ``writeback`` is writable, and only with CONFIG_WCE (5.2.5).
        if offset == spec.BlkConfigOffset.WRITEBACK and len(data) == 1 and self.has_feature(_F.CONFIG_WCE):
            self.writeback = bool(data[0])

    def on_features(self, features: int) -> None:
        # 5.2.5.1: without CONFIG_WCE the writeback mode follows FLUSH.
        if not self.has_feature(_F.CONFIG_WCE):
            self.writeback = self.has_feature(_F.FLUSH)

    def on_reset(self) -> None:
        self.quiesce(None)  # nothing of the old driver's may still be writing into its memory
        self._close_io()
        self.holding.close()
        self._order.clear()
        self._finished.clear()
        self._passes.clear()
        self.writeback = self.default_writeback

    def _close_io(self) -> None:
        ios, self._io = list(self._io.values()), {}
        for io in ios:
            io.close()

    # --- the engine's doors: one queue group per queue ------------------------------------------

    def queue_groups(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(len(self.queues))]

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        io = self._io.get(group)
        fds = [(io.completion_fd, select.POLLIN)] if io is not None and io.inflight else []
        if self.holding.queues and self.holding.fd(group) >= 0:  # completions a fault rule holds back
            fds.append((self.holding.fd(group), select.POLLIN))
        return fds

    def process_queue(self, mem: GuestMemory, queue) -> bool:
        """Drain ``queue``: requests go to the kernel in batches during the pass and the rest at
        its end; with :attr:`notify_queue`, what finished goes back during the pass too.  While some of
        them are still in flight the driver's kicks stay off (``kicks_held``): each completion
        turn drains the ring again (the engine), so a driver keeping the queue full never
        kicks, and this worker takes one turn per completion instead of one more per kick —
        unless the last request started was large (``blk_io.KICKS_ON_BYTES``): completions are
        then far apart, and the next request is to start when it is made available.
        The pass's steps are :class:`_QueuePass`'s, one object per queue made once."""
        if queue.in_order:
            return self._process_in_order(mem, queue)
        drain = self._passes.get(queue.index) or self._new_pass(queue.index)
        try:
            drain.mem = mem
            notify = drain.take_one(queue)  # the usual turn at queue depth 1, if it may be
            if notify is not None:
                return notify
            handle, notify_now = drain.begin(mem)
            notify = drain_queue(queue, mem, handle, drain.settle, notify_now)  # queue.drain's loop
        finally:
            drain.mem = None
        return notify or drain.finished

    def _new_pass(self, index: int) -> _QueuePass:
        drain = self._passes[index] = _QueuePass(self, index)
        return drain

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        """Completions arrived: status bytes, then one used-ring update for all of them."""
        io = self._io.get(group)
        done: list[tuple[int, int]] = []
        if io is not None and io.inflight:
            # The completion fd is read only when it fired: a look right after a submit (most
            # often, nothing yet) costs no system call.
            io.reap(lambda req, err: done.append(self._finish(req, err, group)), clear=bool(events))
        elif not self._finished.get(group) and not self.holding.queues:
            return set()
        if self.holding.queues:
            done += self.holding.due(group)
        return self._publish(mem, group, done)

    def _complete(self, mem: GuestMemory, index: int, io: QueueIO,
                  completions: list[tuple[int, int]]) -> set[int]:
        """Completions already reaped from the engine (a linger's wait): finished and
        published as :meth:`host_ready` does."""
        done: list[tuple[int, int]] = []
        io.reap(lambda req, err: done.append(self._finish(req, err, index)), completions)
        return self._publish(mem, index, done)

    def _process_in_order(self, mem: GuestMemory, queue) -> bool:
        """VIRTIO_F_IN_ORDER: requests still run at once and finish in any order, but go back to
        the driver in the order they were popped (2.7.9, 2.8.21) — a finished one waits for every
        one popped before it."""
        index = queue.index
        order = self._order.setdefault(index, deque())
        finished = self._finished.setdefault(index, {})

        def handle(chain: DescriptorChain) -> None:
            order.append(chain.head_index)
            written = self.handle_chain(index, chain)
            if written is not None:
                finished[chain.head_index] = written
            return None  # never published by the drain itself

        drain = self._passes.get(index) or self._new_pass(index)
        drain.mem = mem
        try:
            queue.drain(mem, handle)
        finally:
            drain.mem = None
        io = self._io.get(index)
        if io is not None and io.inflight:
            io.submit()
        return index in self.host_ready(mem, index, [])

    def _publish(self, mem: GuestMemory | None, index: int, done: list[tuple[int, int]]) -> set[int]:
        queue = self.queues[index]
        if self.holding.late and done:  # a fault rule's latency: not before its time
            done = self.holding.divert(index, done)
        if queue.in_order and index in self._order:  # hold back what finished early
            finished = self._finished[index]
            finished.update(done)
            order, done = self._order[index], []
            while order and order[0] in finished:
                head = order.popleft()
                done.append((head, finished.pop(head)))
        if not done or mem is None or queue.broken or not queue.ready:
            return set()
        queue.add_used_batch(mem, done)
        return {index} if queue.needs_notification(mem) else set()

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        ok = True
        for i in ([index] if index is not None else sorted(set(self._io) | set(self.holding.queues))):
            held = self.holding.release(i) if self.holding.queues or self.holding.late else []  # a fault's latency ends now
            if i in self.kicks_held:  # kicks back on; what raced in is drained at the next wake
                self.kicks_held.discard(i)
                queue = self.queues[i]
                if mem is not None and queue.ready and not queue.broken:
                    try:
                        queue.enable_notification(mem)
                    except (DriverFault, GuestMemoryError) as exc:  # the ring is going away
                        log.warning("blk %s: queue %d: kicks not turned back on: %s", self.path, i, exc)
            io = self._io.get(i)
            if io is None or not io.inflight:
                if held:
                    self._publish(mem, i, held)
                continue
            done: list[tuple[int, int]] = held
            ok = io.wait_all(lambda req, err: done.append(self._finish(req, err, i)), timeout) and ok
            try:
                self._publish(mem, i, done)
            except Exception as exc:  # the ring is going away; what matters is nothing is left
                log.warning("blk %s: queue %d: completions not published: %s", self.path, i, exc)
        return ok

    def _queue_io(self, index: int) -> QueueIO:
        io = self._io.get(index)
        if io is None:
            io = self._io[index] = QueueIO(self.fd, aio=self.aio, depth=max(q.max_size for q in self.queues),
                                           align=self.image.align, direct=self.direct)
        return io

    # --- requests (5.2.6) -----------------------------------------------------------------------

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int | None:
        if chain.readable_len < _HDR_SIZE or chain.writable_len < 1:
            self.guest_log.warning("blk: chain %d has no request header or no status byte", chain.head_index)
            return 0
        if chain.descriptors > self.seg_max + 2:  # header, data segments, status (5.2.4 seg_max)
            chain.writable[-1][-1] = _IOERR
            self.stats["requests"] += 1
            self.count_error(queue_index)
            return 1
        first = chain.readable[0]
        if len(first) >= _HDR_SIZE:  # the usual layout: the header in a descriptor of its own
            rtype, _ioprio, sector = _unpack_hdr(first)
        else:
            rtype, _ioprio, sector = _HDR.unpack(chain.read(0, _HDR_SIZE))
        if self.faults.rules:
            return faulty_request(self, queue_index, rtype, sector, chain)
        return self.request(queue_index, rtype, sector, chain)

    def request(self, queue_index: int, rtype: int, sector: int, chain: DescriptorChain) -> int | None:
        """Start a checked request: the bytes written if it is done at once, else None (completed
        by host_ready, as the kernel finishes it).  A read whose data is in the page cache is
        copied straight into the guest's buffers here (:meth:`QueueIO.copy_now`), with no
        :class:`Request` made: the usual 4 KiB read costs one system call and a few lines."""
        if rtype == _T_IN:
            length = chain.writable_len - 1
            if length and not length % SECTOR and sector + length // SECTOR <= self.capacity:
                views = chain.writable
                io = self._io.get(queue_index) or self._queue_io(queue_index)
                # The usual layout (the status byte in a descriptor of its own) needs no slicing,
                # and the walk's host addresses of those views go along (DescriptorChain.addresses).
                usual = len(views[-1]) == 1
                data = views[:-1] if usual else chain.writable_views(0, length)
                # O_DIRECT: a read alone on its ring may be done at once too (copy_now), as a
                # write may (below).
                if io.copy_now(data, sector * SECTOR, length, io.direct and self._alone(queue_index)):
                    views[-1][-1] = _OK
                    stats = self.stats
                    stats["requests"] += 1
                    stats["read_bytes"] += length
                    return length + 1
                addresses = chain.addresses if usual else None  # readable's, then writable's
                io.start(Request(chain, READ, data, sector * SECTOR, length, False,
                                 addresses[len(chain.readable):-1] if addresses is not None else None))
                return None
        else:
            req = self._async_request(rtype, sector, chain)
            if req is not None:
                io = self._io.get(queue_index) or self._queue_io(queue_index)
                # O_DIRECT: a write alone on its ring may be done at once (QueueIO.write_now).
                if io.direct and req.kind == WRITE and io.write_now(
                        req.views, req.offset, req.length, req.dsync, self._alone(queue_index)):
                    chain.writable[-1][-1] = _OK
                    stats = self.stats
                    stats["requests"] += 1
                    stats["write_bytes"] += req.length
                    return 1
                io.start(req)
                return None
        return self._complete_now(queue_index, rtype, sector, chain)

    def _alone(self, queue_index: int) -> bool:
        """Whether the ring being drained (process_queue) has nothing more available: an
        O_DIRECT request popped from it may then be done at once (QueueIO._direct_now)."""
        drain = self._passes.get(queue_index)
        mem = drain.mem if drain is not None else None
        return mem is not None and not self.queues[queue_index].has_available(mem)

    def count_error(self, queue_index: int) -> None:
        """A request that ended with an error status: the device's total and its queue's."""
        self.stats["errors"] += 1
        if 0 <= queue_index < len(self.queues):
            self.queues[queue_index].stats.errors += 1

    def _async_request(self, rtype: int, sector: int, chain: DescriptorChain) -> Request | None:
        """A write or flush that is valid goes to the kernel (reads: :meth:`request`); anything
        else is None."""
        if rtype == _T_OUT:
            length = chain.readable_len - _HDR_SIZE
            if length and not self.read_only and self._range_ok(sector, length):
                views = chain.readable
                if len(views[0]) == _HDR_SIZE:
                    addresses = chain.addresses  # readable's (the header's first), then writable's
                    return Request(chain, WRITE, views[1:], sector * SECTOR, length, not self.writeback,
                                   addresses[1:len(views)] if addresses is not None else None)
                return Request(chain, WRITE, chain.readable_views(_HDR_SIZE, length), sector * SECTOR,
                               length, not self.writeback)
        elif rtype == _T_FLUSH:
            return Request(chain, FLUSH, [], 0, 0)
        return None

    def _finish(self, req: Request, error: OSError | None, queue_index: int = -1) -> tuple[int, int]:
        """A request the kernel finished (on queue ``queue_index``): its status byte and
        (head, bytes written)."""
        chain = req.chain
        stats = self.stats
        stats["requests"] += 1
        if error is not None:
            # Per request, and the guest decides how many: rate-limited (PeerLog).
            self.guest_log.warning("blk %s: %s at byte %d failed: %s", self.path,
                        ("read", "write", "flush")[req.kind], req.offset, error.strerror or error)
            self.count_error(queue_index)
            chain.writable[-1][-1] = _IOERR
            return chain.head_index, 1
        chain.writable[-1][-1] = _OK
        kind = req.kind
        if kind == READ:
            stats["read_bytes"] += req.length
            return chain.head_index, req.length + 1
        if kind == WRITE:
            stats["write_bytes"] += req.length
        return chain.head_index, 1

    def _complete_now(self, queue_index: int, rtype: int, sector: int, chain: DescriptorChain) -> int:
        status, written = self._execute(rtype, sector, chain)
        data_written = written
        chain.writable[-1][-1] = status  # the status byte: the last writable byte (5.2.6)
        self.stats["requests"] += 1
        if status != _S.OK:
            self.count_error(queue_index)
            data_written = written if rtype == _T.IN else 0
        return data_written + 1 if rtype in (_T.IN, _T.GET_ID) else 1

    def _execute(self, rtype: int, sector: int, chain: DescriptorChain) -> tuple[int, int]:
        """Run one request; returns (status, data bytes written into the chain)."""
        try:
            # Valid reads and writes with data, and every flush, went to the kernel
            # (_async_request); what reaches here is refused, or carries no data.
            if rtype == _T.IN:
                return (_S.OK if self._range_ok(sector, chain.writable_len - 1) else _S.IOERR), 0
            if rtype == _T.OUT:
                return self._empty_write(sector, chain), 0
            if rtype == _T.GET_ID:
                return self._get_id(chain)
            if rtype == _T.DISCARD and self.has_feature(_F.DISCARD):
                return self._segments(chain, discard=True), 0
            if rtype == _T.WRITE_ZEROES and self.has_feature(_F.WRITE_ZEROES):
                return self._segments(chain, discard=False), 0
            return _S.UNSUPP, 0
        except OSError as exc:
            self.guest_log.warning("blk %s: request type %d at sector %d failed: %s", self.path, rtype,
                                   sector, exc)
            return _S.IOERR, 0

    def _range_ok(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector + length // SECTOR <= self.capacity

    def _empty_write(self, sector: int, chain: DescriptorChain) -> int:
        if self.read_only:
            return _S.IOERR  # 5.2.6.1: writes to a read-only device fail with IOERR
        if not self._range_ok(sector, chain.readable_len - _HDR.size):
            return _S.IOERR
        return _S.OK

    def _get_id(self, chain: DescriptorChain) -> tuple[int, int]:
        room = chain.writable_len - 1
        if room < spec.BLK_ID_BYTES:
            return _S.IOERR, 0
        ident = self.serial.encode()[:spec.BLK_ID_BYTES].ljust(spec.BLK_ID_BYTES, b"\0")
        chain.write(ident, offset=0)
        return _S.OK, len(ident)

    def _segments(self, chain: DescriptorChain, *, discard: bool) -> int:
        if self.read_only:
            return _S.IOERR
        payload = chain.readable_len - _HDR.size
        if payload <= 0 or payload % _SEG.size:
            return _S.UNSUPP
        count = payload // _SEG.size
        max_seg = self.max_discard_seg if discard else self.max_write_zeroes_seg
        max_sectors = self.max_discard_sectors if discard else self.max_write_zeroes_sectors
        if count > max_seg:
            return _S.UNSUPP
        data = chain.read(_HDR.size, payload)
        segs = [_SEG.unpack_from(data, i * _SEG.size) for i in range(count)]
        for sector, num, flags in segs:
            if flags & ~spec.BLK_WRITE_ZEROES_FLAG_UNMAP or (discard and flags):
                return _S.UNSUPP  # 5.2.6.1: unknown flags; discard with the unmap flag
            if num > max_sectors or sector + num > self.capacity:
                return _S.IOERR
        for sector, num, flags in segs:
            self._zero_range(sector * SECTOR, num * SECTOR, punch=discard or bool(flags))
        return _S.OK

    def _zero_range(self, offset: int, length: int, *, punch: bool) -> None:
        if not length:
            return
        modes = [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE] if punch else []
        modes.append(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
        for mode in modes:
            try:
                fallocate(self.fd, mode, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        zeros = bytes(min(length, 1 << 20))
        while length:
            n = os.pwrite(self.fd, zeros[:min(length, len(zeros))], offset)
            offset += n
            length -= n

    # --- live resize (host API, any thread) ------------------------------------------------------

    def resize(self, size_bytes: int, *, shrink: bool = False) -> None:
        """Give the running disk a new size of ``size_bytes`` (a multiple of 512, > 0) and tell
        the driver (config change: a config interrupt, or CONFIG_CHANGE_MSG over vhost-user).

        An image file is grown with ftruncate (sparse: nothing is written).  A host block device
        cannot be grown from here: resize it first (lvextend, ...), then call this with its new
        size.  Shrinking discards data, so it needs ``shrink=True``: new requests past the new
        end fail with IOERR at once, the ones already in flight there are waited for (at most
        SHRINK_TIMEOUT), then the file is cut.  Growing needs no waiting: ``capacity`` is one
        value the queue workers read per request, and the file is grown before it changes.
        Raises :class:`ResizeError` (the device is left as it was)."""
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes <= 0 \
                or size_bytes % SECTOR:
            raise ResizeError(self.path, f"size {size_bytes!r} is not a positive multiple of {SECTOR} bytes")
        if self.read_only:
            raise ResizeError(self.path, "the image is served read-only: it cannot be resized")
        if self.fd < 0:
            raise ResizeError(self.path, "the device is closed")
        new, old = size_bytes // SECTOR, self.capacity
        if new < old and not shrink:
            raise ResizeError(self.path, f"{size_bytes} bytes is smaller than the disk "
                              f"({old * SECTOR} bytes): shrinking discards data (pass shrink=True; "
                              "pyvirtio ctl: resize SIZE --shrink)")
        if stat.S_ISBLK(os.fstat(self.fd).st_mode):
            self._resize_block_device(size_bytes)
        elif new > old:
            os.ftruncate(self.fd, size_bytes)
            self.capacity = new
        elif new < old:
            self.capacity = new  # from now on requests past the new end fail
            try:
                self._settle(size_bytes)
                os.ftruncate(self.fd, size_bytes)
            except BaseException:
                self.capacity = old
                raise
        if new == old:
            return
        self.image.size = size_bytes
        log.info("blk %s: resized from %d to %d bytes", self.path, old * SECTOR, size_bytes)
        self.config_changed()

    def _resize_block_device(self, size_bytes: int) -> None:
        actual = os.lseek(self.fd, 0, os.SEEK_END)
        if actual != size_bytes:
            raise ResizeError(self.path, f"a host block device ({actual} bytes) cannot be resized "
                              f"by pyvirtio; resize it first, then give its new size")
        self.capacity = size_bytes // SECTOR

    def _settle(self, end: int, timeout: float = SHRINK_TIMEOUT) -> None:
        """Wait until no request in flight reaches past byte ``end`` (each queue's requests are
        looked at in the queue's own worker, through ``host_call``)."""
        deadline = time.monotonic() + timeout
        for index in range(len(self.queues)):
            while self._busy_past(index, end, deadline):
                if time.monotonic() >= deadline:
                    raise ResizeError(self.path, f"requests of queue {index} past the new end "
                                      f"still in flight after {timeout:.0f} s: not shrunk")
                time.sleep(0.01)

    def _busy_past(self, index: int, end: int, deadline: float) -> bool:
        answer: list[bool] = []
        done = threading.Event()

        def look() -> None:
            io = self._io.get(index)
            answer.append(io is not None and any(r.offset + r.length > end
                                                 for r in io.inflight.values()))
            done.set()
        self.host_call(look, index)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise ResizeError(self.path, f"queue {index}'s worker did not answer: not shrunk")
        return answer[0]

    def close(self) -> None:
        self.quiesce(None)
        self._close_io()
        self.holding.close()
        self.image.close()
        self.fd = -1


class _QueuePass:
    """One queue's drain through blk (:meth:`BlkDevice.process_queue`): the handler and the
    settle step :func:`drain_queue` calls, and the state of the pass they share.  Made once per
    queue and reset by :meth:`begin` at each pass — the request path at queue depth 1 makes no
    closure per pass — and used only by that queue's worker."""

    __slots__ = ("blk", "index", "mem", "linger", "submits", "finished", "plain", "mid", "settle",
                 "_notify", "_notify_of")

    def __init__(self, blk: BlkDevice, index: int):
        self.blk, self.index = blk, index
        #: The guest memory while a pass runs (request()'s look at the ring: _alone), else None.
        self.mem: GuestMemory | None = None
        self.linger = 0.0  # what is left of this pass's wait for a first completion
        self.submits = -1  # the engine's batch count last seen in this pass
        self.finished = False  # completions of this pass published by settle
        # The handlers and the settle step, bound once.
        self.plain: Callable[[DescriptorChain], int | None] = partial(blk.handle_chain, index)
        self.mid: Callable[[DescriptorChain], int | None] = self._handle_mid
        self.settle: Callable[[], bool | None] = self._settle
        self._notify: Callable[[], None] | None = None
        self._notify_of: Callable[[int], None] | None = None  # the notify_queue _notify calls

    def begin(self, mem: GuestMemory) -> tuple[Callable[[DescriptorChain], int | None], Callable[[], None] | None]:
        """A new pass: its handler and how the drain notifies the driver mid-pass (reads copied
        at once go back in batches, and the driver refills the ring meanwhile) — None without a
        transport that allows it, or while fault rules are set (they see every notification:
        the engine's delays and drops, blk's held completions)."""
        blk = self.blk
        self.mem, self.finished = mem, False
        notify_queue, holding = blk.notify_queue, blk.holding
        if notify_queue is None or blk.faults.rules or holding.queues or holding.late:
            self.linger = 0.0
            return self.plain, None
        if notify_queue is not self._notify_of:
            self._notify, self._notify_of = partial(notify_queue, self.index), notify_queue
        # The batches sent so far: a request the pass's short way (take_one) started counts
        # as one of this pass's, so the pass's first batch answers what finished of it too.
        io = blk._io.get(self.index)
        self.linger, self.submits = blk.linger, io.submits if io is not None else -1
        return self.mid, self._notify

    def take_one(self, queue) -> bool | None:
        """The usual turn at queue depth 1, the short way: pop one chain — the ring core's
        validated walk, as every pass — and answer it if it is done at once (a read of cached
        data, an O_DIRECT transfer alone on its ring, a request refused) and, if it was alone
        on the ring, tell the driver at once where the transport allows (``notify_queue``, as
        the pass does) and ask for the next kick.  Returns whether the worker is to notify the
        driver, or None when the turn needs the whole pass (:func:`drain_queue`): the short way
        may not be taken (the driver's kicks are held, requests of this queue are in flight, or
        fault rules are set: the pass's settle step serves their completions, latencies and
        held answers), nothing was available (the pass looks again), the request went to the
        kernel (the pass sends it and settles), or more chains are available (the pass drains
        them; the one answered here is already in the used ring, and goes back with the pass's
        first batch)."""
        blk, index = self.blk, self.index
        if blk.faults.rules or index in blk.kicks_held:
            return None
        holding = blk.holding
        if holding.queues or holding.late:
            return None
        io = blk._io.get(index)
        if io is not None and io.inflight:
            return None
        mem = self.mem
        chain = queue.pop_descriptor_chain(mem)
        if chain is None:
            return None
        written = blk.handle_chain(index, chain)
        if written is None:
            return None
        queue.add_used_batch(mem, [(chain.head_index, written)])
        if queue.has_available(mem):  # the pass drains the rest; its first batch takes this one
            return None
        notify = blk.notify_queue
        if notify is None:  # the worker notifies as this returns
            return None if queue.enable_notification(mem) else queue.needs_notification(mem)
        # Told at once, before the next kick is asked for (off the request's path); a request
        # the driver makes available meanwhile is seen by that request's re-check (2.7.10).
        if queue.needs_notification(mem):
            notify(index)
        return None if queue.enable_notification(mem) else False

    def _handle_mid(self, chain: DescriptorChain) -> int | None:
        """The handler when the drain may notify mid-pass: a request that went to the engine may
        have been sent with a batch (SUBMIT_EVERY); what finished of the earlier ones goes back
        now, while the rest of the ring is drained."""
        blk, index = self.blk, self.index
        written = blk.handle_chain(index, chain)
        if written is not None:  # done at once: nothing went to the engine
            return written
        io = blk._io.get(index)
        if io is not None and io.submits != self.submits:
            if self.submits >= 0 and index in blk.host_ready(self.mem, index, []):  # type: ignore[arg-type]
                self._notify()  # type: ignore[misc]
            self.submits = io.submits
        return written

    def _settle(self) -> bool | None:
        """After each look at the ring (:func:`drain_queue`'s ``settle``): send what the pass
        started; True ends the pass with kicks held (requests in flight), None asks for another
        look with kicks still off, False lets the drain turn kicks back on."""
        blk, index = self.blk, self.index
        io = blk._io.get(index)
        if io is not None and io.inflight:
            mem = self.mem
            inline, done = io.finished_inline(), None
            if self.linger and not inline:
                # Nothing of this pass is done inside the submit (O_DIRECT, offloaded copies):
                # send what is left and wait for the first completion (below) in one system call.
                done = io.submit_and_wait(self.linger)
            else:
                io.submit()  # what is left of this pass
                # What finished inside the submit (cached data) goes back in this same turn.
                if inline and index in blk.host_ready(mem, index, []):  # type: ignore[arg-type]
                    self.finished = True
                if self.linger and io.inflight:
                    done = io.engine.wait(self.linger)
            if done is not None:
                # Kicks stay off while requests are in flight, so until one finishes the worker
                # would only sleep in its poll: wait for it here instead (bounded), answer it and
                # drain again in this turn — one wake-up per request at queue depth 1, not two
                # (the kick, then the completion).  Once per turn, so a busy ring still lets the
                # control path in between turns.
                self.linger = 0.0
                if done:
                    blk.lingered += 1
                    if index in blk._complete(mem, index, io, done):  # type: ignore[arg-type]
                        self._notify()  # type: ignore[misc]
                    if io.inflight:
                        # Another pass, kicks still off: the driver, told, may have made
                        # requests available meanwhile (a full ring's next ones).
                        return None
            if io.inflight and not blk.holding.queues and not io.large:
                blk.kicks_held.add(index)
                return True
        blk.kicks_held.discard(index)
        return False
