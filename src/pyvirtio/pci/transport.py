"""Virtio over PCI, driver side (VIRTIO 1.3, 4.1): a :class:`DriverTransport` over one function.

The transport finds the virtio structures through the vendor capabilities (4.1.4), checks them
against the BARs they point into, and then speaks the common configuration structure: feature
windows, device_status (a reset is complete when it reads back 0, 4.1.4.3.2), queue_select and the
per-queue registers, notifications at ``cap.offset + queue_notify_off * notify_off_multiplier``
(4.1.4.4).  Interrupts use MSI-X when the function has at least two vectors and the platform can
receive messages (vector 0: configuration changes, vectors 1..: queues), else INTx# and the
read-to-clear ISR byte (4.1.5.3, 4.1.5.4).

The device is not trusted: a capability pointing outside its BAR, at a BAR the function does not
have, or misaligned; a missing required structure; a notify offset past the notify structure; a
reset that never completes — each is a :class:`VirtioPciLayoutError` (a DeviceFault).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from ..errors import DeviceFault, Scope, UsageError, VirtioError
from ..interrupt import Interrupt
from ..spec.features import Feature
from ..spec.ids import (PCI_DEVICE_ID_MAX, PCI_DEVICE_ID_MIN, PCI_MODERN_DEVICE_ID_BASE,
                        PCI_TRANSITIONAL_DEVICE_ID_MAX, PCI_VENDOR_ID_REDHAT_QUMRANET)
from ..spec.pci import (MSIX_BIR_MASK, MSIX_ENTRY,
                        MSIX_ENTRY_SIZE, MSIX_FLAGS_ENABLE, MSIX_FLAGS_MASKALL, MSIX_FLAGS_QSIZE,
                        MSIX_OFFSET_MASK, VIRTIO_PCI_CAP_SIZE,
                        VIRTIO_PCI_NOTIFY_CAP_SIZE, CommonCfg, IsrStatus, MsixCap, PciCapId,
                        PciCapType, VirtioPciCap)
from ..virtq import notification
from ..virtq.kinds import RingLayout
from ..platform.interface import IrqLine, MsiController, Platform, PlatformTransport, split_access
from .scan import Bar, PciFunction

log = logging.getLogger(__name__)

#: The common configuration fields the transport uses end with queue_device (4.1.4.3).
COMMON_MIN_LENGTH = CommonCfg.QUEUE_DEVICE + 8


class VirtioPciLayoutError(DeviceFault):
    """The function's virtio structures are missing, malformed, or point where they cannot be."""

    scope = Scope.DEVICE


def virtio_device_type(fn: PciFunction) -> int | None:
    """The virtio device type of a PCI function, or None if it is not a virtio device (4.1.2)."""
    if fn.vendor_id != PCI_VENDOR_ID_REDHAT_QUMRANET or not PCI_DEVICE_ID_MIN <= fn.device_id <= PCI_DEVICE_ID_MAX:
        return None
    if fn.device_id >= PCI_MODERN_DEVICE_ID_BASE:
        return fn.device_id - PCI_MODERN_DEVICE_ID_BASE
    if fn.device_id <= PCI_TRANSITIONAL_DEVICE_ID_MAX:
        return fn.subsystem_id  # 4.1.2.3: a transitional device's subsystem ID is its type
    return None


@dataclass(frozen=True)
class Structure:
    """A virtio structure mapped through a BAR: where it is and how long."""

    bar: Bar
    offset: int
    length: int
    extra: int = 0  # notify_off_multiplier for NOTIFY_CFG

    @property
    def address(self) -> int:
        """The guest-physical address of the structure (its BAR's address plus its offset)."""
        return self.bar.address + self.offset


_MIN_LENGTH: dict[int, int] = {PciCapType.COMMON_CFG: COMMON_MIN_LENGTH, PciCapType.NOTIFY_CFG: 2,
                               PciCapType.ISR_CFG: 1, PciCapType.DEVICE_CFG: 0}
_ALIGN: dict[int, int] = {PciCapType.COMMON_CFG: 4, PciCapType.NOTIFY_CFG: 2, PciCapType.ISR_CFG: 1,
                          PciCapType.DEVICE_CFG: 4}
