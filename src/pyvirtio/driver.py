"""The driver side of the virtio device model: one driver per device class, any transport.

A :class:`VirtioDriver` subclass declares an ID table (the device types it drives) and the
features it wants; :meth:`VirtioDriver.probe` runs the spec's initialisation sequence (3.1.1)
over a :class:`~pyvirtio.transport.DriverTransport`, reads the config space with generation
checks (2.5.1), and sets up its virtqueues.  Requests go through :class:`DriverQueue`, which keeps
many requests in flight and hands back each one's bytes when the device returns it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Self, Sequence

from .errors import (ConfigGenerationError, DeviceFault, FeatureNegotiationError, QueueFull,
                     UsageError, VirtioError)
from .interrupt import Interrupt
from .spec.features import Feature
from .spec.status import DeviceStatus
from .transport import DriverTransport
from .virtq import PackedDriverQueue, PackedRingLayout, SplitDriverQueue, SplitRingLayout, driver_queue, notification

log = logging.getLogger(__name__)

#: Reserved features every pyvirtio driver accepts when offered.
COMMON_DRIVER_FEATURES = ((1 << Feature.VERSION_1) | (1 << Feature.EVENT_IDX) | (1 << Feature.INDIRECT_DESC)
                          | (1 << Feature.RING_PACKED) | (1 << Feature.IN_ORDER))
CONFIG_READ_RETRIES = 100


class Pending:
    """One request in flight: the guest buffers it occupies and, once done, what came back."""

    __slots__ = ("out_bufs", "in_bufs", "done", "written", "owned", "token")

    def __init__(self, out_bufs, in_bufs, owned, token=None):
        self.out_bufs = out_bufs
        self.in_bufs = in_bufs
        self.owned = owned  # guest addresses allocated for this request, freed on completion
        self.done = False
        self.written = 0
        self.token = token


class DriverQueue:
    """A driver's virtqueue plus request bookkeeping over a transport."""

    #: VIRTIO_F_NOTIFICATION_DATA: every kick tells the device where the driver writes next (2.9).
    notification_data = False

    def __init__(self, transport: DriverTransport, index: int, size: int, *, event_idx: bool,
                 indirect: bool, max_indirect: int = 32, packed: bool = False, in_order: bool = False):
        self.transport = transport
        self.index = index
        mem = transport.memory
        layout_cls, queue_cls = (PackedRingLayout, PackedDriverQueue) if packed else (SplitRingLayout, SplitDriverQueue)
        self._ring_addr = transport.alloc(layout_cls.bytes_needed(size), 4096)
        layout = layout_cls.contiguous(self._ring_addr, size)
        ind_area, self._ind_addr = None, None
        if indirect and max_indirect:
            self._ind_addr = ind_area = transport.alloc(queue_cls.indirect_area_size(size, max_indirect), 16)
        self.vq = driver_queue(layout, index=index, event_idx=event_idx, in_order=in_order,
                            indirect_area=ind_area, max_indirect=max_indirect if indirect else 0)
        self.vq.setup(mem)
        self.mem = mem

    # --- submitting -----------------------------------------------------------------------------

    def submit(self, out: Sequence[bytes], in_sizes: Sequence[int], *, kick: bool = True) -> Pending:
        """Copy ``out`` into fresh guest buffers, add writable buffers of ``in_sizes``, and make the
        chain available.  Waits for room if the ring is full."""
        alloc, mem = self.transport.alloc, self.mem
        owned, out_bufs, in_bufs = [], [], []
        try:
            for data in out:
                addr = alloc(max(len(data), 1), 8)
                owned.append(addr)
                mem.write(addr, data)
                out_bufs.append((addr, len(data)))
            for n in in_sizes:
                addr = alloc(max(n, 1), 8)
                owned.append(addr)
                in_bufs.append((addr, n))
        except BaseException:
            for addr in owned:
                self.transport.free(addr)
            raise
        return self.submit_buffers(out_bufs, in_bufs, owned=owned, kick=kick)

    def submit_buffers(self, out_bufs, in_bufs, *, owned=(), kick: bool = True, token: Any = None) -> Pending:
        """Make caller-placed guest buffers available (zero-copy)."""
        pending = Pending(out_bufs, in_bufs, list(owned), token)
        while True:
            try:
                self.vq.add(self.mem, out_bufs, in_bufs, pending)
                break
            except QueueFull:
                self.kick()
                if not self.poll():
                    self.transport.wait_for_interrupt(1.0)
        if kick:
            self.kick()
        return pending

    def kick(self) -> None:
        """Notify the device of what was added, if it asked to be told (2.7.13, 2.8.22: event index
        or flags)."""
        if self.vq.kick_prepare(self.mem):
            if self.notification_data:
                self.transport.notify(self.index, notification.driver_position(self.vq))
            else:
                self.transport.notify(self.index)

    # --- completing -----------------------------------------------------------------------------

    def poll(self) -> list[Pending]:
        """Collect every used chain; returns the requests completed now."""
        done = []
        for pending, written in self.vq.get_bufs(self.mem):
            pending.done, pending.written = True, written
            done.append(pending)
        return done

    def wait(self, pending: Pending, timeout: float | None = 30.0) -> Pending:
        """Block until ``pending`` completes (interrupts or polling), else raise DeviceFault."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not pending.done:
            if self.poll() or pending.done:
                continue
            if self.vq.enable_cb(self.mem):
                continue  # work raced in
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeviceFault(f"queue {self.index}: request not completed within {timeout}s")
            self.transport.wait_for_interrupt(min(left, 1.0) if left is not None else 1.0)
        return pending

    def read_in(self, pending: Pending, limit: int | None = None) -> bytes:
        """The device-writable bytes of a completed request (at most what it wrote)."""
        n = pending.written if limit is None else min(limit, pending.written)
        out = bytearray()
        for addr, length in pending.in_bufs:
            take = min(length, n - len(out))
            if take <= 0:
                break
            out += self.mem.read(addr, take)
        return bytes(out)

    def release(self, pending: Pending) -> None:
        """Free the guest buffers ``pending`` owned (after its completion was taken)."""
        for addr in pending.owned:
            self.transport.free(addr)
        pending.owned = []

    def call(self, out: Sequence[bytes], in_sizes: Sequence[int], timeout: float | None = 30.0) -> bytes:
        """Submit one request, wait, return what the device wrote (sized by ``in_sizes``)."""
        pending = self.submit(out, in_sizes)
        try:
            self.wait(pending, timeout)
            return self.read_in(pending)
        finally:
            if pending.done:
                self.release(pending)

    def close(self) -> None:
        """Forget every outstanding request (after a device reset) and free the ring's memory."""
        for pending in self.vq.detach_unused():
            self.release(pending)
        self.transport.free(self._ring_addr)
        if self._ind_addr is not None:
            self.transport.free(self._ind_addr)


