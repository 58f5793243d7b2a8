"""Device-side register semantics shared by the PCI (4.1) and MMIO (4.2) transports.

Both transports expose the same state through different register layouts: 32-bit feature
windows chosen by a select register, a queue selector, per-queue size and ring addresses that
take effect when the queue is enabled, a status byte where writing 0 resets the device, and an
optional per-queue reset (VIRTIO_F_RING_RESET).  :class:`DeviceRegisters` owns that state over a
:class:`~pyvirtio.device.VirtioDevice`; each transport only maps offsets to these calls.

The driver is untrusted.  Every write a guest can make is accepted: writes the spec says the
driver must not make are ignored, and writes that leave the device unable to go on (a queue size
that is not a power of two or above the maximum, a queue enabled with rings outside guest memory
or misaligned) set DEVICE_NEEDS_RESET (2.1.2).  Nothing here raises to the guest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from ..device import VirtioDevice
from ..engine import LocalEngine
from ..errors import DeviceStatusError, DriverFault, VirtioError
from ..memory import GuestMemory
from ..spec.features import Feature
from ..spec.pci import VIRTIO_MSI_NO_VECTOR
from ..virtq import notification
from ..virtq.layout import is_valid_split_size
from ..virtq.packed_device import is_valid_packed_size

log = logging.getLogger(__name__)

#: Feature windows beyond this many 32-bit words read as 0 and ignore writes (bits 0-127, 6).
FEATURE_WORDS = 4


@dataclass
class QueueRegs:
    """What the driver configured for one queue, before and after enabling it."""

    max_size: int
    size: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    enabled: bool = False
    vector: int = VIRTIO_MSI_NO_VECTOR  # PCI only (4.1.5.1.2)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size  # "on reset, specifies the maximum queue size" (4.1.4.3)
        self.desc = self.driver = self.device = 0
        self.enabled = False
        self.vector = VIRTIO_MSI_NO_VECTOR


def set_half(value: int, high: bool, half: int) -> int:
    """Replace the low or high 32 bits of a 64-bit register (4.1.3: independent halves)."""
    half &= 0xFFFFFFFF
    return (value & 0xFFFFFFFF) | (half << 32) if high else (value & ~0xFFFFFFFF) | half


class DeviceRegisters:
    """Feature windows, status, queue selection and queue configuration over one device."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, *,
                 can_dma: Callable[[], bool] = lambda: True,
                 on_reset: Callable[[], None] = lambda: None):
        self.device = device
        self.memory = memory
        #: Serves the queues (inline on a notify write, plus a worker per queue group for the
        #: device's host fds); register accesses hold it still with ``engine.hold()``.
        self.engine = LocalEngine(device, lambda: self.memory, lambda info: self.device.interrupt(info))
        self.can_dma = can_dma
        self._on_reset = on_reset
        self.queues = [QueueRegs(q.max_size) for q in device.queues]
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        #: Notifications whose VIRTIO_F_NOTIFICATION_DATA position disagreed with the ring.
        self.notification_faults = 0

    # --- features (2.2) -------------------------------------------------------------------------

    def device_feature_window(self) -> int:
        sel = self.device_feature_select
        return (self.device.device_features >> (32 * sel)) & 0xFFFFFFFF if sel < FEATURE_WORDS else 0

    def driver_feature_window(self) -> int:
        sel = self.driver_feature_select
        return (self.device.driver_features >> (32 * sel)) & 0xFFFFFFFF if sel < FEATURE_WORDS else 0

    def write_driver_features(self, value: int) -> None:
        sel = self.driver_feature_select
        if sel >= FEATURE_WORDS:
            return
        shift = 32 * sel
        features = (self.device.driver_features & ~(0xFFFFFFFF << shift)) | ((value & 0xFFFFFFFF) << shift)
        try:
            self.device.set_driver_features(features)
        except DriverFault as exc:  # after FEATURES_OK (2.2.1): the write is ignored
            log.info("%s: ignored driver feature write: %s", self._name, exc)

    # --- status (2.1) ---------------------------------------------------------------------------

    @property
    def status(self) -> int:
        return int(self.device.status) & 0xFF

    def write_status(self, value: int) -> None:
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        try:
            self.device.set_status(value)
        except DeviceStatusError as exc:  # bits cleared without a reset, DRIVER_OK too early
            log.info("%s: ignored status write %#x: %s", self._name, value, exc)
        except VirtioError as exc:
            self.device.needs_reset(exc)

    def reset(self) -> None:
        """Device reset (2.4): the device's own state, then every transport register."""
        self.device.reset()
        for q in self.queues:
            q.reset()
        self.device_feature_select = self.driver_feature_select = self.queue_select = 0
        self._on_reset()

    # --- queues ---------------------------------------------------------------------------------

    @property
    def selected(self) -> QueueRegs | None:
        """The queue QueueSel / queue_select names, or None if there is no such queue."""
        i = self.queue_select
        return self.queues[i] if 0 <= i < len(self.queues) else None

    def write_queue_size(self, value: int) -> None:
        q = self.selected
        if q is None or q.enabled:
            return  # no such queue, or configured already (the driver MUST NOT, 4.1.4.3.2 / 4.2.2.2)
        packed = self.device.has_feature(Feature.RING_PACKED)  # any size up to the maximum (2.8)
        if not (is_valid_packed_size if packed else is_valid_split_size)(value) or value > q.max_size:
            rule = f"in 1..{q.max_size}" if packed else f"a power of two <= {q.max_size}"
            self.device.needs_reset(DriverFault(f"queue {self.queue_select}: size {value} is not {rule}"))
            return
        q.size = value

    def write_queue_address(self, which: str, high: bool, half: int) -> None:
        q = self.selected
        if q is None or q.enabled:
            return
        setattr(q, which, set_half(getattr(q, which), high, half))

    def write_queue_address64(self, which: str, value: int) -> None:
        q = self.selected
        if q is None or q.enabled:
            return
        setattr(q, which, value & 0xFFFFFFFFFFFFFFFF)

    def enable_queue(self) -> None:
        """The driver enabled the selected queue: the rings must lie in guest memory (2.7)."""
        index, q = self.queue_select, self.selected
        if q is None or q.enabled:
            return
        vq = self.device.queues[index]
        try:
            vq.set_size(q.size)
            vq.set_addresses(q.desc, q.driver, q.device)
            vq.activate(self.memory)
        except VirtioError as exc:
            vq.reset()
            self.device.needs_reset(exc)
            return
        q.enabled = True

    def disable_queue(self) -> None:
        """MMIO QueueReady = 0: stop using the queue (4.2.2.2); the device no longer touches it."""
        index, q = self.queue_select, self.selected
        if q is None or not q.enabled:
            return
        q.enabled = False
        self.device.queues[index].ready = False

    @property
    def ring_reset_negotiated(self) -> bool:
        return self.device.has_feature(Feature.RING_RESET)

    def reset_queue(self) -> None:
        """Reset the selected queue (2.6.1, VIRTIO_F_RING_RESET): done at once, so queue_reset
        and queue_enable read 0 afterwards (4.1.4.3.2)."""
        index, q = self.queue_select, self.selected
        if q is None or not self.ring_reset_negotiated:
            return
        q.reset()
        self.device.queues[index].reset()

    def notify(self, index: int, position: int | None = None) -> None:
        """An available buffer notification for queue ``index`` (4.1.5.2, 4.2.3.3); with
        VIRTIO_F_NOTIFICATION_DATA, ``position`` is where the driver says it writes next (2.9)."""
        if not 0 <= index < len(self.queues) or not self.queues[index].enabled:
            return
        if not self.can_dma():
            log.info("%s: notify for queue %d ignored: no bus mastering", self._name, index)
            return
        # The position is checked under the group's lock: its worker may be draining this ring.
        if position is None:
            self.engine.kick(index, None)
        else:
            popped = self.device.queues[index].stats.chains  # how far the device was
            self.engine.kick(index, lambda: self._check_position(index, position, popped))

    def write_notify(self, value: int, width: int) -> None:
        """The driver wrote ``value`` to a notification register: with NOTIFICATION_DATA
        negotiated a 32-bit write is the value of 2.9 (vqn and position), else the queue index."""
        if width == 4 and self.device.has_feature(Feature.NOTIFICATION_DATA):
            self.notify(*notification.decode(value))
        else:
            self.notify(value & 0xFFFF)

    def _check_position(self, index: int, position: int, popped: int) -> None:
        """A position the ring does not bear out is the driver's fault: logged (rate-limited)
        and counted; the ring, not the hint, decides what is served.  Checked only if the device
        took nothing from the ring since the notification came (``popped``: its count of chains
        then): a worker busy meanwhile may have gone round the ring, and a position from a lap
        ago reads like one ahead."""
        fault: VirtioError | None
        queue = self.device.queues[index]
        if queue.stats.chains != popped:
            return
        try:
            fault = notification.check_position(queue, self.memory, position)
        except VirtioError as exc:  # the ring is outside guest memory: the queue finds out itself
            fault = exc
        if fault is not None:
            self.notification_faults += 1
            self.device.guest_log.warning("%s: %s", self._name, fault)

    @property
    def _name(self) -> str:
        return type(self.device).__name__
