"""The driver-side transport interface every transport implements (loopback, vhost-user, PCI, MMIO).

A driver is written against :class:`DriverTransport` only, so the same rng or blk driver runs over
any bus (the seed thread's ``virt_bus.transfer``).  A transport also hands the driver guest memory
to place rings and buffers in (:attr:`memory`, :meth:`alloc`), because the driver side owns it.
"""

from __future__ import annotations

import abc
import time
from typing import Callable

from .alloc import Allocator
from .errors import DeviceFault
from .interrupt import InterruptHandler
from .memory import GuestMemory
from .virtq.kinds import RingLayout


class DriverTransport(abc.ABC):
    """What a driver needs from whatever carries the device."""

    #: The driver-side guest memory the rings and buffers live in.
    memory: GuestMemory
    allocator: Allocator
    #: Reserved feature bits the transport itself carries, which drivers accept when the device
    #: offers them (PCI and MMIO: VIRTIO_F_NOTIFICATION_DATA, a notification with a position).
    transport_features: int = 0
    #: What :meth:`reset` and :meth:`reset_queue` raise when the device never finishes a reset.
    reset_error: type[DeviceFault] = DeviceFault
    #: Reads of the register a reset clears before the device is given up on (about 1 s).
    RESET_POLLS = 1000

    # identity
    @property
    @abc.abstractmethod
    def device_type(self) -> int:
        """The virtio device ID (5: ``DeviceType``) of the device behind this transport."""

    @property
    def vendor_id(self) -> int:
        """The device's vendor ID where the bus has one (PCI subsystem vendor, MMIO VendorID); 0
        otherwise."""
        return 0

    def describe(self) -> str:
        """A short name for log lines and errors (a PCI address, a socket path ...)."""
        return f"{type(self).__name__}"

    @property
    def has_config_space(self) -> bool:
        """Whether the device's config space can be read (every bus transport: yes; a
        vhost-user back-end without the CONFIG protocol feature: no — the driver then uses the
        defaults its device type allows)."""
        return True

    # status (2.1) and features (2.2)
    @abc.abstractmethod
    def get_status(self) -> int:
        """The device status byte (2.1)."""

    @abc.abstractmethod
    def set_status(self, status: int) -> None:
        """Write the device status byte (2.1); 0 resets the device (use :meth:`reset`, which
        waits)."""

    def reset(self) -> None:
        """Reset the device: write 0 to the device status and wait until it reads back 0
        (2.4.1; 4.1.4.3.2, 4.2.2.1: the reset may complete later than the write)."""
        self.set_status(0)
        self.wait_cleared(self.get_status, "device status never read 0 after a reset")

    def wait_cleared(self, read: Callable[[], int], what: str) -> None:
        """Poll ``read`` until it returns 0 (a device or queue reset completing); after
        :attr:`RESET_POLLS` reads, raise :attr:`reset_error` saying ``what`` did not happen."""
        for _ in range(self.RESET_POLLS):
            if read() == 0:
                return
            time.sleep(0.001)
        raise self.reset_error(f"{self.describe()}: {what}")

    @abc.abstractmethod
    def get_device_features(self) -> int:
        """Every feature bit the device offers (2.2), all 64 (or more) bits in one int."""

    @abc.abstractmethod
    def set_driver_features(self, features: int) -> None:
        """Tell the device which of its features the driver accepts (2.2; then FEATURES_OK)."""

    # config space (2.5)
    @abc.abstractmethod
    def read_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the device-specific configuration space at ``offset`` (2.5), little-
        endian as the device keeps them; use
        :meth:`pyvirtio.driver.VirtioDriver.read_config` for a reading consistent across
        the generation counter."""

    @abc.abstractmethod
    def write_config(self, offset: int, data: bytes) -> None:
        """Write ``data`` into the device-specific configuration space at ``offset`` (2.5)."""

    @abc.abstractmethod
    def config_generation(self) -> int:
        """The configuration generation counter (2.5.1): it changes whenever the device changes its
        config space."""

    # virtqueues
    @abc.abstractmethod
    def num_queues(self) -> int:
        """How many queues the device offers (an upper bound where the bus cannot tell)."""

    @abc.abstractmethod
    def queue_max_size(self, index: int) -> int:
        """The largest size queue ``index`` takes; 0 if it does not exist."""

    @abc.abstractmethod
    def setup_queue(self, index: int, layout: RingLayout) -> None:
        """Tell the device where queue ``index`` lives and enable it."""

    def reset_queue(self, index: int) -> None:  # pragma: no cover - optional (RING_RESET)
        """Reset queue ``index`` alone (VIRTIO_F_RING_RESET, 2.6.1): the device forgets the ring,
        which :meth:`setup_queue` may then set up anew."""
        raise NotImplementedError

    @abc.abstractmethod
    def notify(self, index: int, position: int | None = None) -> None:
        """Kick queue ``index`` (driver → device notification).  ``position`` is where the
        driver writes next (:func:`pyvirtio.virtq.notification.driver_position`), given only when
        VIRTIO_F_NOTIFICATION_DATA was negotiated (2.9)."""

    # interrupts (device → driver), as callbacks
    @abc.abstractmethod
    def set_interrupt_handler(self, handler: InterruptHandler) -> None:
        """Call ``handler`` with an :class:`~pyvirtio.interrupt.Interrupt` for every used-buffer
        notification (which queue) and every configuration change."""

    @abc.abstractmethod
    def wait_for_interrupt(self, timeout: float | None) -> bool:
        """Block until at least one interrupt was delivered through the handler, or ``timeout``.

        Returns False on timeout.  In-process transports deliver interrupts synchronously and
        return at once."""

    def alloc(self, size: int, align: int = 16) -> int:
        """Guest memory for rings and buffers: ``size`` bytes aligned to ``align``; returns the
        guest-physical address."""
        return self.allocator.alloc(size, align)

    def free(self, addr: int) -> None:
        """Give back memory :meth:`alloc` returned."""
        self.allocator.free(addr)

    def close(self) -> None:
        """Drop the connection or mapping to the device."""
