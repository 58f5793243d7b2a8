"""A PCI type 0 configuration space as a register file ([PCI] 6.1, 6.2.5, 6.7).

The space is three byte arrays: the current contents, a *write mask* (which bits the driver may
change) and a *write-one-to-clear* mask.  Every register semantic of the header then follows from
the masks, whatever the access width or alignment:

* read-only fields (IDs, class code, capability bodies) have mask 0 and ignore writes;
* a BAR's address bits above its size are writable and the low bits are not, so writing all ones
  reads back the size mask with the type bits — the BAR sizing protocol ([PCI] 6.2.5.1);
* the command register lets the driver change only the bits the function implements.

Accesses are little-endian and may be 1 to 8 bytes at any offset; bytes past the end read as
zero and ignore writes, so no access a guest can make raises.  Side effects (the PCI_CFG window,
MSI-X enable, INTx masking) are hooks the owning function installs on byte ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from ..errors import UsageError
from ..platform.interface import check_access
from ..spec.pci import (PCI_BAR_IO_MASK, PCI_BAR_MEM_MASK, PCI_BAR_MEM_PREFETCH, PCI_BAR_MEM_TYPE_64,
                        PCI_BAR_OFFSETS, PCI_BAR_SPACE_IO, PCI_CAP_LIST_NEXT, PCI_CONFIG_SPACE_SIZE,
                        PCI_HEADER_TYPE_NORMAL, PCI_INTERRUPT_PIN_INTA, PCI_STD_HEADER_SIZE, PciCfg,
                        PciCommand, PciStatus)

class BarKind(Enum):
    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"


@dataclass(frozen=True)
class BarSpec:
    """One base address register a function implements: its index, size (a power of two) and kind."""

    index: int
    size: int
    kind: BarKind = BarKind.MEM32
    prefetchable: bool = False

    def __post_init__(self):
        if self.size < (4 if self.kind is BarKind.IO else 16) or self.size & (self.size - 1):
            raise UsageError(f"BAR{self.index}: size {self.size:#x} is not a power of two >= 16")
        if not 0 <= self.index < len(PCI_BAR_OFFSETS) or (self.kind is BarKind.MEM64 and self.index == 5):
            raise UsageError(f"BAR{self.index} cannot hold a {self.kind.value} BAR")

    @property
    def type_bits(self) -> int:
        if self.kind is BarKind.IO:
            return PCI_BAR_SPACE_IO
        bits = PCI_BAR_MEM_TYPE_64 if self.kind is BarKind.MEM64 else 0
        return bits | (PCI_BAR_MEM_PREFETCH if self.prefetchable else 0)


Hook = Callable[[int, int], None]  # (offset, size) of the access that touched the range


class ConfigSpace:
    """Contents, write mask and write-one-to-clear mask of a function's configuration space."""

    def __init__(self, size: int = PCI_CONFIG_SPACE_SIZE):
        self.size = size
        self.data = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self._read_hooks: list[tuple[int, int, Hook]] = []
        self._write_hooks: list[tuple[int, int, Hook]] = []
        self._cap_tail: int | None = None  # offset of the last capability's next pointer
        self._cap_free = PCI_STD_HEADER_SIZE

    # --- building (the function's own code, not the guest) --------------------------------------

    def set(self, offset: int, size: int, value: int, wmask: int = 0, w1c: int = 0) -> None:
        self.data[offset:offset + size] = value.to_bytes(size, "little")
        self.wmask[offset:offset + size] = wmask.to_bytes(size, "little")
        self.w1cmask[offset:offset + size] = w1c.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def put(self, offset: int, size: int, value: int) -> None:
        """Change contents regardless of the masks (the device updating its own registers)."""
        self.data[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def on_read(self, offset: int, size: int, hook: Hook) -> None:
        self._read_hooks.append((offset, offset + size, hook))

    def on_write(self, offset: int, size: int, hook: Hook) -> None:
        self._write_hooks.append((offset, offset + size, hook))

    def add_capability(self, cap_id: int, body: bytes, wmask: bytes = b"") -> int:
        """Append a capability (``body`` excludes the 2-byte id/next header); returns its offset."""
        length = 2 + len(body)
        offset = (self._cap_free + 3) & ~3
        if offset + length > PCI_CONFIG_SPACE_SIZE:
            raise UsageError("capabilities do not fit in the configuration space")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2:offset + length] = body
        if wmask:
            self.wmask[offset + 2:offset + 2 + len(wmask)] = wmask
        if self._cap_tail is None:
            self.data[PciCfg.CAPABILITY_LIST] = offset
            self.data[PciCfg.STATUS] |= PciStatus.CAP_LIST
        else:
            self.data[self._cap_tail] = offset
        self._cap_tail = offset + PCI_CAP_LIST_NEXT
        self._cap_free = offset + length
        return offset

    # --- guest accesses -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        check_access(size)
        lo, hi = max(offset, 0), min(offset + size, self.size)
        for start, end, hook in self._read_hooks:
            if lo < end and start < hi:
                hook(offset, size)
        out = bytearray(size)
        if lo < hi:
            out[lo - offset:hi - offset] = self.data[lo:hi]
        return int.from_bytes(out, "little")

    def write(self, offset: int, size: int, value: int) -> None:
        check_access(size)
        raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        touched = False
        for i, b in enumerate(raw):
            pos = offset + i
            if not 0 <= pos < self.size:
                continue
            keep = self.data[pos] & ~self.wmask[pos] & 0xFF
            new = keep | (b & self.wmask[pos])
            new &= ~(b & self.w1cmask[pos]) & 0xFF
            self.data[pos] = new
            touched = True
        if not touched:
            return
        lo, hi = offset, offset + size
        for start, end, hook in self._write_hooks:
            if lo < end and start < hi:
                hook(offset, size)


