"""Virtio over MMIO version 2, device side (VIRTIO 1.3, 4.2): a register window over a VirtioDevice.

The window is ``read(offset, size)`` / ``write(offset, size, value)``, offsets relative to its
base.  The control registers (0x000-0x0ff) are 32 bits wide and the driver MUST access them with
aligned 32-bit accesses (4.2.2.2); any other access to them reads 0 and is ignored.  The
device-specific configuration space at 0x100 takes any width.  The interrupt line goes to a
callback ``irq(level)``: it is raised while InterruptStatus is non-zero (4.2.3.4).

Hostile drivers are handled as in :mod:`pyvirtio.platform.registers`: every access is accepted,
forbidden writes are ignored, writes that break the device set DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..device import VirtioDevice
from ..interrupt import Interrupt
from ..memory import GuestMemory
from ..platform.interface import check_access
from ..platform.registers import DeviceRegisters
from ..spec.features import Feature
from ..spec.mmio import CONFIG_OFFSET, MAGIC_VALUE, SHM_NO_REGION, VERSION, MmioInterrupt, MmioReg

#: VendorID pyvirtio's windows report ("PYVT" little-endian; the spec leaves the value open).
PYVIRTIO_VENDOR_ID = 0x54565950
#: The window size the spec's device-tree example uses and QEMU maps (4.2.1).
WINDOW_SIZE = 0x200

_ADDRESS_REGS: dict[int, tuple[str, bool]] = {
    MmioReg.QUEUE_DESC_LOW: ("desc", False), MmioReg.QUEUE_DESC_HIGH: ("desc", True),
    MmioReg.QUEUE_DRIVER_LOW: ("driver", False), MmioReg.QUEUE_DRIVER_HIGH: ("driver", True),
    MmioReg.QUEUE_DEVICE_LOW: ("device", False), MmioReg.QUEUE_DEVICE_HIGH: ("device", True),
}


class VirtioMmioDevice:
    """A virtio-mmio version 2 register window for one VirtioDevice."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, *,
                 irq: Callable[[bool], None] | None = None, vendor_id: int = PYVIRTIO_VENDOR_ID,
                 size: int = WINDOW_SIZE, notification_data: bool = True):
        self.device = device
        if notification_data:  # a transport feature: the notify write carries the position (2.9)
            device.device_features |= 1 << Feature.NOTIFICATION_DATA
        self.irq = irq or (lambda level: None)
        self.vendor_id = vendor_id
        self.size = size
        self.interrupt_status = 0
        self._level = False
        # InterruptStatus is the window's own state, not the device's: it has its own lock and
        # is read and acknowledged without holding the device's workers still.  A driver's
        # interrupt handler runs in the thread that raised the line - a worker that holds its
        # own group's lock - and the engine's hold would then wait for the other groups, held in
        # turn by a driver thread's notify waiting for this group: a deadlock (seen with a
        # two-group virtio-fs device).
        self._irq_lock = threading.RLock()
        self.shm_select = 0
        self.regs = DeviceRegisters(device, memory, on_reset=self._on_reset)
        device.interrupt = self._device_interrupt

    # --- guest accesses -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        check_access(size)
        if offset == MmioReg.INTERRUPT_STATUS and size == 4:
            return self.interrupt_status
        with self.regs.engine.hold():
            if offset >= CONFIG_OFFSET:
                data = self.device.read_config(offset - CONFIG_OFFSET, size)
                return int.from_bytes(data, "little")
            if size != 4 or offset % 4 or offset < 0:
                return 0
            return self._read_reg(offset) & 0xFFFFFFFF

    def write(self, offset: int, size: int, value: int) -> None:
        check_access(size)
        value &= (1 << (8 * size)) - 1
        if offset == MmioReg.INTERRUPT_ACK and size == 4:
            self._acknowledge(value)
            return
        with self.regs.engine.hold():
            if offset >= CONFIG_OFFSET:
                if offset + size <= self.size:
                    self.device.write_config(offset - CONFIG_OFFSET, value.to_bytes(size, "little"))
                return
            if size != 4 or offset % 4 or offset < 0:
                return
            self._write_reg(offset, value)

    # --- registers (4.2.2) ----------------------------------------------------------------------

    def _read_reg(self, offset: int) -> int:
        r = self.regs
        q = r.selected
        fixed: dict[int, int] = {
            MmioReg.MAGIC_VALUE: MAGIC_VALUE,
            MmioReg.VERSION: VERSION,
            MmioReg.DEVICE_ID: int(self.device.device_type),
            MmioReg.VENDOR_ID: self.vendor_id,
            MmioReg.INTERRUPT_STATUS: self.interrupt_status,
            MmioReg.CONFIG_GENERATION: self.device.config_generation,
            # no shared memory regions: length and base read as -1 (4.2.2)
            MmioReg.SHM_LEN_LOW: SHM_NO_REGION & 0xFFFFFFFF, MmioReg.SHM_LEN_HIGH: SHM_NO_REGION >> 32,
            MmioReg.SHM_BASE_LOW: SHM_NO_REGION & 0xFFFFFFFF, MmioReg.SHM_BASE_HIGH: SHM_NO_REGION >> 32,
        }
        if offset in fixed:
            return fixed[offset]
        if offset == MmioReg.DEVICE_FEATURES:
            return r.device_feature_window()
        if offset == MmioReg.STATUS:
            return r.status
        if offset == MmioReg.QUEUE_SIZE_MAX:
            return q.max_size if q is not None else 0  # 0: the queue is not available
        if offset == MmioReg.QUEUE_READY:
            return int(q is not None and q.enabled)
        return 0  # write-only registers and holes; QueueReset completes at once (reads 0)

    def _write_reg(self, offset: int, value: int) -> None:
        r = self.regs
        if offset == MmioReg.DEVICE_FEATURES_SEL:
            r.device_feature_select = value
        elif offset == MmioReg.DRIVER_FEATURES_SEL:
            r.driver_feature_select = value
        elif offset == MmioReg.DRIVER_FEATURES:
            r.write_driver_features(value)
        elif offset == MmioReg.QUEUE_SEL:
            r.queue_select = value
        elif offset == MmioReg.QUEUE_SIZE:
            r.write_queue_size(value)
        elif offset in _ADDRESS_REGS:
            which, high = _ADDRESS_REGS[offset]
            r.write_queue_address(which, high, value)
        elif offset == MmioReg.QUEUE_READY:
            r.enable_queue() if value == 1 else r.disable_queue() if value == 0 else None
        elif offset == MmioReg.QUEUE_NOTIFY:
            r.write_notify(value, 4)  # the queue index, or with NOTIFICATION_DATA the value of 2.9
        elif offset == MmioReg.INTERRUPT_ACK:
            self._acknowledge(value)
        elif offset == MmioReg.STATUS:
            r.write_status(value)
        elif offset == MmioReg.SHM_SEL:
            self.shm_select = value
        elif offset == MmioReg.QUEUE_RESET:
            if value == 1:
                r.reset_queue()
        # read-only registers: writes are ignored (the driver MUST NOT write them, 4.2.2.2)

    # --- interrupts (4.2.3.4) -------------------------------------------------------------------

    def _device_interrupt(self, info: Interrupt) -> None:
        with self._irq_lock:
            self.interrupt_status |= MmioInterrupt.CONFIG_CHANGE if info.config_changed else MmioInterrupt.USED_BUFFER
        self._update_irq()

    def _acknowledge(self, value: int) -> None:
        with self._irq_lock:
            self.interrupt_status &= ~value
        self._update_irq()

    def _update_irq(self) -> None:
        """Drive the line to InterruptStatus != 0 (outside the status lock: the line's handler
        reads and acknowledges the status)."""
        with self._irq_lock:
            level = bool(self.interrupt_status)
            changed = level != self._level
            self._level = level
        if changed:
            self.irq(level)

    def _on_reset(self) -> None:
        with self._irq_lock:
            self.interrupt_status = 0  # 4.2.2.1: reset clears InterruptStatus and every QueueReady
        self.shm_select = 0
        self._update_irq()

    def close(self) -> None:
        self.device.close()
