"""An in-process machine: guest RAM, a PCI host bridge and virtio-mmio windows, all in Python.

It plays the platform for the driver side (:class:`~pyvirtio.platform.interface.Platform`) while the
devices on it are pyvirtio's own models (:class:`~pyvirtio.pci.function.VirtioPciFunction`,
:class:`~pyvirtio.mmio.device.VirtioMmioDevice`).  Like a board without firmware, it leaves every
BAR unassigned: the driver's scan sizes and places them, exactly as under QEMU's q35.

Guest RAM is one memfd mapped twice — the driver's mapping and the devices' — so a bug that
confuses the two shows up as it would between two processes (as in :mod:`pyvirtio.loopback`).
Physical addresses are the same on both sides (PCI devices master guest-physical addresses).

Address decoding: an access goes to a virtio-mmio window if one covers it, else to a PCI BAR
that decodes it (memory or I/O decoding on in the command register), else it is a master abort
(reads all ones, writes vanish).  MSI messages are writes of ``data`` to 0xFEE00000; the machine
turns them into the callbacks the driver registered, synchronously, from the device's call.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from typing import Callable

from ..alloc import GuestAllocator
from ..device import VirtioDevice
from ..errors import UsageError
from ..memory import GuestMemory, Region
from ..mmio.device import WINDOW_SIZE, VirtioMmioDevice
from ..virtq.kinds import RingLayout
from ..spec.pci import PCI_HEADER_TYPE_MULTI_FUNCTION, PciCfg
from ..pci.config import BarKind
from ..pci.function import VirtioPciFunction
from ..pci.scan import PciAddress
from .interface import check_access

log = logging.getLogger(__name__)

DEFAULT_RAM_BASE = 0x1000_0000
DEFAULT_RAM_SIZE = 16 << 20
#: x86's MSI address window; messages carry the vector in ``data``.
MSI_ADDRESS = 0xFEE0_0000
MSI_WINDOW = 0x10_0000
#: Where microvm-like machines put virtio-mmio windows (QEMU's microvm uses the same base).
MMIO_BASE = 0xFEB0_0000
FIRST_MMIO_IRQ = 5


class _Placeholder(VirtioDevice):
    """What sits behind an empty virtio-mmio window: DeviceID 0 and no queues."""

    device_type = 0
    num_queues = 0


class InProcessLine:
    """A level-triggered line a device drives and a driver reads."""

    def __init__(self, machine: "InProcessMachine"):
        self._machine = machine
        self._level = False
        self._handler: Callable[[], None] | None = None

    def level(self) -> bool:
        return self._level

    def set_handler(self, handler: Callable[[], None] | None) -> None:
        self._handler = handler

    def drive(self, level: bool) -> None:
        self._level = level
        self._machine.kick()
        if level and self._handler is not None:
            self._handler()


class InProcessMsi:
    """MSI controller: hands out ``(0xFEE00000, vector)`` messages and runs their handlers."""

    def __init__(self, machine: "InProcessMachine"):
        self._machine = machine
        self._handlers: dict[tuple[int, int], Callable[[], None]] = {}
        self._next = 0x20

    def allocate(self, handler: Callable[[], None]) -> tuple[int, int]:
        message = (MSI_ADDRESS, self._next)
        self._next += 1
        self._handlers[message] = handler
        return message

    def release(self, address: int, data: int) -> None:
        self._handlers.pop((address, data), None)

    def poll(self) -> int:
        return 0  # delivery is immediate

    def deliver(self, address: int, data: int) -> None:
        self._machine.kick()
        handler = self._handlers.get((address, data))
        if handler is None:
            log.info("MSI %#x <- %#x has no handler: dropped", address, data)
            return
        handler()


class InProcessMachine:
    """A platform whose devices are pyvirtio models in this process."""

    mmio_window = (0xE000_0000, 0xFEB0_0000)
    io_window = (0xC000, 0x1_0000)

    def __init__(self, ram_size: int = DEFAULT_RAM_SIZE, ram_base: int = DEFAULT_RAM_BASE):
        self._fd = os.memfd_create("pyvirtio-machine", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, ram_size)
        maps = [mmap.mmap(self._fd, ram_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) for _ in range(2)]
        self.memory = GuestMemory([Region(ram_base, ram_size, memoryview(maps[0]), _owner=maps[0])])
        self.device_memory = GuestMemory([Region(ram_base, ram_size, memoryview(maps[1]), _owner=maps[1])])
        self.allocator = GuestAllocator(ram_base, ram_size)
        self.msi = InProcessMsi(self)
        self.functions: dict[PciAddress, VirtioPciFunction] = {}
        self.windows: list[tuple[int, int, int, VirtioMmioDevice]] = []  # (base, size, irq, window)
        self._intx: dict[PciAddress, InProcessLine] = {}
        self._irqs: dict[int, InProcessLine] = {}
        self._cond = threading.Condition()
        self._epoch = 0

    # --- building the machine -------------------------------------------------------------------

    def add_pci(self, device: VirtioDevice, slot: int | None = None, function: int = 0,
                **options) -> VirtioPciFunction:
        """Plug ``device`` into bus 0 (the next free slot from 1) as a virtio PCI function.  A
        function other than 0 needs function 0 of its slot, which becomes multi-function."""
        if slot is None:
            slot = next(s for s in range(1, 32) if PciAddress(0, s, 0) not in self.functions)
        addr = PciAddress(0, slot, function)
        if addr in self.functions or not 0 <= function < 8:
            raise UsageError(f"function {addr} is taken or invalid")
        if function and PciAddress(0, slot, 0) not in self.functions:
            raise UsageError(f"{addr}: slot {slot} has no function 0")
        line = self._intx[addr] = InProcessLine(self)
        fn = VirtioPciFunction(device, self.device_memory, msi=self.msi.deliver, intx=line.drive, **options)
        self.functions[addr] = fn
        if function:
            self.functions[PciAddress(0, slot, 0)].space.put(PciCfg.HEADER_TYPE, 1, PCI_HEADER_TYPE_MULTI_FUNCTION)
        return fn

    def add_mmio(self, device: VirtioDevice, base: int | None = None, irq: int | None = None,
                 **options) -> VirtioMmioDevice:
        """Map ``device`` as a virtio-mmio window (default: the next 512-byte slot from 0xfeb00000)."""
        n = len(self.windows)
        base = MMIO_BASE + n * WINDOW_SIZE if base is None else base
        irq = FIRST_MMIO_IRQ + n if irq is None else irq
        line = self._irqs.setdefault(irq, InProcessLine(self))
        window = VirtioMmioDevice(device, self.device_memory, irq=line.drive, **options)
        self.windows.append((base, window.size, irq, window))
        return window

    def add_empty_mmio(self, base: int | None = None, irq: int | None = None) -> VirtioMmioDevice:
        """A placeholder window (DeviceID 0, 4.2.2): present, driving nothing."""
        return self.add_mmio(_Placeholder(), base, irq)

    def kernel_cmdline(self) -> str:
        """The windows in Linux's ``virtio_mmio.device=SIZE@ADDR:IRQ`` syntax."""
        return " ".join(f"virtio_mmio.device={size}@{base:#x}:{irq}" for base, size, irq, _ in self.windows)

    def device_tree(self) -> list[dict]:
        """The windows as device-tree-like nodes (the spec's binding, 4.2.1)."""
        return [{"name": f"virtio_mmio@{base:x}", "compatible": "virtio,mmio", "reg": [base, size],
                 "interrupts": [irq]} for base, size, irq, _ in self.windows]

    # --- configuration cycles -------------------------------------------------------------------

    def pci_config_read(self, addr: PciAddress, offset: int, size: int) -> int:
        fn = self.functions.get(addr)
        if fn is None:
            check_access(size)
            return (1 << (8 * size)) - 1  # no function: master abort
        return fn.config_read(offset, size)

    def pci_config_write(self, addr: PciAddress, offset: int, size: int, value: int) -> None:
        fn = self.functions.get(addr)
        if fn is not None:
            fn.config_write(offset, size, value)

    # --- address decoding -----------------------------------------------------------------------

    def _decode(self, addr: int, size: int, io: bool):
        if not io:
            for base, wsize, _irq, window in self.windows:
                if base <= addr and addr + size <= base + wsize:
                    return window.read, window.write, addr - base
        for fn in self.functions.values():
            for index, bar in fn.bars.items():
                if (bar.kind is BarKind.IO) != io:
                    continue
                bar_base = fn.header.bar_address(index)
                if bar_base is not None and bar_base <= addr and addr + size <= bar_base + bar.size:
                    return (lambda o, s, i=index, f=fn: f.bar_read(i, o, s),
                            lambda o, s, v, i=index, f=fn: f.bar_write(i, o, s, v), addr - bar_base)
        return None

    def mmio_read(self, addr: int, size: int) -> int:
        check_access(size)
        hit = self._decode(addr, size, io=False)
        return hit[0](hit[2], size) if hit else (1 << (8 * size)) - 1

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        check_access(size)
        if MSI_ADDRESS <= addr < MSI_ADDRESS + MSI_WINDOW and size == 4:
            self.msi.deliver(addr, value)
            return
        hit = self._decode(addr, size, io=False)
        if hit:
            hit[1](hit[2], size, value)

    def io_read(self, port: int, size: int) -> int:
        check_access(size)
        hit = self._decode(port, size, io=True)
        return hit[0](hit[2], size) if hit else (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        check_access(size)
        hit = self._decode(port, size, io=True)
        if hit:
            hit[1](hit[2], size, value)

    # --- interrupts -----------------------------------------------------------------------------

    def irq_line(self, irq: int) -> InProcessLine | None:
        return self._irqs.get(irq)

    def intx_line(self, addr: PciAddress) -> InProcessLine | None:
        return self._intx.get(addr)

    def kick(self) -> None:
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def event_epoch(self) -> int:
        return self._epoch

    def wait_event(self, epoch: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._epoch != epoch, timeout)

    # --- memory coherence: one shared RAM, nothing to do ----------------------------------------

    def ring_added(self, layout: RingLayout) -> None:
        pass

    def buffer_allocated(self, addr: int, size: int) -> None:
        pass

    def buffer_freed(self, addr: int) -> None:
        pass

    def before_wait(self) -> bool:
        return False

    def after_wait(self) -> bool:
        return False

    def close(self) -> None:
        for fn in self.functions.values():
            fn.close()
        for *_, window in self.windows:
            window.close()
        self.functions.clear()
        self.windows.clear()
        self.memory.close()
        self.device_memory.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "InProcessMachine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
