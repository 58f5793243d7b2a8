"""Driver-side PCI enumeration ([PCI] 6.1-6.7): find functions, walk capabilities, size and
assign BARs.

Everything goes through a configuration accessor (``pci_config_read(addr, offset, size)`` /
``pci_config_write(...)``): pyvirtio's in-process machine, or QEMU's ports 0xcf8/0xcfc over qtest.
The device is not trusted: a capability pointer that leaves the configuration space, points into
the header, or loops is a :class:`PciCapabilityError`, not a hang; a BAR that decodes to nothing
sensible is ignored.

Platforms that boot without firmware (QEMU's q35 under qtest) leave BARs unassigned;
:func:`assign_resources` places them in the platform's 32-bit MMIO hole and I/O window, then turns
on memory decoding and bus mastering.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..errors import DeviceFault, Scope, UsageError
from ..spec.pci import (PCI_BAR_IO_MASK, PCI_BAR_MEM_MASK, PCI_BAR_MEM_PREFETCH, PCI_BAR_MEM_TYPE_64,
                        PCI_BAR_OFFSETS, PCI_BAR_SPACE_IO, PCI_CONFIG_SPACE_SIZE,
                        PCI_HEADER_TYPE_MULTI_FUNCTION, PCI_STD_HEADER_SIZE, PCI_STD_NUM_BARS, PciCfg,
                        PciCommand, PciStatus)
from .config import BarKind

log = logging.getLogger(__name__)

#: More capabilities than fit in 192 bytes of 4-byte-aligned headers means a loop.
MAX_CAPABILITIES = (PCI_CONFIG_SPACE_SIZE - PCI_STD_HEADER_SIZE) // 4


class PciCapabilityError(DeviceFault):
    """The function's capability list or a capability in it is malformed."""

    scope = Scope.DEVICE


class PciAddress(NamedTuple):
    bus: int
    device: int
    function: int

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.device:02x}.{self.function:x}"


class ConfigAccess(Protocol):
    def pci_config_read(self, addr: PciAddress, offset: int, size: int) -> int: ...

    def pci_config_write(self, addr: PciAddress, offset: int, size: int, value: int) -> None: ...


@dataclass
class Bar:
    """A BAR as the driver found it."""

    index: int
    kind: BarKind
    size: int
    address: int = 0
    prefetchable: bool = False

    @property
    def is_io(self) -> bool:
        return self.kind is BarKind.IO


@dataclass
class PciFunction:
    """One function found on the bus: its IDs, BARs and capability list."""

    address: PciAddress
    vendor_id: int
    device_id: int
    revision: int
    class_code: int
    subsystem_vendor_id: int
    subsystem_id: int
    bars: dict[int, Bar] = field(default_factory=dict)
    capabilities: list[tuple[int, int]] = field(default_factory=list)  # (offset, cap id)


# --- enumeration --------------------------------------------------------------------------------

def enumerate_bus(acc: ConfigAccess, bus: int = 0) -> list[PciAddress]:
    """Every function present on ``bus`` (devices 0-31; functions 1-7 of multi-function devices)."""
    found = []
    for dev in range(32):
        addr = PciAddress(bus, dev, 0)
        if not _present(acc, addr):
            continue
        found.append(addr)
        if acc.pci_config_read(addr, PciCfg.HEADER_TYPE, 1) & PCI_HEADER_TYPE_MULTI_FUNCTION:
            found.extend(a for a in (PciAddress(bus, dev, fn) for fn in range(1, 8)) if _present(acc, a))
    return found


def _present(acc: ConfigAccess, addr: PciAddress) -> bool:
    return acc.pci_config_read(addr, PciCfg.VENDOR_ID, 2) not in (0xFFFF, 0x0000)


def read_function(acc: ConfigAccess, addr: PciAddress) -> PciFunction:
    r = acc.pci_config_read
    fn = PciFunction(addr, r(addr, PciCfg.VENDOR_ID, 2), r(addr, PciCfg.DEVICE_ID, 2),
                     r(addr, PciCfg.REVISION_ID, 1), r(addr, PciCfg.REVISION_ID, 4) >> 8,
                     r(addr, PciCfg.SUBSYSTEM_VENDOR_ID, 2), r(addr, PciCfg.SUBSYSTEM_ID, 2))
    fn.bars = probe_bars(acc, addr)
    fn.capabilities = walk_capabilities(acc, addr)
    return fn


def walk_capabilities(acc: ConfigAccess, addr: PciAddress) -> list[tuple[int, int]]:
    """``(offset, capability id)`` for each capability, in list order.  A pointer into the header
    or past the space, or a list that comes back on itself, raises PciCapabilityError."""
    if not acc.pci_config_read(addr, PciCfg.STATUS, 2) & PciStatus.CAP_LIST:
        return []
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    ptr = acc.pci_config_read(addr, PciCfg.CAPABILITY_LIST, 1) & ~3
    while ptr:
        if ptr < PCI_STD_HEADER_SIZE or ptr > PCI_CONFIG_SPACE_SIZE - 4:
            raise PciCapabilityError(f"{addr}: capability pointer {ptr:#x} is outside 0x40..0xfc")
        if ptr in seen or len(seen) >= MAX_CAPABILITIES:
            raise PciCapabilityError(f"{addr}: capability list loops at {ptr:#x}")
        seen.add(ptr)
        out.append((ptr, acc.pci_config_read(addr, ptr, 1)))
        ptr = acc.pci_config_read(addr, ptr + 1, 1) & ~3
    return out


