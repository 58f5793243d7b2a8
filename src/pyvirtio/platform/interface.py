"""What a driver-side transport needs from the machine it runs on, and the code PCI and MMIO share.

A :class:`Platform` is the guest's view of a machine: guest RAM to place rings and buffers in,
physical-address and port accesses, PCI configuration cycles, interrupt lines, and an MSI
controller that turns message writes into callbacks.  Two platforms exist: an in-process machine
whose devices are pyvirtio's own models (:mod:`pyvirtio.platform.machine`), and QEMU driven over
qtest (:mod:`pyvirtio.qtest`).  The transports (:class:`~pyvirtio.pci.transport.PciTransport`,
:class:`~pyvirtio.mmio.transport.MmioTransport`) see only this interface.

Interrupt delivery is the same everywhere: the transport finds out *what* happened (an MSI-X
vector, the ISR byte, InterruptStatus) and calls the driver's handler with an
:class:`~pyvirtio.interrupt.Interrupt` per queue or config change.  In-process platforms deliver
synchronously from the device's call; QEMU's are found by polling in :meth:`wait_for_interrupt`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from ..alloc import GuestAllocator
from ..errors import UsageError
from ..interrupt import CONFIG_CHANGE, Interrupt, InterruptHandler
from ..memory import GuestMemory
from ..spec.features import Feature
from ..transport import DriverTransport
from ..virtq.kinds import RingLayout

#: Longest single sleep while polling for an interrupt that cannot wake us (seconds).
POLL_INTERVAL = 0.005


#: Access widths a guest can make (config cycles and memory accesses of 1-8 bytes).
MAX_ACCESS = 8


def check_access(size: int) -> None:
    """Sizes outside 1..8 cannot come from a guest: they are a bug in the calling program."""
    if not 1 <= size <= MAX_ACCESS:
        raise UsageError(f"access size {size} is not 1..{MAX_ACCESS} bytes")


def split_access(offset: int, size: int) -> list[tuple[int, int]]:
    """Split a configuration-space access into naturally aligned 1-, 2- and 4-byte accesses
    (the widths 4.1.3 and 4.2.2.2 allow)."""
    out, pos, end = [], offset, offset + size
    while pos < end:
        width = 4
        while width > 1 and (pos % width or pos + width > end):
            width //= 2
        out.append((pos, width))
        pos += width
    return out


class IrqLine(Protocol):
    """A level-triggered interrupt line (virtio-mmio's interrupt, a PCI function's INTx#)."""

    def level(self) -> bool:
        """Whether the line is raised now."""

    def set_handler(self, handler: Callable[[], None] | None) -> None:
        """Call ``handler`` when the line rises, where the platform can tell at once."""


class MsiController(Protocol):
    """Turns MSI messages into callbacks."""

    def allocate(self, handler: Callable[[], None]) -> tuple[int, int]:
        """A fresh ``(address, data)`` message; a device writing it makes ``handler`` run."""

    def release(self, address: int, data: int) -> None:
        """Forget the message ``(address, data)`` :meth:`allocate` gave."""

    def poll(self) -> int:
        """Deliver messages that arrived unseen; returns how many (0 where delivery is immediate)."""


class Platform(Protocol):
    # read-only to transports: a platform may hold a subclass (QtestMemory, QtestMsi)
    """The guest's view of a machine, all a driver-side transport needs (see the module docstring)."""

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM, for rings and buffers."""

    @property
    def allocator(self) -> GuestAllocator:
        """Hands out guest RAM to the transports."""

    @property
    def msi(self) -> MsiController | None:
        """The MSI controller, or None on a machine without MSI (INTx only)."""

    #: Where to put unassigned memory and I/O BARs: ``(start, end)``.
    mmio_window: tuple[int, int]
    io_window: tuple[int, int]

    def pci_config_read(self, addr, offset: int, size: int) -> int:
        """A configuration read of ``size`` bytes at ``offset`` of PCI function ``addr`` (all ones
        where nothing answers)."""

    def pci_config_write(self, addr, offset: int, size: int, value: int) -> None:
        """A configuration write of ``value`` (``size`` bytes) at ``offset`` of PCI function
        ``addr``."""

    def mmio_read(self, addr: int, size: int) -> int:
        """A physical memory read of ``size`` bytes at ``addr`` (a BAR or an MMIO window)."""

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        """A physical memory write of ``value`` (``size`` bytes) at ``addr``."""

    def io_read(self, port: int, size: int) -> int:
        """A port read of ``size`` bytes at ``port`` (I/O BARs)."""

    def io_write(self, port: int, size: int, value: int) -> None:
        """A port write of ``value`` (``size`` bytes) at ``port``."""

    def irq_line(self, irq: int) -> IrqLine | None:
        """Interrupt line ``irq`` (virtio-mmio's), or None where the platform has no such line."""

    def intx_line(self, addr) -> IrqLine | None:
        """The INTx# line of PCI function ``addr``, or None."""

    def event_epoch(self) -> int:
        """A counter that moves whenever an interrupt may have happened."""

    def wait_event(self, epoch: int, timeout: float) -> None:
        """Sleep until the epoch moves past ``epoch`` or ``timeout`` passes."""

    def ring_added(self, layout: RingLayout) -> None:
        """A driver handed the device a ring at ``layout`` (the qtest memory keeps it coherent)."""

    def buffer_allocated(self, addr: int, size: int) -> None:
        """A transport placed a buffer of ``size`` bytes at ``addr`` (platforms that track guest
        memory use may record it)."""

    def buffer_freed(self, addr: int) -> None:
        """The buffer at ``addr`` was given back."""

    def before_wait(self) -> bool:
        """Make the driver's writes visible to the device; True if the device made progress."""

    def after_wait(self) -> bool:
        """Make the device's writes visible to the driver; True if it made progress."""


class PlatformTransport(DriverTransport):
    """Interrupt dispatch, waiting and allocation shared by the PCI and MMIO transports."""

    #: VIRTIO_F_NOTIFICATION_DATA: the notify write carries the queue's position (2.9).
    transport_features = 1 << Feature.NOTIFICATION_DATA

    def __init__(self, platform: Platform, *, split_only: bool = False):
        self.platform = platform
        #: Hide VIRTIO_F_RING_PACKED from the drivers (split rings, e.g. for comparisons), as
        #: :class:`~pyvirtio.vhost_user.frontend.transport.VhostUserTransport` does.
        self.split_only = split_only
        self.memory = platform.memory
        self.allocator = platform.allocator
        self._handler: InterruptHandler | None = None
        self._lock = threading.RLock()
        self._delivered = 0
        self._seen = 0
        self._active_queues: set[int] = set()

    def _offered(self, features: int) -> int:
        """The device's features as the drivers see them (``split_only``: without RING_PACKED)."""
        return features & ~(1 << Feature.RING_PACKED) if self.split_only else features

    # --- allocation -----------------------------------------------------------------------------

    def alloc(self, size: int, align: int = 16) -> int:
        addr = self.allocator.alloc(size, align)
        self.platform.buffer_allocated(addr, size)
        return addr

    def free(self, addr: int) -> None:
        self.allocator.free(addr)
        self.platform.buffer_freed(addr)

    # --- interrupts -----------------------------------------------------------------------------

    def set_interrupt_handler(self, handler: InterruptHandler) -> None:
        self._handler = handler

    def _deliver(self, info: Interrupt) -> None:
        with self._lock:
            self._delivered += 1
        if self._handler is not None:
            self._handler(info)

    def _deliver_queues(self) -> None:
        for index in sorted(self._active_queues):
            self._deliver(Interrupt(index))

    def _deliver_config(self) -> None:
        self._deliver(CONFIG_CHANGE)

    def _service(self) -> None:
        """Find interrupts the platform could not deliver at once and deliver them."""

    def wait_for_interrupt(self, timeout: float | None) -> bool:
        """Deliver pending interrupts; if there were none and the device made no visible progress,
        wait for one until ``timeout``.  True if anything was delivered or progressed since the
        last call."""
        platform = self.platform
        progressed = platform.before_wait()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            epoch = platform.event_epoch()
            self._service()
            if progressed or self._delivered != self._seen:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            platform.wait_event(epoch, POLL_INTERVAL * 20 if left is None else min(left, POLL_INTERVAL * 20))
        progressed = platform.after_wait() or progressed
        with self._lock:
            got = self._delivered != self._seen
            self._seen = self._delivered
        return got or progressed
