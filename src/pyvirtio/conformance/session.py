"""A hand-driven vhost-user front-end for the conformance checks.

Unlike :class:`~pyvirtio.vhost_user.frontend.transport.VhostUserTransport`, which hides the protocol
behind the virtio device model, a :class:`Session` lets a check take each step itself: which
features to ack, how to send the memory table, where to place a ring, which base index to start
it at, whether to enable it.  Rings are pyvirtio's driver-side split rings over memfd memory;
requests come from a :class:`Workload` that knows one harmless request per device type.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass
from typing import Callable

from ..alloc import GuestAllocator
from ..errors import UsageError
from ..spec import blk as spec_blk
from ..spec.features import Feature
from ..spec.ids import DeviceType
from ..spec.status import DeviceStatus as S
from ..virtq import SplitDriverQueue, SplitRingLayout
from ..vhost_user.frontend.client import VhostUserClient
from ..vhost_user.frontend.connection import PROTOCOL_FEATURES_BIT
from ..vhost_user.protocol import ProtocolFeature as PF
from ..vhost_user.frontend.transport import memfd_memory, memory_region

VERSION_1 = 1 << Feature.VERSION_1
EVENT_IDX = 1 << Feature.EVENT_IDX


# --- one harmless request per device type ------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """How to make one request on a device type: on which ring, with which buffers."""

    device_type: int
    queue: int  # the ring requests go to
    rings: tuple[int, ...]  # the rings that must be set up for the device to run
    build: Callable[["Session"], tuple[list, list]]  # -> (out_bufs, in_bufs)
    describe: str


def _blk_read(s: "Session") -> tuple[list, list]:
    hdr = s.buffer(spec_blk.BLK_REQ_HEADER.pack(spec_blk.BlkReqType.IN, 0, 0))
    return [hdr], [s.buffer(bytes(512)), s.buffer(b"\xff")]


def _rng_read(s: "Session") -> tuple[list, list]:
    return [], [s.buffer(bytes(64))]


def _net_tx(s: "Session") -> tuple[list, list]:
    # virtio_net_hdr (12 bytes with VERSION_1) + a broadcast frame of an unused EtherType.
    frame = b"\xff" * 6 + b"\x52\x54\x00\x12\x34\x56" + b"\x88\xb5" + bytes(46)
    return [s.buffer(bytes(12) + frame)], []


WORKLOADS: dict[int, Workload] = {
    DeviceType.BLOCK: Workload(DeviceType.BLOCK, 0, (0,), _blk_read, "a 512-byte read of sector 0"),
    DeviceType.ENTROPY: Workload(DeviceType.ENTROPY, 0, (0,), _rng_read, "a 64-byte entropy request"),
    DeviceType.NET: Workload(DeviceType.NET, 1, (0, 1), _net_tx, "one frame on transmitq1"),
}


# --- a ring the session drives -----------------------------------------------------------------


@dataclass
class TestRing:
    index: int
    vq: SplitDriverQueue
    kick: int
    call: int
    err: int
    completed: int = 0
    tokens: int = 0
    signals: int = 0  # call eventfd signals seen by wait()

    def close(self) -> None:
        for name in ("kick", "call", "err"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class Session:
    """One front-end connection, step by step."""

    def __init__(self, path: str, *, device_type: int | None, timeout: float = 2.0,
                 regions: int = 1, region_size: int = 2 << 20, handshake: bool = True,
                 protocol_features: int | None = None):
        kw = {} if protocol_features is None else {"protocol_features": protocol_features}
        self.client = VhostUserClient.connect(path, timeout=timeout, **kw)
        self.conn = self.client.conn
        self.path = path
        self.device_type = device_type
        self.timeout = timeout
        self.rings: dict[int, TestRing] = {}
        self.memory = memfd_memory([region_size] * regions)
        self.allocators = [GuestAllocator(r.gpa, r.size) for r in self.memory.regions]
        self.buffer_region = 0
        self.ring_region = 0
        self.features = 0
        if handshake:
            try:
                self.client.handshake()
            except BaseException:
                self.close()
                raise

    # --- building blocks -----------------------------------------------------------------------

    @property
    def workload(self) -> Workload | None:
        return WORKLOADS.get(self.device_type) if self.device_type else None

    def _known_workload(self) -> Workload:
        if self.workload is None:
            raise UsageError(f"no request is known for device type {self.device_type}: give index")
        return self.workload

    def alloc(self, size: int, align: int = 16, region: int | None = None) -> int:
        return self.allocators[self.buffer_region if region is None else region].alloc(size, align)

    def buffer(self, data: bytes) -> tuple[int, int]:
        addr = self.alloc(max(len(data), 1), 8)
        self.memory.write(addr, data)
        return addr, len(data)

    def default_features(self, *, event_idx: bool = True) -> int:
        offered = self.conn.backend_features or 0
        wanted = VERSION_1 | (EVENT_IDX if event_idx else 0)
        return offered & wanted

    def negotiate(self, features: int | None = None, *, protocol_bit: bool = True) -> int:
        """SET_FEATURES (with VHOST_USER_F_PROTOCOL_FEATURES when offered and ``protocol_bit``)."""
        features = self.default_features() if features is None else features
        if protocol_bit and self.conn.offers_protocol_features:
            features |= PROTOCOL_FEATURES_BIT
        self.client.set_features(features)
        self.features = features
        return features

    def send_memory(self, how: str = "table") -> None:
        regions = self.memory.regions
        table = [memory_region(r) for r in regions]
        if how == "slots":
            for region, r in zip(table, regions):
                self.client.add_mem_reg(region, r.fd)
        else:
            self.client.set_mem_table(table, [r.fd for r in regions])

    def start(self, *, features: int | None = None, memory: str = "table",
              enable: bool = True, size: int = 64, protocol_bit: bool = True) -> None:
        """Features, memory, and every ring the workload needs, as QEMU would."""
        self.negotiate(features, protocol_bit=protocol_bit)
        self.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        self.send_memory(memory)
        for index in self.workload.rings if self.workload else (0,):
            self.setup_ring(index, size=size, enable=enable)
        self.driver_ok()

    def status(self, status: int) -> None:
        """SET_STATUS when STATUS is negotiated (some back-ends, DPDK's among them, start the
        device only on DRIVER_OK); nothing otherwise."""
        if self.has(PF.STATUS):
            self.client.set_status(status)

    def driver_ok(self) -> None:
        self.status(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)

    def setup_ring(self, index: int, *, size: int = 64, base: int = 0, enable: bool = True,
                   ring: TestRing | None = None) -> TestRing:
        """SET_VRING_NUM, _BASE, _ADDR, _CALL, _ERR, _KICK (and _ENABLE).  With ``ring`` the same
        ring memory is handed over again (a restart); else a fresh ring starts at ``base``."""
        c = self.client
        if ring is None:
            addr = self.alloc(SplitRingLayout.bytes_needed(size), 4096, self.ring_region)
            layout = SplitRingLayout.contiguous(addr, size)
            vq = SplitDriverQueue(layout, index=index, event_idx=bool(self.features & EVENT_IDX))
            vq.setup(self.memory)
            if base:
                _start_indices_at(self.memory, vq, base)
            ring = TestRing(index, vq, _eventfd(), _eventfd(), _eventfd())
        else:
            ring.kick, ring.call, ring.err = _eventfd(), _eventfd(), _eventfd()
        self.rings[index] = ring
        lay = ring.vq.layout
        uva = self.memory.gpa_to_uva
        c.set_vring_num(index, lay.size)
        c.set_vring_base(index, base)
        c.set_vring_addr(index, uva(lay.desc_table), uva(lay.used_ring), uva(lay.avail_ring))
        c.set_vring_call(index, ring.call)
        c.set_vring_err(index, ring.err)
        c.set_vring_kick(index, ring.kick)
        if enable and self.conn.protocol_features_negotiated:
            c.set_vring_enable(index, True)
        return ring

    def stop_ring(self, index: int) -> int:
        base = self.client.get_vring_base(index)
        ring = self.rings[index]
        ring.close()
        return base

    # --- traffic -------------------------------------------------------------------------------

    def submit(self, count: int = 1, index: int | None = None, *, kick: bool = True) -> TestRing:
        workload = self._known_workload()
        ring = self.rings[workload.queue if index is None else index]
        for _ in range(count):
            out_bufs, in_bufs = workload.build(self)
            ring.tokens += 1
            ring.vq.add(self.memory, out_bufs, in_bufs, ring.tokens)
        if kick and ring.vq.kick_prepare(self.memory) and ring.kick >= 0:
            os.eventfd_write(ring.kick, 1)
        return ring

    def kick(self, index: int) -> None:
        os.eventfd_write(self.rings[index].kick, 1)

    def wait(self, count: int, index: int | None = None, timeout: float | None = None) -> int:
        """Collect used buffers until ``count`` more came back or ``timeout``; returns how many."""
        ring = self.rings[self._known_workload().queue if index is None else index]
        target = ring.completed + count
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ring.completed += len(ring.vq.get_bufs(self.memory))
            if ring.completed >= target:
                return count
            left = deadline - time.monotonic()
            if left <= 0:
                return count - (target - ring.completed)
            ring.signals += _wait_fd(ring.call, min(left, 0.05))
            self.client.check_alive()

    def signalled(self, index: int) -> bool:
        """Whether the ring's call eventfd fired (and clear it)."""
        fd = self.rings[index].call
        try:
            os.eventfd_read(fd)
            return True
        except (BlockingIOError, OSError):
            return False

    def used_idx(self, index: int) -> int:
        return self.memory.load16(self.rings[index].vq.layout.used_ring + 2)

    def has(self, bit: PF) -> bool:
        return self.conn.has_protocol_feature(bit)

    def close(self) -> None:
        self.client.close()
        for ring in self.rings.values():
            ring.close()
        self.memory.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _start_indices_at(mem, vq: SplitDriverQueue, base: int) -> None:
    """A ring that resumes at ``base`` (as after migration): avail and used idx both ``base``."""
    base &= 0xFFFF
    mem.store16(vq.layout.avail_ring + 2, base)
    mem.store16(vq.layout.used_ring + 2, base)
    vq.avail_idx_shadow = vq.kicked_avail = vq.last_used = base


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _wait_fd(fd: int, timeout: float) -> bool:
    """Wait for an eventfd; True if it had been signalled (and is now cleared)."""
    if fd < 0:
        time.sleep(timeout)
        return False
    select.select([fd], [], [], timeout)
    try:
        os.eventfd_read(fd)
        return True
    except (BlockingIOError, OSError):
        return False


__all__ = ["Session", "TestRing", "Workload", "WORKLOADS", "VERSION_1", "EVENT_IDX"]