_REQUIRED = (PciCapType.COMMON_CFG, PciCapType.NOTIFY_CFG, PciCapType.ISR_CFG)


class PciTransport(PlatformTransport):
    """The driver's side of one virtio PCI function."""

    reset_error = VirtioPciLayoutError

    def __init__(self, platform: Platform, fn: PciFunction, *, interrupts: str = "auto",
                 split_only: bool = False):
        if interrupts not in ("auto", "msix", "intx"):
            raise UsageError(f"interrupts={interrupts!r}: use auto, msix or intx")
        super().__init__(platform, split_only=split_only)
        self.fn = fn
        dtype = virtio_device_type(fn)
        if dtype is None:
            raise UsageError(f"{fn.address} ({fn.vendor_id:04x}:{fn.device_id:04x}) is not a virtio device")
        self._device_type = dtype
        self.structures = self._find_structures()
        self.common = self.structures[PciCapType.COMMON_CFG]
        self.notify_cap = self.structures[PciCapType.NOTIFY_CFG]
        self.isr = self.structures[PciCapType.ISR_CFG]
        self.device_cfg = self.structures.get(PciCapType.DEVICE_CFG)
        self.msix = self._find_msix()
        msi = platform.msi
        #: MSI-X in use: the capability and the platform's MSI controller; None: INTx.
        self._msix_in_use = (self.msix, msi) if self.msix and self.msix[2] >= 2 and msi is not None \
            and interrupts != "intx" else None
        if interrupts == "msix" and self.mode != "msix":
            raise UsageError(f"{fn.address}: MSI-X requested but not available")
        self._messages: list[tuple[int, int]] = []  # (address, data) per vector, kept across resets
        self._vector_queues: dict[int, set[int]] = {}
        self._notify_addr: dict[int, int] = {}
        self._line: IrqLine | None = None
        self._negotiated = 0

    @property
    def mode(self) -> str:
        """How interrupts arrive: ``"msix"`` or ``"intx"``."""
        return "intx" if self._msix_in_use is None else "msix"

    # --- identity -------------------------------------------------------------------------------

    @property
    def device_type(self) -> int:
        return self._device_type

    @property
    def vendor_id(self) -> int:
        return self.fn.subsystem_vendor_id

    def describe(self) -> str:
        return f"pci:{self.fn.address}"

    # --- capability parsing (4.1.4) -------------------------------------------------------------

    def _cfg(self, offset: int, size: int) -> int:
        return self.platform.pci_config_read(self.fn.address, offset, size)

    def _find_structures(self) -> dict[int, Structure]:
        found: dict[int, Structure] = {}
        problems: dict[int, str] = {}
        for cap, cap_id in self.fn.capabilities:
            if cap_id != PciCapId.VNDR:
                continue
            cfg_type = self._cfg(cap + VirtioPciCap.CFG_TYPE, 1)
            if cfg_type not in _MIN_LENGTH or cfg_type in found:
                continue  # reserved types are ignored; the first usable one of a type wins
            try:
                found[cfg_type] = self._structure(cap, cfg_type)
            except VirtioPciLayoutError as exc:
                problems.setdefault(cfg_type, str(exc))
        for cfg_type in _REQUIRED:
            if cfg_type not in found:
                why = problems.get(cfg_type, "no such capability")
                raise VirtioPciLayoutError(f"{self.fn.address}: no usable {PciCapType(cfg_type).name}: {why}")
        return found

    def _structure(self, cap: int, cfg_type: int) -> Structure:
        name = f"{self.fn.address}: {PciCapType(cfg_type).name} at {cap:#x}"
        cap_len = self._cfg(cap + VirtioPciCap.LEN, 1)
        need = VIRTIO_PCI_NOTIFY_CAP_SIZE if cfg_type == PciCapType.NOTIFY_CFG else VIRTIO_PCI_CAP_SIZE
        if cap_len < need or cap + need > 0x100:
            raise VirtioPciLayoutError(f"{name}: cap_len {cap_len} is shorter than {need}")
        bar_index = self._cfg(cap + VirtioPciCap.BAR, 1)
        offset = self._cfg(cap + VirtioPciCap.OFFSET, 4)
        length = self._cfg(cap + VirtioPciCap.LENGTH, 4)
        bar = self.fn.bars.get(bar_index)
        if bar is None:
            raise VirtioPciLayoutError(f"{name}: points at BAR{bar_index}, which the function does not have")
        if offset + length > bar.size:
            raise VirtioPciLayoutError(f"{name}: [{offset:#x}, +{length:#x}) lies outside BAR{bar_index} "
                                       f"of {bar.size:#x} bytes")
        if length < _MIN_LENGTH[cfg_type]:
            raise VirtioPciLayoutError(f"{name}: length {length} is too short")
        if offset % _ALIGN[cfg_type]:
            raise VirtioPciLayoutError(f"{name}: offset {offset:#x} is not {_ALIGN[cfg_type]}-byte aligned")
        extra = self._cfg(cap + VirtioPciCap.NOTIFY_OFF_MULTIPLIER, 4) if cfg_type == PciCapType.NOTIFY_CFG else 0
        return Structure(bar, offset, length, extra)

    def _find_msix(self) -> tuple[Structure, int, int] | None:
        """(table structure, control register offset, table size) of the MSI-X capability."""
        for cap, cap_id in self.fn.capabilities:
            if cap_id != PciCapId.MSIX:
                continue
            nvec = (self._cfg(cap + MsixCap.MESSAGE_CONTROL, 2) & MSIX_FLAGS_QSIZE) + 1
            table = self._cfg(cap + MsixCap.TABLE, 4)
            bar = self.fn.bars.get(table & MSIX_BIR_MASK)
            offset, length = table & MSIX_OFFSET_MASK, nvec * MSIX_ENTRY_SIZE
            if bar is None or offset + length > bar.size:
                raise VirtioPciLayoutError(f"{self.fn.address}: MSI-X table [{offset:#x}, +{length:#x}) "
                                           f"is outside BAR{table & MSIX_BIR_MASK}")
            return Structure(bar, offset, length), cap + MsixCap.MESSAGE_CONTROL, nvec
        return None

    # --- register access ------------------------------------------------------------------------

    def _read(self, s: Structure, offset: int, size: int) -> int:
        if s.bar.is_io:
            return self.platform.io_read(s.address + offset, size)
        return self.platform.mmio_read(s.address + offset, size)

    def _write(self, s: Structure, offset: int, size: int, value: int) -> None:
        if s.bar.is_io:
            self.platform.io_write(s.address + offset, size, value)
        else:
            self.platform.mmio_write(s.address + offset, size, value)

    def _common_read(self, field: int, size: int) -> int:
        return self._read(self.common, field, size)

    def _common_write(self, field: int, size: int, value: int) -> None:
        self._write(self.common, field, size, value)

    def _write64(self, field: CommonCfg, value: int) -> None:
        # 4.1.3: 64-bit fields are two 32-bit accesses, low part first
        self._common_write(field, 4, value & 0xFFFFFFFF)
        self._common_write(field + 4, 4, value >> 32)

    # --- status and features --------------------------------------------------------------------

    def get_status(self) -> int:
        return self._common_read(CommonCfg.DEVICE_STATUS, 1)

    def set_status(self, status: int) -> None:
        self._common_write(CommonCfg.DEVICE_STATUS, 1, status)

    def reset(self) -> None:
        super().reset()
        self._active_queues.clear()
        self._notify_addr.clear()
        self._vector_queues.clear()

    def get_device_features(self) -> int:
        features = 0
        for word in range(2):
            self._common_write(CommonCfg.DEVICE_FEATURE_SELECT, 4, word)
            features |= self._common_read(CommonCfg.DEVICE_FEATURE, 4) << (32 * word)
        return self._offered(features)

    def set_driver_features(self, features: int) -> None:
        for word in range(2):
            self._common_write(CommonCfg.DRIVER_FEATURE_SELECT, 4, word)
            self._common_write(CommonCfg.DRIVER_FEATURE, 4, (features >> (32 * word)) & 0xFFFFFFFF)
        self._negotiated = features

    # --- device configuration (4.1.4.6) ---------------------------------------------------------

    def read_config(self, offset: int, size: int) -> bytes:
        out = bytearray(size)
        s = self.device_cfg
        for pos, width in split_access(offset, size):
            if s is not None and pos + width <= s.length:
                out[pos - offset:pos - offset + width] = self._read(s, pos, width).to_bytes(width, "little")
        return bytes(out)

    def write_config(self, offset: int, data: bytes) -> None:
        s = self.device_cfg
        if s is None or offset < 0 or offset + len(data) > s.length:
            raise UsageError(f"config write [{offset}, +{len(data)}) is outside the device configuration")
        for pos, width in split_access(offset, len(data)):
            chunk = data[pos - offset:pos - offset + width]
            self._write(s, pos, width, int.from_bytes(chunk, "little"))

    def config_generation(self) -> int:
        return self._common_read(CommonCfg.CONFIG_GENERATION, 1)

    # --- queues (4.1.5.1.3) ---------------------------------------------------------------------

    def num_queues(self) -> int:
        return self._common_read(CommonCfg.NUM_QUEUES, 2)

    def queue_max_size(self, index: int) -> int:
        if not 0 <= index < self.num_queues():
            return 0
        self._common_write(CommonCfg.QUEUE_SELECT, 2, index)
        return self._common_read(CommonCfg.QUEUE_SIZE, 2)

    def setup_queue(self, index: int, layout: RingLayout) -> None:
        self._common_write(CommonCfg.QUEUE_SELECT, 2, index)
        if self._common_read(CommonCfg.QUEUE_SIZE, 2) == 0:
            raise DeviceFault(f"{self.fn.address}: queue {index} does not exist (queue_size 0)")
        if self._common_read(CommonCfg.QUEUE_ENABLE, 2):
            raise DeviceFault(f"{self.fn.address}: queue {index} is enabled before it was set up")
        self._common_write(CommonCfg.QUEUE_SIZE, 2, layout.size)
        self._write64(CommonCfg.QUEUE_DESC, layout.desc_table)
        self._write64(CommonCfg.QUEUE_DRIVER, layout.avail_ring)
        self._write64(CommonCfg.QUEUE_DEVICE, layout.used_ring)
        if self.mode == "msix":
            self._map_queue_vector(index)
        self._notify_addr[index] = self._notify_address(index)
        self.platform.ring_added(layout)
        self._common_write(CommonCfg.QUEUE_ENABLE, 2, 1)
        self._active_queues.add(index)

    def _notify_address(self, index: int) -> int:
        off = self._common_read(CommonCfg.QUEUE_NOTIFY_OFF, 2)
        cap = self.notify_cap
        width = 4 if self._negotiated & (1 << Feature.NOTIFICATION_DATA) else 2
        where = off * cap.extra
        if where + width > cap.length:
            raise VirtioPciLayoutError(f"{self.fn.address}: queue {index} notifies at {where:#x}, past the "
                                       f"{cap.length:#x}-byte notify structure (4.1.4.4)")
        return where

    def notify(self, index: int, position: int | None = None) -> None:
        """4.1.5.2: the queue index (or its queue_notif_config_data) as 16 bits; with
        VIRTIO_F_NOTIFICATION_DATA and a ``position``, the 32-bit value of 2.9."""
        where = self._notify_addr.get(index)
        if where is None:
            raise UsageError(f"queue {index} was not set up")
        value = index
        if self._negotiated & (1 << Feature.NOTIF_CONFIG_DATA):
            self._common_write(CommonCfg.QUEUE_SELECT, 2, index)
            value = self._common_read(CommonCfg.QUEUE_NOTIF_CONFIG_DATA, 2)
        if position is not None and self._negotiated & (1 << Feature.NOTIFICATION_DATA):
            self._write(self.notify_cap, where, 4, notification.encode(value, position))
        else:
            self._write(self.notify_cap, where, 2, value)

    def reset_queue(self, index: int) -> None:
        if not self._negotiated & (1 << Feature.RING_RESET):
            raise UsageError("VIRTIO_F_RING_RESET was not negotiated")
        self._common_write(CommonCfg.QUEUE_SELECT, 2, index)
        self._common_write(CommonCfg.QUEUE_RESET, 2, 1)
        self.wait_cleared(lambda: self._common_read(CommonCfg.QUEUE_RESET, 2),
                          f"queue {index} reset never completed")
        self._active_queues.discard(index)

    # --- interrupts (4.1.5.1.2, 4.1.5.3, 4.1.5.4) -----------------------------------------------

    def set_interrupt_handler(self, handler) -> None:
        super().set_interrupt_handler(handler)
        if self._msix_in_use is not None:
            self._setup_msix(*self._msix_in_use)
        if self.mode == "intx":
            self._setup_intx()

    def _setup_msix(self, msix: tuple[Structure, int, int], msi: MsiController) -> None:
        """Enable MSI-X (masked while the table is written), one vector for configuration changes
        and one per queue as far as the table reaches; queues share vectors beyond that."""
        table, control, nvec = msix
        want = min(nvec, 1 + max(1, self.num_queues()))
        while len(self._messages) < want:
            vector = len(self._messages)
            self._messages.append(msi.allocate(functools.partial(self._on_vector, vector)))
        ctrl = self._cfg(control, 2)
        write = functools.partial(self.platform.pci_config_write, self.fn.address, control, 2)
        write(ctrl | MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL)
        for vector, (address, data) in enumerate(self._messages):
            entry = MSIX_ENTRY.pack(address & 0xFFFFFFFF, address >> 32, data, 0)  # unmasked
            for i in range(0, MSIX_ENTRY_SIZE, 4):
                self._write(table, vector * MSIX_ENTRY_SIZE + i, 4, int.from_bytes(entry[i:i + 4], "little"))
        write((ctrl | MSIX_FLAGS_ENABLE) & ~MSIX_FLAGS_MASKALL)
        self._common_write(CommonCfg.CONFIG_MSIX_VECTOR, 2, 0)
        if self._common_read(CommonCfg.CONFIG_MSIX_VECTOR, 2) != 0:  # mapping failed (4.1.5.1.2)
            log.warning("%s: device refused MSI-X vector 0; using INTx", self.fn.address)
            write(ctrl & ~MSIX_FLAGS_ENABLE)
            self._msix_in_use = None

    def _map_queue_vector(self, index: int) -> None:
        vector = 1 + index % (len(self._messages) - 1)
        self._common_write(CommonCfg.QUEUE_MSIX_VECTOR, 2, vector)
        if self._common_read(CommonCfg.QUEUE_MSIX_VECTOR, 2) != vector:
            raise DeviceFault(f"{self.fn.address}: device refused MSI-X vector {vector} for queue {index}")
        self._vector_queues.setdefault(vector, set()).add(index)

    def _on_vector(self, vector: int) -> None:
        if vector == 0:
            self._deliver_config()
        for index in sorted(self._vector_queues.get(vector, ())):
            if index in self._active_queues:
                self._deliver(Interrupt(index))

    def _setup_intx(self) -> None:
        self._line = self.platform.intx_line(self.fn.address)
        if self._line is not None:
            self._line.set_handler(self._service_intx)

    def _service_intx(self) -> None:
        isr = self._read(self.isr, 0, 1)  # reading clears it (4.1.4.5)
        if isr & IsrStatus.CONFIG:
            self._deliver_config()
        if isr & IsrStatus.QUEUE:
            self._deliver_queues()

    def _service(self) -> None:
        if self._msix_in_use is not None:
            self._msix_in_use[1].poll()
        elif self._line is None or self._line.level():
            self._service_intx()

    def close(self) -> None:
        try:
            self.set_status(0)
        except VirtioError as exc:  # closing must not fail on a dead peer
            log.debug("%s: reset on close failed: %s", self.fn.address, exc)
        if self.platform.msi is not None:
            for address, data in self._messages:
                self.platform.msi.release(address, data)
        self._messages.clear()