# --- BARs ([PCI] 6.2.5.1) ------------------------------------------------------------------------

def probe_bars(acc: ConfigAccess, addr: PciAddress) -> dict[int, Bar]:
    """Size every BAR by writing all ones and reading back (decoding off meanwhile)."""
    r, w = acc.pci_config_read, acc.pci_config_write
    command = r(addr, PciCfg.COMMAND, 2)
    w(addr, PciCfg.COMMAND, 2, command & ~(PciCommand.IO | PciCommand.MEMORY))
    bars: dict[int, Bar] = {}
    try:
        i = 0
        while i < PCI_STD_NUM_BARS:
            bar, step = _probe_bar(acc, addr, i)
            if bar is not None:
                bars[i] = bar
            i += step
    finally:
        w(addr, PciCfg.COMMAND, 2, command)
    return bars


def _size_register(acc: ConfigAccess, addr: PciAddress, offset: int) -> tuple[int, int]:
    original = acc.pci_config_read(addr, offset, 4)
    acc.pci_config_write(addr, offset, 4, 0xFFFFFFFF)
    sized = acc.pci_config_read(addr, offset, 4)
    acc.pci_config_write(addr, offset, 4, original)
    return original, sized


def _lowest_bit(value: int) -> int:
    return value & -value


def _probe_bar(acc: ConfigAccess, addr: PciAddress, i: int) -> tuple[Bar | None, int]:
    offset = PCI_BAR_OFFSETS[i]
    original, sized = _size_register(acc, addr, offset)
    if sized in (0, 0xFFFFFFFF) and original in (0, 0xFFFFFFFF):
        return None, 1
    if original & PCI_BAR_SPACE_IO:
        size = _lowest_bit(sized & PCI_BAR_IO_MASK & 0xFFFF)
        return (Bar(i, BarKind.IO, size, original & PCI_BAR_IO_MASK) if size else None), 1
    mem_type = original & 0x6
    prefetch = bool(original & PCI_BAR_MEM_PREFETCH)
    if mem_type == PCI_BAR_MEM_TYPE_64:
        if i == PCI_STD_NUM_BARS - 1:
            log.warning("%s: BAR%d claims 64 bits but is the last BAR: ignored", addr, i)
            return None, 1
        orig_hi, sized_hi = _size_register(acc, addr, offset + 4)
        size = _lowest_bit(((sized_hi << 32) | (sized & PCI_BAR_MEM_MASK)))
        address = (orig_hi << 32) | (original & PCI_BAR_MEM_MASK)
        return (Bar(i, BarKind.MEM64, size, address, prefetch) if size else None), 2
    if mem_type != 0:
        log.warning("%s: BAR%d has reserved memory type %#x: ignored", addr, i, mem_type)
        return None, 1
    size = _lowest_bit(sized & PCI_BAR_MEM_MASK)
    return (Bar(i, BarKind.MEM32, size, original & PCI_BAR_MEM_MASK, prefetch) if size else None), 1


class ResourceAllocator:
    """Hands out naturally aligned ranges of a platform's MMIO and I/O windows, avoiding ranges
    that firmware already assigned."""

    def __init__(self, mmio_window: tuple[int, int], io_window: tuple[int, int]):
        self.windows = {False: list(mmio_window), True: list(io_window)}
        self.taken: list[tuple[int, int]] = []

    def reserve(self, start: int, size: int) -> None:
        self.taken.append((start, start + size))

    def allocate(self, size: int, io: bool) -> int:
        cursor, end = self.windows[io]
        addr = (cursor + size - 1) & ~(size - 1)
        while any(addr < e and s < addr + size for s, e in self.taken):
            addr = (max(e for s, e in self.taken if addr < e and s < addr + size) + size - 1) & ~(size - 1)
        if addr + size > end:
            raise UsageError(f"no room for a {size:#x}-byte {'I/O' if io else 'memory'} BAR "
                             f"in [{cursor:#x}, {end:#x})")
        self.windows[io][0] = addr + size
        self.reserve(addr, size)
        return addr


def assign_resources(acc: ConfigAccess, functions: list[PciFunction], allocator: ResourceAllocator) -> None:
    """Give every unassigned BAR an address, then enable decoding and bus mastering."""
    for fn in functions:
        for bar in fn.bars.values():
            if bar.address:
                allocator.reserve(bar.address, bar.size)
    for fn in functions:
        command = acc.pci_config_read(fn.address, PciCfg.COMMAND, 2)
        for bar in fn.bars.values():
            if not bar.address:
                bar.address = allocator.allocate(bar.size, bar.is_io)
                _write_bar(acc, fn.address, bar)
        if any(not b.is_io for b in fn.bars.values()):
            command |= PciCommand.MEMORY
        if any(b.is_io for b in fn.bars.values()):
            command |= PciCommand.IO
        acc.pci_config_write(fn.address, PciCfg.COMMAND, 2, command | PciCommand.MASTER)


def _write_bar(acc: ConfigAccess, addr: PciAddress, bar: Bar) -> None:
    offset = PCI_BAR_OFFSETS[bar.index]
    acc.pci_config_write(addr, offset, 4, bar.address & 0xFFFFFFFF)
    if bar.kind is BarKind.MEM64:
        acc.pci_config_write(addr, offset + 4, 4, bar.address >> 32)