class Type0Header:
    """Fills a ConfigSpace with a type 0 header: IDs, class, command/status, BARs, interrupt pin."""

    #: Command bits a function with memory BARs implements.
    COMMAND_WRITABLE = (PciCommand.IO | PciCommand.MEMORY | PciCommand.MASTER | PciCommand.PARITY
                        | PciCommand.SERR | PciCommand.INTX_DISABLE)

    def __init__(self, space: ConfigSpace, *, vendor_id: int, device_id: int, revision: int,
                 class_code: int, subsystem_vendor_id: int, subsystem_id: int,
                 bars: tuple[BarSpec, ...], interrupt_pin: int = PCI_INTERRUPT_PIN_INTA):
        self.space = space
        self.bars = {bar.index: bar for bar in bars}
        s = space
        s.set(PciCfg.VENDOR_ID, 2, vendor_id)
        s.set(PciCfg.DEVICE_ID, 2, device_id)
        s.set(PciCfg.COMMAND, 2, 0, wmask=self.COMMAND_WRITABLE)
        s.set(PciCfg.STATUS, 2, 0, w1c=0xF900)  # error bits are RW1C; we never set them
        s.set(PciCfg.REVISION_ID, 1, revision)
        s.set(PciCfg.CLASS_PROG, 3, class_code)
        s.set(PciCfg.CACHE_LINE_SIZE, 1, 0, wmask=0xFF)
        s.set(PciCfg.HEADER_TYPE, 1, PCI_HEADER_TYPE_NORMAL)
        s.set(PciCfg.SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        s.set(PciCfg.SUBSYSTEM_ID, 2, subsystem_id)
        s.set(PciCfg.INTERRUPT_LINE, 1, 0, wmask=0xFF)
        s.set(PciCfg.INTERRUPT_PIN, 1, interrupt_pin)
        for bar in bars:
            self._init_bar(bar)

    def _init_bar(self, bar: BarSpec) -> None:
        offset = PCI_BAR_OFFSETS[bar.index]
        low_mask = PCI_BAR_IO_MASK if bar.kind is BarKind.IO else PCI_BAR_MEM_MASK
        self.space.set(offset, 4, bar.type_bits, wmask=low_mask & ~(bar.size - 1) & 0xFFFFFFFF)
        if bar.kind is BarKind.MEM64:
            self.space.set(offset + 4, 4, 0, wmask=(~((bar.size - 1) >> 32)) & 0xFFFFFFFF)

    @property
    def command(self) -> int:
        return self.space.get(PciCfg.COMMAND, 2)

    def bar_address(self, index: int) -> int | None:
        """The address BAR ``index`` decodes at, or None if the BAR is absent or decoding is off."""
        bar = self.bars.get(index)
        if bar is None:
            return None
        enable = PciCommand.IO if bar.kind is BarKind.IO else PciCommand.MEMORY
        if not self.command & enable:
            return None
        offset = PCI_BAR_OFFSETS[index]
        low = self.space.get(offset, 4)
        if bar.kind is BarKind.IO:
            return low & PCI_BAR_IO_MASK
        addr = low & PCI_BAR_MEM_MASK
        if bar.kind is BarKind.MEM64:
            addr |= self.space.get(offset + 4, 4) << 32
        return addr
