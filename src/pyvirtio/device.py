"""The device side of the virtio device model (VIRTIO 1.3, 2 "Basic Facilities of a Virtio Device").

A :class:`VirtioDevice` owns what every device has: a type, feature bits, a status field with the
spec's rules, a config space with a generation counter, and virtqueues.  A device class (rng, blk,
net …) subclasses it and implements :meth:`handle_chain` (and optionally :meth:`process_queue`
for devices that need the whole batch).  Transports (loopback, vhost-user, PCI, MMIO) drive it
through the methods here and receive interrupts through :attr:`interrupt`, a callback.

Sans-I/O: the device is handed the guest memory on every call; the transport decides the threads.
"""

from __future__ import annotations

import logging
from typing import Callable, ClassVar

from .errors import DriverFault, DeviceStatusError, GuestMemoryError, QueueBroken, VirtioError
from .faults import FaultSet
from .interrupt import CONFIG_CHANGE, Interrupt, InterruptHandler
from .limits import PeerLog
from .memory import GuestMemory
from .spec.features import Feature
from .spec.status import DeviceStatus
from .stats import device_statistics
from .virtq import DescriptorChain, DeviceQueue, PackedDeviceQueue, SplitDeviceQueue

log = logging.getLogger(__name__)

#: Reserved features a pyvirtio device offers unless told otherwise.
COMMON_FEATURES = (1 << Feature.VERSION_1) | (1 << Feature.EVENT_IDX) | (1 << Feature.INDIRECT_DESC)


def _ignore_interrupt(info: Interrupt) -> None:
    pass


def _nothing() -> None:
    pass


def _call_inline(fn: Callable[[], None], group: int = 0) -> None:
    fn()


