"""Virtio over PCI, device side (VIRTIO 1.3, 4.1): a PCI function wrapping a VirtioDevice.

Layout of the function (modern, non-transitional unless asked):

* configuration space: a type 0 header (vendor 0x1AF4, device 0x1040 + type, revision 1,
  class code by device type) and a capability list with the virtio structures COMMON_CFG,
  NOTIFY_CFG, ISR_CFG, DEVICE_CFG (when the device has a config space) and PCI_CFG, then MSI-X;
* BAR0, 32-bit memory: the MSI-X table and Pending Bit Array;
* BAR2 (+BAR3), 64-bit memory: common config at 0x0000, ISR at 0x1000, device config at 0x2000,
  notifications at 0x3000 with ``notify_off_multiplier`` bytes between queues.

The guest reaches it through :meth:`config_read` / :meth:`config_write` (configuration cycles)
and :meth:`bar_read` / :meth:`bar_write` (accesses the platform decoded to a BAR and offset).
Interrupts leave through two callbacks: ``msi(address, data)`` for MSI-X messages and
``intx(level)`` for the INTx# line.  The function needs the device-side guest memory to process
queues and only touches it while the driver has enabled bus mastering.

Every access a guest can make is accepted: any width of 1-8 bytes at any offset.  Reads of
holes give 0; writes to read-only or unimplemented registers are ignored; writes that break the
device set DEVICE_NEEDS_RESET (see :mod:`.registers`).  Nothing raises to the guest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from ..device import VirtioDevice
from ..interrupt import Interrupt
from ..memory import GuestMemory
from ..spec.features import Feature
from ..spec.ids import (PCI_CLASS_CODE_DEFAULT, PCI_CLASS_CODES, PCI_MODERN_DEVICE_ID_BASE,
                        PCI_NON_TRANSITIONAL_MIN_REVISION, PCI_TRANSITIONAL_REVISION,
                        PCI_VENDOR_ID_REDHAT_QUMRANET, TRANSITIONAL_PCI_DEVICE_IDS)
from ..spec.pci import (COMMON_CFG_FIELD_SIZES, COMMON_CFG_SIZE, MSIX_FLAGS_ENABLE, MSIX_FLAGS_MASKALL,
                        VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_CAP, VIRTIO_PCI_CAP_SIZE, CommonCfg, IsrStatus,
                        MsixCap, PciCapId, PciCapType, PciCfg, PciCommand, PciStatus, VirtioPciCap)
from ..platform.interface import check_access
from .config import BarKind, BarSpec, ConfigSpace, Type0Header
from .msix import MsixTable
from ..platform.registers import DeviceRegisters

log = logging.getLogger(__name__)

#: Subsystem IDs pyvirtio's functions present by default (4.1.2.1: informational; non-transitional
#: devices SHOULD use a subsystem device ID >= 0x40).
DEFAULT_SUBSYSTEM_VENDOR_ID = PCI_VENDOR_ID_REDHAT_QUMRANET
DEFAULT_SUBSYSTEM_ID = 0x5056  # "PV"

MSIX_BAR = 0
VIRTIO_BAR = 2
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000

_QUEUE_ADDRESS = {CommonCfg.QUEUE_DESC: "desc", CommonCfg.QUEUE_DRIVER: "driver",
                  CommonCfg.QUEUE_DEVICE: "device"}
# byte offset in common config -> (field, byte index in the field)
_COMMON_BYTES = {f + i: (f, i) for f, n in COMMON_CFG_FIELD_SIZES.items() for i in range(n)}


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


@dataclass(frozen=True)
class Region:
    """A virtio structure inside a BAR."""

    bar: int
    offset: int
    length: int
    read: Callable[[int, int], int]
    write: Callable[[int, int, int], None]

    def contains(self, bar: int, offset: int, size: int) -> bool:
        return bar == self.bar and self.offset <= offset and offset + size <= self.offset + self.length


class VirtioPciFunction:
    """One virtio PCI function: configuration space, BARs, MSI-X and INTx over a VirtioDevice."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, *, transitional: bool = False,
                 msix_vectors: int | None = None, notify_off_multiplier: int = 4,
                 subsystem_vendor_id: int = DEFAULT_SUBSYSTEM_VENDOR_ID,
                 subsystem_id: int | None = None,
                 msi: Callable[[int, int], None] | None = None,
                 intx: Callable[[bool], None] | None = None, notification_data: bool = True):
        self.device = device
        if notification_data:  # a transport feature: the notify write carries the position (2.9)
            device.device_features |= 1 << Feature.NOTIFICATION_DATA
        self.msi = msi or (lambda address, data: None)
        self.intx = intx or (lambda level: None)
        self.isr = 0
        self._isr_lock = threading.Lock()
        self._intx_level = False
        self.regs = DeviceRegisters(device, memory, can_dma=self._bus_master, on_reset=self._on_reset)
        nq = len(device.queues)
        self.notify_off_multiplier = notify_off_multiplier
        self.config_len = len(device.config_bytes())
        nvec = nq + 1 if msix_vectors is None else msix_vectors
        self.msix = MsixTable(nvec, self._send_msi) if nvec else None
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.space = ConfigSpace()
        self.header = Type0Header(self.space, **self._identity(transitional, subsystem_vendor_id, subsystem_id),
                                  bars=self._bars())
        self.regions = self._regions()
        self._add_capabilities()
        self.space.on_write(PciCfg.COMMAND, 2, lambda o, s: self._update_intx())
        device.interrupt = self._device_interrupt

    # --- identity and layout --------------------------------------------------------------------

    def _identity(self, transitional: bool, subsystem_vendor_id: int, subsystem_id: int | None) -> dict:
        dtype = int(self.device.device_type)
        if transitional:
            if dtype not in TRANSITIONAL_PCI_DEVICE_IDS:
                raise ValueError(f"device type {dtype} has no transitional PCI device ID (4.1.2.1)")
            # 4.1.2.3: revision 0, subsystem device ID = virtio device ID
            device_id, revision, subsystem_id = TRANSITIONAL_PCI_DEVICE_IDS[dtype], PCI_TRANSITIONAL_REVISION, dtype
        else:
            device_id, revision = PCI_MODERN_DEVICE_ID_BASE + dtype, PCI_NON_TRANSITIONAL_MIN_REVISION
        return dict(vendor_id=PCI_VENDOR_ID_REDHAT_QUMRANET, device_id=device_id, revision=revision,
                    class_code=PCI_CLASS_CODES.get(dtype, PCI_CLASS_CODE_DEFAULT),
                    subsystem_vendor_id=subsystem_vendor_id,
                    subsystem_id=DEFAULT_SUBSYSTEM_ID if subsystem_id is None else subsystem_id)

    @property
    def notify_length(self) -> int:
        # the last queue's notify address plus a 32-bit write (NOTIFICATION_DATA, 4.1.4.4)
        return max(0, len(self.device.queues) - 1) * self.notify_off_multiplier + 4

    def _bars(self) -> tuple[BarSpec, ...]:
        bars = [BarSpec(VIRTIO_BAR, _pow2_at_least(NOTIFY_OFFSET + self.notify_length), BarKind.MEM64)]
        if self.msix:
            self.pba_offset = (self.msix.table_bytes + 0x7FF) & ~0x7FF
            bars.append(BarSpec(MSIX_BAR, _pow2_at_least(max(0x1000, self.pba_offset + self.msix.pba_bytes))))
        return tuple(bars)

    def _regions(self) -> list[Region]:
        regions = [Region(VIRTIO_BAR, COMMON_OFFSET, COMMON_CFG_SIZE, self._common_read, self._common_write),
                   Region(VIRTIO_BAR, ISR_OFFSET, 1, self._isr_read, _ignore),
                   Region(VIRTIO_BAR, NOTIFY_OFFSET, self.notify_length, _zero, self._notify_write)]
        if self.config_len:
            regions.append(Region(VIRTIO_BAR, DEVICE_OFFSET, self.config_len, self._config_read,
                                  self._config_write))
        if self.msix:
            regions.append(Region(MSIX_BAR, 0, self.msix.table_bytes, self.msix.table_read,
                                  self.msix.table_write))
            regions.append(Region(MSIX_BAR, self.pba_offset, self.msix.pba_bytes, self.msix.pba_read, _ignore))
        return regions

    def _add_capabilities(self) -> None:
        def vcap(cfg_type: int, offset: int, length: int, extra: bytes = b"", bar: int = VIRTIO_BAR,
                 wmask: bytes = b"") -> int:
            cap_len = VIRTIO_PCI_CAP_SIZE + len(extra)
            body = VIRTIO_PCI_CAP.pack(PciCapId.VNDR, 0, cap_len, cfg_type, bar, 0, offset, length)[2:] + extra
            return self.space.add_capability(PciCapId.VNDR, body, wmask)

        vcap(PciCapType.COMMON_CFG, COMMON_OFFSET, COMMON_CFG_SIZE)
        vcap(PciCapType.NOTIFY_CFG, NOTIFY_OFFSET, self.notify_length,
             self.notify_off_multiplier.to_bytes(4, "little"))
        vcap(PciCapType.ISR_CFG, ISR_OFFSET, 1)
        if self.config_len:
            vcap(PciCapType.DEVICE_CFG, DEVICE_OFFSET, self.config_len)
        # PCI_CFG (4.1.4.9): bar, offset, length and pci_cfg_data are read-write for the driver.
        wmask = bytes(2) + b"\xff" + bytes(3) + b"\xff" * 12
        self.pci_cfg = vcap(PciCapType.PCI_CFG, 0, 0, bytes(4), bar=0, wmask=wmask)
        data = self.pci_cfg + VirtioPciCap.PCI_CFG_DATA
        self.space.on_read(data, 4, lambda o, s: self._pci_cfg_access(write=False))
        self.space.on_write(data, 4, lambda o, s: self._pci_cfg_access(write=True))
        if msix := self.msix:
            body = (msix.nvectors - 1).to_bytes(2, "little") + (0 | MSIX_BAR).to_bytes(4, "little") \
                + (self.pba_offset | MSIX_BAR).to_bytes(4, "little")
            self.msix_cap = self.space.add_capability(
                PciCapId.MSIX, body, wmask=(MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL).to_bytes(2, "little"))
            self.space.on_write(self.msix_cap + MsixCap.MESSAGE_CONTROL, 2, lambda o, s: self._msix_control(msix))

    # --- configuration space --------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        return self.space.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.space.write(offset, size, value)

    @property
    def bars(self) -> dict[int, BarSpec]:
        return self.header.bars

    def _bus_master(self) -> bool:
        return bool(self.header.command & PciCommand.MASTER)

    def _pci_cfg_access(self, write: bool) -> None:
        """The PCI_CFG window (4.1.4.9): an access of cap.length bytes at cap.offset in cap.bar."""
        base = self.pci_cfg
        bar = self.space.get(base + VirtioPciCap.BAR, 1)
        length = self.space.get(base + VirtioPciCap.LENGTH, 4)
        offset = self.space.get(base + VirtioPciCap.OFFSET, 4)
        spec = self.bars.get(bar)
        if length not in (1, 2, 4) or offset % length or spec is None or offset + length > spec.size:
            return  # the driver MUST NOT use a window outside a BAR: ignore it
        data = base + VirtioPciCap.PCI_CFG_DATA
        if write:
            self.bar_write(bar, offset, length, self.space.get(data, length))
        else:
            self.space.put(data, length, self.bar_read(bar, offset, length))

    def _msix_control(self, msix: MsixTable) -> None:
        msix.set_control(self.space.get(self.msix_cap + MsixCap.MESSAGE_CONTROL, 2))
        self._update_intx()

    # --- BARs -----------------------------------------------------------------------------------

    def _region(self, bar: int, offset: int, size: int) -> Region | None:
        for region in self.regions:
            if region.contains(bar, offset, size):
                return region
        return None

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        check_access(size)
        region = self._region(bar, offset, size)
        if region is None:
            return 0  # holes, straddling accesses, unimplemented BARs
        if region.read == self._isr_read:
            # The ISR is the function's interrupt state, not the device's: read (and cleared)
            # without holding the device's workers still - an INTx handler runs in the worker
            # that raised the line, which holds its own group's lock (as for virtio-mmio's
            # InterruptStatus, pyvirtio.mmio.device).
            return self._isr_read(offset - region.offset, size)
        with self.regs.engine.hold():
            return region.read(offset - region.offset, size)

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        check_access(size)
        region = self._region(bar, offset, size)
        if region is None:
            return
        value &= (1 << (8 * size)) - 1
        with self.regs.engine.hold():
            region.write(offset - region.offset, size, value)

    # --- common configuration (4.1.4.3) ---------------------------------------------------------

    def _common_read(self, offset: int, size: int) -> int:
        values: dict[CommonCfg, int] = {}
        out = bytearray(size)
        for i in range(size):
            hit = _COMMON_BYTES.get(offset + i)
            if hit is None:
                continue
            field, byte = hit
            if field not in values:
                values[field] = self._common_field(field)
            out[i] = (values[field] >> (8 * byte)) & 0xFF
        return int.from_bytes(out, "little")

    def _common_field(self, field: CommonCfg) -> int:
        r = self.regs
        simple = {
            CommonCfg.DEVICE_FEATURE_SELECT: lambda: r.device_feature_select,
            CommonCfg.DEVICE_FEATURE: r.device_feature_window,
            CommonCfg.DRIVER_FEATURE_SELECT: lambda: r.driver_feature_select,
            CommonCfg.DRIVER_FEATURE: r.driver_feature_window,
            CommonCfg.CONFIG_MSIX_VECTOR: lambda: self.config_vector,
            CommonCfg.NUM_QUEUES: lambda: len(r.queues),
            CommonCfg.DEVICE_STATUS: lambda: r.status,
            CommonCfg.CONFIG_GENERATION: lambda: self.device.config_generation & 0xFF,
            CommonCfg.QUEUE_SELECT: lambda: r.queue_select,
        }
        if field in simple:
            return simple[field]()
        q = r.selected
        if q is None:
            return 0  # queue_size 0: the queue is unavailable (4.1.4.3.1)
        per_queue = {
            CommonCfg.QUEUE_SIZE: q.size,
            CommonCfg.QUEUE_MSIX_VECTOR: q.vector,
            CommonCfg.QUEUE_ENABLE: int(q.enabled),
            CommonCfg.QUEUE_NOTIFY_OFF: r.queue_select if self.notify_off_multiplier else 0,
            CommonCfg.QUEUE_DESC: q.desc,
            CommonCfg.QUEUE_DRIVER: q.driver,
            CommonCfg.QUEUE_DEVICE: q.device,
            CommonCfg.QUEUE_NOTIF_CONFIG_DATA: r.queue_select,
        }
        return per_queue.get(field, 0)  # queue_reset completes at once; no admin queues

    def _common_write(self, offset: int, size: int, value: int) -> None:
        hit = _COMMON_BYTES.get(offset)
        if hit is None or hit[1] not in (0, 4):
            return
        field, byte = hit
        width = COMMON_CFG_FIELD_SIZES[field]
        if field in _QUEUE_ADDRESS:
            if size == 4:
                self.regs.write_queue_address(_QUEUE_ADDRESS[field], byte == 4, value)
            elif size == 8 and byte == 0:
                self.regs.write_queue_address64(_QUEUE_ADDRESS[field], value)
            return
        if byte or size != width:
            return  # the driver MUST use the field's width (4.1.3); other accesses are ignored
        self._write_field(field, value)

    def _write_field(self, field: CommonCfg, value: int) -> None:
        r = self.regs
        if field == CommonCfg.DEVICE_FEATURE_SELECT:
            r.device_feature_select = value
        elif field == CommonCfg.DRIVER_FEATURE_SELECT:
            r.driver_feature_select = value
        elif field == CommonCfg.DRIVER_FEATURE:
            r.write_driver_features(value)
        elif field == CommonCfg.CONFIG_MSIX_VECTOR:
            self.config_vector = self._map_vector(value)
        elif field == CommonCfg.DEVICE_STATUS:
            r.write_status(value)
        elif field == CommonCfg.QUEUE_SELECT:
            r.queue_select = value
        elif field == CommonCfg.QUEUE_SIZE:
            r.write_queue_size(value)
        elif field == CommonCfg.QUEUE_MSIX_VECTOR:
            if r.selected is not None:
                r.selected.vector = self._map_vector(value)
        elif field == CommonCfg.QUEUE_ENABLE:
            if value == 1:
                r.enable_queue()  # writing 0 is forbidden to the driver (4.1.4.3.2): ignored
        elif field == CommonCfg.QUEUE_RESET:
            if value == 1:
                r.reset_queue()
        # device_feature, num_queues, config_generation, queue_notify_off, queue_notify_data and
        # the admin queue fields are read-only: writes are ignored.

    def _map_vector(self, vector: int) -> int:
        """A vector outside the table cannot be mapped: report NO_VECTOR (4.1.5.1.2)."""
        if self.msix is None or not 0 <= vector < self.msix.nvectors:
            return VIRTIO_MSI_NO_VECTOR
        return vector

    # --- ISR, notifications, device configuration -----------------------------------------------

    def _isr_read(self, offset: int, size: int) -> int:
        if offset:
            return 0
        with self._isr_lock:
            value, self.isr = self.isr, 0  # reading clears it and de-asserts INTx (4.1.4.5)
        self._update_intx()
        return value

    def _notify_write(self, offset: int, size: int, value: int) -> None:
        if size not in (2, 4):
            return
        # 4.1.5.2: the driver writes the queue index (with NOTIFICATION_DATA: the 32-bit value of
        # 2.9, vqn in bits 0-15 and the queue's position above)
        self.regs.write_notify(value, size)

    def _config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.device.read_config(offset, size), "little")

    def _config_write(self, offset: int, size: int, value: int) -> None:
        self.device.write_config(offset, value.to_bytes(size, "little"))

    # --- interrupts (4.1.5.3, 4.1.5.4) ----------------------------------------------------------

    @property
    def msix_enabled(self) -> bool:
        return self.msix is not None and self.msix.enabled

    def _device_interrupt(self, info: Interrupt) -> None:
        msix = self.msix if self.msix_enabled else None
        if info.queue is None:  # a config change
            with self._isr_lock:
                self.isr |= IsrStatus.CONFIG  # set before sending the notification (4.1.4.5.1)
            vector = self.config_vector
        else:
            q = self.regs.queues[info.queue] if 0 <= info.queue < len(self.regs.queues) else None
            vector = q.vector if q is not None else VIRTIO_MSI_NO_VECTOR
            if msix is None:
                with self._isr_lock:
                    self.isr |= IsrStatus.QUEUE
        if msix is not None:
            if vector != VIRTIO_MSI_NO_VECTOR:
                msix.notify(vector)
        else:
            self._update_intx()

    def _send_msi(self, address: int, data: int) -> None:
        if not self._bus_master():
            log.info("MSI-X message to %#x dropped: bus mastering is off", address)
            return
        self.msi(address, data)

    def _update_intx(self) -> None:
        pending = bool(self.isr) and not self.msix_enabled
        status = self.space.get(PciCfg.STATUS, 2)
        self.space.put(PciCfg.STATUS, 2, status | PciStatus.INTERRUPT if pending else
                       status & ~PciStatus.INTERRUPT)
        level = pending and not self.header.command & PciCommand.INTX_DISABLE
        if level != self._intx_level:
            self._intx_level = level
            self.intx(level)

    def _on_reset(self) -> None:
        self.isr = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR  # every event unmapped on reset (4.1.5.1.2)
        self._update_intx()

    def close(self) -> None:
        self.device.close()


def _ignore(offset: int, size: int, value: int) -> None:
    pass


def _zero(offset: int, size: int) -> int:
    return 0
