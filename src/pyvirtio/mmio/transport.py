"""Virtio over MMIO version 2, driver side (VIRTIO 1.3, 4.2): a DriverTransport over one window.

Registers are 32-bit accesses at ``base + offset``; the configuration space at 0x100 uses the
field's width (4.2.2.2).  Queue setup follows 4.2.3.2: select, check QueueReady is 0, read
QueueNumMax, write QueueNum and the three ring addresses, write 1 to QueueReady.  Interrupts: the
window's line (when the platform has one) rises while InterruptStatus is non-zero; the transport
reads InterruptStatus, acknowledges exactly those bits, and delivers a used-buffer interrupt to
every active queue and/or a configuration change (4.2.3.4).  Without a line it polls
InterruptStatus while waiting.
"""

from __future__ import annotations

import logging

from ..errors import DeviceFault, Scope, UsageError, VirtioError
from ..spec.features import Feature
from ..spec.mmio import CONFIG_OFFSET, MAGIC_VALUE, VERSION, MmioInterrupt, MmioReg
from ..virtq import notification
from ..virtq.kinds import RingLayout
from ..platform.interface import Platform, PlatformTransport, split_access

log = logging.getLogger(__name__)

#: Queue selectors probed to count queues (the MMIO transport has no num_queues register).
MAX_QUEUES = 1024


class VirtioMmioError(DeviceFault):
    """The window is not a usable virtio-mmio version 2 device."""

    scope = Scope.DEVICE


class MmioPlaceholder(VirtioMmioError):
    """DeviceID 0: a window with no device behind it (4.2.2); drivers skip it without an error."""