class VirtioDriver:
    """Base of every driver.  Subclasses set ``id_table`` and ``features`` and implement
    :meth:`setup` (read config, create queues)."""

    #: Device types this driver binds to (the seed's ID table).
    id_table: ClassVar[tuple[int, ...]] = ()
    #: Device-specific features the driver wants (a mask).
    features: ClassVar[int] = 0
    queue_size: ClassVar[int] = 256
    #: The most descriptors one request puts in an indirect table (with INDIRECT_DESC); a longer
    #: one goes straight into the ring.
    max_indirect: ClassVar[int] = 32

    def __init__(self, transport: DriverTransport):
        self.transport = transport
        self.negotiated = 0
        self.queues: list[DriverQueue] = []
        self.config_changes = 0

    @classmethod
    def matches(cls, device_type: int) -> bool:
        """Whether this driver drives devices of ``device_type`` (its ID table)."""
        return device_type in cls.id_table

    # --- initialisation (3.1.1) -----------------------------------------------------------------

    @classmethod
    def probe(cls, transport: DriverTransport, **kwargs) -> Self:
        """Bind to the device behind ``transport`` and bring it to DRIVER_OK."""
        if not cls.matches(transport.device_type):
            raise UsageError(f"{cls.__name__} does not drive device type {transport.device_type}")
        driver = cls(transport, **kwargs)
        try:
            driver._initialise()
        except VirtioError:
            try:
                transport.set_status(transport.get_status() | DeviceStatus.FAILED)
            except VirtioError:
                pass
            raise
        return driver

    def _initialise(self) -> None:
        t = self.transport
        t.reset()                                                   # 1. reset
        t.set_status(DeviceStatus.ACKNOWLEDGE)                      # 2.
        t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)  # 3.
        offered = t.get_device_features()                           # 4. negotiate
        wanted = COMMON_DRIVER_FEATURES | self.features | t.transport_features
        accepted = self.negotiate(offered, offered & wanted)
        if not accepted & (1 << Feature.VERSION_1):
            raise FeatureNegotiationError("device does not offer VIRTIO_F_VERSION_1 (legacy only)")
        t.set_driver_features(accepted)
        status = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
        t.set_status(status)                                        # 5.
        if not t.get_status() & DeviceStatus.FEATURES_OK:           # 6.
            raise FeatureNegotiationError(f"device refused features {accepted:#x} (FEATURES_OK cleared)")
        self.negotiated = accepted
        t.set_interrupt_handler(self._on_interrupt)
        self.setup()                                                # 7. queues, config
        t.set_status(status | DeviceStatus.DRIVER_OK)               # 8.

    def negotiate(self, offered: int, accepted: int) -> int:
        """Adjust the accepted features (drop ones that need others, …)."""
        return accepted

    def has_feature(self, bit: int) -> bool:
        """Whether feature ``bit`` was negotiated with the device."""
        return bool(self.negotiated & (1 << bit))

    def setup(self) -> None:
        """Device-specific setup: read config, create queues (step 7)."""

    def create_queue(self, index: int, size: int | None = None) -> DriverQueue:
        """Set up queue ``index`` (``size`` descriptors, at most what the device allows; its
        maximum by default) with the negotiated ring features, and enable it."""
        t = self.transport
        max_size = t.queue_max_size(index)
        if max_size == 0:
            raise DeviceFault(f"device has no queue {index} (queue size 0)")
        size = min(size or self.queue_size, max_size)
        size = 1 << (size.bit_length() - 1)  # a power of two not above the maximum
        queue = DriverQueue(t, index, size, event_idx=self.has_feature(Feature.EVENT_IDX),
                            indirect=self.has_feature(Feature.INDIRECT_DESC), max_indirect=self.max_indirect,
                            packed=self.has_feature(Feature.RING_PACKED),
                            in_order=self.has_feature(Feature.IN_ORDER))
        queue.notification_data = self.has_feature(Feature.NOTIFICATION_DATA)
        t.setup_queue(index, queue.vq.layout)
        return queue

    # --- config space (2.5.1) -------------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> bytes:
        """Read config bytes, retrying until the generation counter is stable."""
        t = self.transport
        for _ in range(CONFIG_READ_RETRIES):
            before = t.config_generation()
            data = t.read_config(offset, size)
            if t.config_generation() == before:
                return data
        raise ConfigGenerationError(f"config generation did not settle after {CONFIG_READ_RETRIES} reads")

    # --- interrupts -----------------------------------------------------------------------------

    def _on_interrupt(self, info: Interrupt) -> None:
        if info.config_changed:
            self.config_changes += 1
            if self.transport.get_status() & DeviceStatus.DEVICE_NEEDS_RESET:
                log.warning("%s: device needs reset", type(self).__name__)
            self.on_config_change()
        else:
            self.on_queue_interrupt(info.queue)

    def on_config_change(self) -> None:
        """The config space changed (or the device needs a reset)."""

    def on_queue_interrupt(self, index: int | None) -> None:
        """Used buffers on a queue; DriverQueue.wait polls, so the default does nothing."""

    @property
    def device_needs_reset(self) -> bool:
        """Whether the device set DEVICE_NEEDS_RESET (2.1.2): it cannot go on until the driver
        resets it."""
        return bool(self.transport.get_status() & DeviceStatus.DEVICE_NEEDS_RESET)

    def remove(self) -> None:
        """Unbind: reset the device and free the rings."""
        try:
            self.transport.reset()
        finally:
            for q in self.queues:
                q.close()
            self.queues = []