class VirtioDevice:
    """Base of every device: features, status, config space, queues."""

    #: A :class:`~pyvirtio.spec.ids.DeviceType` (5); tests also use IDs the spec does not name
    #: (0, an empty MMIO window; a mock's own).
    device_type: int
    #: Queues the device has at reset; subclasses may compute it in __init__.
    num_queues: int = 1
    queue_max_size: int = 256
    #: Device-specific feature bits offered (a mask); COMMON_FEATURES are added.
    device_specific_features: int = 0
    #: Every queue returns its buffers in the order they were made available: the device offers
    #: VIRTIO_F_IN_ORDER (2.7.9, 2.8.21), and a packed queue may then return a batch with one
    #: used descriptor.
    completes_in_order: ClassVar[bool] = False

    def __init__(self) -> None:
        self.device_features = COMMON_FEATURES | self.device_specific_features
        if self.completes_in_order:
            self.device_features |= 1 << Feature.IN_ORDER
        self.driver_features = 0
        self.status = DeviceStatus(0)
        self.config_generation = 0
        self.interrupt: InterruptHandler = _ignore_interrupt
        #: The transport keeps the driver's status to itself (vhost-user: the front-end has it,
        #: and decides what the driver hears): config changes and DEVICE_NEEDS_RESET then always
        #: go to :attr:`interrupt`, DRIVER_OK or not, and the transport passes them on.
        self.status_elsewhere = False
        #: Set by the engine serving the device: ``host_call(fn, group)`` runs ``fn()`` in that
        #: group's worker (under its lock) — how host code in another thread (set a link down,
        #: hand in frames, add a port) changes the device.  Without an engine it runs inline.
        self.host_call: Callable[[Callable[[], None], int], None] = _call_inline
        self.queues: list[DeviceQueue] = [SplitDeviceQueue(self.queue_max_size, index=i)
                                          for i in range(self.num_queues)]
        #: For lines a guest can cause in a loop (a bad chain, a bad frame): its device's logger,
        #: rate-limited per device (the guest is the peer; ``limits.LOG_LINES_PER_SECOND``).
        self.guest_log = PeerLog(logging.getLogger(type(self).__module__))
        #: Fault injection rules (:mod:`pyvirtio.faults`), changed from any thread; the device
        #: and the engine ask them on their slow paths (an empty set: one attribute test).
        self.faults = FaultSet(getattr(self, "device_type", None), name=type(self).__name__)
        self.faults.listeners.append(self.faults_changed)
        #: Config-change notifications sent (pyvirtio.stats; the queues count their own).
        self.config_interrupts = 0
        #: Queues whose kicks the device keeps off while it has their work in flight on the
        #: host (``settle`` in :func:`~pyvirtio.virtq.drain.drain_queue`): the engine drains them
        #: again after every host turn of their group, and the device turns kicks back on when
        #: nothing is left in flight.  Changed in the group's worker only.
        self.kicks_held: set[int] = set()
        #: Set by a transport whose used-buffer notifications may go out in the middle of a
        #: worker's turn (vhost-user: a counted eventfd write, under the same locks as the
        #: turn's own): ``notify_queue(index)``.  A device draining a long ring passes it to
        #: :func:`~pyvirtio.virtq.drain.drain_queue` so the driver hears of completed chains
        #: before the pass ends.  None: notifications only at the end of the turn.
        self.notify_queue: Callable[[int], None] | None = None

    # --- features (2.2) -------------------------------------------------------------------------

    def offer_packed_ring(self) -> None:
        """Offer VIRTIO_F_RING_PACKED (for transports that carry packed rings end to end)."""
        self.device_features |= 1 << Feature.RING_PACKED

    def has_feature(self, bit: int) -> bool:
        """Whether ``bit`` was negotiated (offered and accepted)."""
        return bool(self.driver_features & self.device_features & (1 << bit))

    def set_driver_features(self, features: int) -> None:
        """The driver's accepted features; only before FEATURES_OK (2.2.1)."""
        if self.status & DeviceStatus.FEATURES_OK:
            raise DriverFault("driver features written after FEATURES_OK (2.2.1)")
        self.driver_features = features

    def features_acceptable(self, features: int) -> bool:
        """May the device operate with ``features``?  (The FEATURES_OK check, 3.1.1.)"""
        if features & ~self.device_features:
            return False  # accepted something not offered
        return bool(features & (1 << Feature.VERSION_1))

    # --- status (2.1) ---------------------------------------------------------------------------

    def set_status(self, value: int) -> None:
        """The driver writes the status field.  Zero resets; bits may only be added (2.1.2)."""
        value = DeviceStatus(value & 0xFF)
        if value == 0:
            self.reset()
            return
        old = self.status
        if old & ~value & ~DeviceStatus.DEVICE_NEEDS_RESET:
            raise DeviceStatusError(f"driver cleared status bits {old & ~value!r} without a reset (2.1.2)")
        added = value & ~old
        if added & DeviceStatus.FEATURES_OK:
            if not self.features_acceptable(self.driver_features):
                value &= ~DeviceStatus.FEATURES_OK  # the driver re-reads and sees it refused (3.1.1)
            else:
                self.apply_features()
        if added & DeviceStatus.DRIVER_OK and not value & DeviceStatus.FEATURES_OK:
            raise DeviceStatusError("DRIVER_OK without FEATURES_OK (3.1.1)")
        self.status = (value & ~DeviceStatus.DEVICE_NEEDS_RESET) | (old & DeviceStatus.DEVICE_NEEDS_RESET)
        if added & DeviceStatus.DRIVER_OK:
            self.on_driver_ok()

    def apply_features(self) -> None:
        """Features are settled: tell the queues (EVENT_IDX, INDIRECT_DESC) and the device.
        Transports without a status field (vhost-user) call it after setting driver features."""
        event_idx = self.has_feature(Feature.EVENT_IDX)
        indirect = self.has_feature(Feature.INDIRECT_DESC)
        # The device owns its queue objects; the ring layout the driver chose decides their class
        # (a queue already of that class is kept: it may be running, e.g. a vhost-user front-end
        # repeating SET_FEATURES).
        packed = self.has_feature(Feature.RING_PACKED)
        cls: type[SplitDeviceQueue | PackedDeviceQueue] = PackedDeviceQueue if packed else SplitDeviceQueue
        if any(type(q) is not cls for q in self.queues):
            self.queues = [q if type(q) is cls else _renew(cls, q) for q in self.queues]
        in_order = self.has_feature(Feature.IN_ORDER)
        for q in self.queues:
            q.set_features(event_idx, indirect)
            q.in_order = in_order  # split queues write one used entry per chain either way
        self.on_features(self.driver_features & self.device_features)

    def reset(self) -> None:
        """Device reset (2.4): status, features, queues back to their initial state."""
        self.status = DeviceStatus(0)
        self.driver_features = 0
        if any(q.packed for q in self.queues):
            self.queues = [_renew(SplitDeviceQueue, q) for q in self.queues]
        for q in self.queues:
            q.reset()
        self.kicks_held.clear()
        self.on_reset()

    def needs_reset(self, why: Exception) -> None:
        """Enter DEVICE_NEEDS_RESET and tell the driver with a config interrupt (2.1.2)."""
        self.guest_log.warning("%s: device needs reset: %s", type(self).__name__, why)
        self.status |= DeviceStatus.DEVICE_NEEDS_RESET
        if self.status & DeviceStatus.DRIVER_OK or self.status_elsewhere:
            self.config_interrupts += 1
            self.interrupt(CONFIG_CHANGE)

    @property
    def driver_ok(self) -> bool:
        """Whether the driver set DRIVER_OK and the device does not need a reset: the device may
        use its queues."""
        return bool(self.status & DeviceStatus.DRIVER_OK) and not self.status & DeviceStatus.DEVICE_NEEDS_RESET

    # --- config space (2.5) ---------------------------------------------------------------------

    def config_bytes(self) -> bytes:
        """The device-specific config space as it stands; subclasses build it from their state."""
        return b""

    def read_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the config space at ``offset`` (:meth:`config_bytes`); bytes outside
        it read as zero."""
        data = self.config_bytes()
        if offset < 0 or size < 0 or offset + size > len(data):
            return bytes(size)  # reads outside the config space see zeros (no untyped error)
        return data[offset:offset + size]

    def write_config(self, offset: int, data: bytes) -> None:
        """Driver writes to the config space; most fields are read-only and ignore writes."""

    def config_changed(self) -> None:
        """Bump the generation (2.5.1) and send a config change notification once running."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & DeviceStatus.DRIVER_OK or self.status_elsewhere:
            self.config_interrupts += 1
            self.interrupt(CONFIG_CHANGE)

    # --- queues ---------------------------------------------------------------------------------

    # The engine (pyvirtio.engine) drives these from one worker per queue group; everything below
    # runs in that group's worker thread or under its lock, so the device needs no lock of its own.

    def queue_groups(self) -> list[tuple[int, ...]]:
        """Which queues one worker serves together (default: all of them, one worker)."""
        return [tuple(range(len(self.queues)))]

    def host_fds(self, group: int) -> list[tuple[int, int]]:
        """Host fds to watch for ``group`` now, as (fd, select.POLLIN|POLLOUT); derived from the
        device's state on every turn."""
        return []

    def host_ready(self, mem: GuestMemory, group: int, events: list[tuple[int, int]]) -> set[int]:
        """Watched host fds fired (``events``: (fd, revents)), or — with no events — the worker
        asks the device to look at its host side anyway.  Returns the queues to notify."""
        return set()

    def quiesce(self, mem: GuestMemory | None, index: int | None = None,
                timeout: float = 30.0) -> bool:
        """Finish every request of queue ``index`` (all queues: None) that is still in flight
        on the host, publishing its used entry when ``mem`` is given; called with the queue's
        group held still, before a ring stops or its memory goes away.  False if some request
        did not finish within ``timeout``."""
        return True

    def queue_notify(self, mem: GuestMemory, index: int) -> None:
        """Process queue ``index`` inline and interrupt if the driver wants it (a single-threaded
        helper for tests; transports go through :class:`pyvirtio.engine.LocalEngine`)."""
        if not 0 <= index < len(self.queues):
            self.guest_log.warning("%s: notify for queue %d that does not exist", type(self).__name__, index)
            return
        queue = self.queues[index]
        if not queue.ready or not self.driver_ok or queue.broken:
            return  # 2.1: no buffers are consumed before DRIVER_OK
        try:
            notify = self.process_queue(mem, queue)
        except (DriverFault, GuestMemoryError, QueueBroken) as exc:
            queue.stats.errors += 1
            self.needs_reset(exc)
            return
        if notify:
            queue.stats.interrupts += 1
            self.interrupt(Interrupt(index))

    def process_queue(self, mem: GuestMemory, queue: DeviceQueue) -> bool:
        """Drain the queue through :meth:`handle_chain`; returns whether to interrupt."""
        return queue.drain(mem, lambda chain: self.handle_chain(queue.index, chain))

    def handle_chain(self, queue_index: int, chain: DescriptorChain) -> int | None:
        """Handle one request; return the bytes written into the chain (or None to complete it
        later with :meth:`complete`)."""
        raise NotImplementedError

    def complete(self, mem: GuestMemory, queue_index: int, head_index: int, written: int) -> None:
        """Finish a request that :meth:`handle_chain` deferred (in the queue's worker thread)."""
        queue = self.queues[queue_index]
        try:
            queue.add_used(mem, head_index, written)
            notify = queue.needs_notification(mem)
        except VirtioError as exc:
            queue.stats.errors += 1
            self.needs_reset(exc)
            return
        if notify:
            queue.stats.interrupts += 1
            self.interrupt(Interrupt(queue_index))

    # --- statistics (pyvirtio.stats) ------------------------------------------------------------

    def statistics(self) -> dict:
        """The device's state and its queues' counters as plain data (from any thread: a
        snapshot, exact per counter).  Transports add their own part (a connection's state)."""
        return device_statistics(self)

    # --- hooks ----------------------------------------------------------------------------------

    def faults_changed(self) -> None:
        """A fault rule came or went (any thread): every worker looks again at what it watches
        (a rule may need a timer, or end one)."""
        for group in range(len(self.queue_groups())):
            self.host_call(_nothing, group)

    def on_features(self, features: int) -> None:
        """Features are settled (FEATURES_OK accepted)."""

    def on_driver_ok(self) -> None:
        """The driver finished initialisation."""

    def on_reset(self) -> None:
        """The device was reset; drop per-driver state."""

    def close(self) -> None:
        """Release host resources (files, sockets)."""


def _renew(cls, queue):
    """A fresh queue of ``cls`` in place of ``queue``, keeping its counters."""
    new = cls(queue.max_size, index=queue.index)
    new.stats = queue.stats
    return new