class MmioTransport(PlatformTransport):
    """The driver's side of one virtio-mmio window."""

    reset_error = VirtioMmioError

    def __init__(self, platform: Platform, base: int, size: int = 0x200, irq: int | None = None, *,
                 split_only: bool = False):
        super().__init__(platform, split_only=split_only)
        self.base, self.size, self.irq = base, size, irq
        magic = self._reg(MmioReg.MAGIC_VALUE)
        if magic != MAGIC_VALUE:
            raise VirtioMmioError(f"mmio@{base:#x}: magic {magic:#x} is not 'virt' (4.2.2.2)")
        version = self._reg(MmioReg.VERSION)
        if version != VERSION:
            raise VirtioMmioError(f"mmio@{base:#x}: version {version} is not 2 "
                                  f"({'legacy virtio-mmio is not supported' if version == 1 else 'unknown'})")
        self._device_type = self._reg(MmioReg.DEVICE_ID)
        if self._device_type == 0:
            raise MmioPlaceholder(f"mmio@{base:#x}: DeviceID 0 is a placeholder, not a device (4.2.2.2)")
        self._vendor = self._reg(MmioReg.VENDOR_ID)
        self._line = platform.irq_line(irq) if irq is not None else None
        self._negotiated = 0

    # --- registers ------------------------------------------------------------------------------

    def _reg(self, offset: int) -> int:
        return self.platform.mmio_read(self.base + offset, 4)

    def _set(self, offset: int, value: int) -> None:
        self.platform.mmio_write(self.base + offset, 4, value & 0xFFFFFFFF)

    # --- identity -------------------------------------------------------------------------------

    @property
    def device_type(self) -> int:
        return self._device_type

    @property
    def vendor_id(self) -> int:
        return self._vendor

    def describe(self) -> str:
        return f"mmio@{self.base:#x}" + (f":{self.irq}" if self.irq is not None else "")

    # --- status and features --------------------------------------------------------------------

    def get_status(self) -> int:
        return self._reg(MmioReg.STATUS) & 0xFF

    def set_status(self, status: int) -> None:
        self._set(MmioReg.STATUS, status)

    def reset(self) -> None:
        super().reset()
        self._active_queues.clear()

    def get_device_features(self) -> int:
        features = 0
        for word in range(2):
            self._set(MmioReg.DEVICE_FEATURES_SEL, word)
            features |= self._reg(MmioReg.DEVICE_FEATURES) << (32 * word)
        return self._offered(features)

    def set_driver_features(self, features: int) -> None:
        for word in range(2):
            self._set(MmioReg.DRIVER_FEATURES_SEL, word)
            self._set(MmioReg.DRIVER_FEATURES, features >> (32 * word))
        self._negotiated = features

    # --- configuration space --------------------------------------------------------------------

    def _config_room(self) -> int:
        return max(0, self.size - CONFIG_OFFSET)

    def read_config(self, offset: int, size: int) -> bytes:
        out = bytearray(size)
        for pos, width in split_access(offset, size):
            if 0 <= pos and pos + width <= self._config_room():
                value = self.platform.mmio_read(self.base + CONFIG_OFFSET + pos, width)
                out[pos - offset:pos - offset + width] = value.to_bytes(width, "little")
        return bytes(out)

    def write_config(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self._config_room():
            raise UsageError(f"config write [{offset}, +{len(data)}) is outside the window")
        for pos, width in split_access(offset, len(data)):
            chunk = data[pos - offset:pos - offset + width]
            self.platform.mmio_write(self.base + CONFIG_OFFSET + pos, width, int.from_bytes(chunk, "little"))

    def config_generation(self) -> int:
        return self._reg(MmioReg.CONFIG_GENERATION)

    # --- queues (4.2.3.2) -----------------------------------------------------------------------

    def num_queues(self) -> int:
        for index in range(MAX_QUEUES):
            if self.queue_max_size(index) == 0:
                return index
        return MAX_QUEUES

    def queue_max_size(self, index: int) -> int:
        self._set(MmioReg.QUEUE_SEL, index)
        return self._reg(MmioReg.QUEUE_SIZE_MAX)

    def setup_queue(self, index: int, layout: RingLayout) -> None:
        self._set(MmioReg.QUEUE_SEL, index)
        if self._reg(MmioReg.QUEUE_READY):
            raise DeviceFault(f"{self.describe()}: queue {index} is ready before it was set up (4.2.3.2)")
        maximum = self._reg(MmioReg.QUEUE_SIZE_MAX)
        if maximum == 0:
            raise DeviceFault(f"{self.describe()}: queue {index} does not exist (QueueNumMax 0)")
        if layout.size > maximum:
            raise UsageError(f"queue {index}: size {layout.size} is above QueueNumMax {maximum}")
        self._set(MmioReg.QUEUE_SIZE, layout.size)
        for low, value in ((MmioReg.QUEUE_DESC_LOW, layout.desc_table),
                           (MmioReg.QUEUE_DRIVER_LOW, layout.avail_ring),
                           (MmioReg.QUEUE_DEVICE_LOW, layout.used_ring)):
            self._set(low, value & 0xFFFFFFFF)
            self._set(low + 4, value >> 32)
        self.platform.ring_added(layout)
        self._set(MmioReg.QUEUE_READY, 1)
        self._active_queues.add(index)

    def notify(self, index: int, position: int | None = None) -> None:
        """4.2.3.3: the queue index; with VIRTIO_F_NOTIFICATION_DATA and a ``position``, the
        32-bit value of 2.9."""
        if position is not None and self._negotiated & (1 << Feature.NOTIFICATION_DATA):
            self._set(MmioReg.QUEUE_NOTIFY, notification.encode(index, position))
        else:
            self._set(MmioReg.QUEUE_NOTIFY, index)

    def reset_queue(self, index: int) -> None:
        if not self._negotiated & (1 << Feature.RING_RESET):
            raise UsageError("VIRTIO_F_RING_RESET was not negotiated")
        self._set(MmioReg.QUEUE_SEL, index)
        self._set(MmioReg.QUEUE_RESET, 1)
        self.wait_cleared(lambda: self._reg(MmioReg.QUEUE_RESET), f"queue {index} reset never completed")
        self._active_queues.discard(index)

    # --- interrupts (4.2.3.4) -------------------------------------------------------------------

    def set_interrupt_handler(self, handler) -> None:
        super().set_interrupt_handler(handler)
        if self._line is not None:
            self._line.set_handler(self._service_status)

    def _service_status(self) -> None:
        status = self._reg(MmioReg.INTERRUPT_STATUS) & (MmioInterrupt.USED_BUFFER | MmioInterrupt.CONFIG_CHANGE)
        if not status:
            return
        self._set(MmioReg.INTERRUPT_ACK, status)
        if status & MmioInterrupt.CONFIG_CHANGE:
            self._deliver_config()
        if status & MmioInterrupt.USED_BUFFER:
            self._deliver_queues()

    def _service(self) -> None:
        if self._line is None or self._line.level():
            self._service_status()

    def close(self) -> None:
        try:
            self.set_status(0)
        except VirtioError as exc:  # closing must not fail on a dead peer
            log.debug("%s: reset on close failed: %s", self.describe(), exc)
