"""QEMU over qtest as a driver-side :class:`~pyvirtio.platform.interface.Platform`.

* PCI configuration cycles use the x86 configuration mechanism #1: the address goes to port
  0xcf8 (``0x80000000 | bus << 16 | device << 11 | function << 8 | register``), the data moves
  through ports 0xcfc-0xcff.
* MMIO and port accesses are qtest ``read*/write*`` and ``in*/out*`` requests.  Before each write
  the guest memory is published (:mod:`.memory`): an uncached write on x86 is ordered after all
  earlier stores, so the device sees the rings as they were when the driver rang the doorbell.
* Rings and buffers live in a window of guest RAM nothing else uses (16 MiB at 16 MiB by default,
  with ``-m 256``), shadowed by :class:`~pyvirtio.qtest.memory.QtestMemory`.
* MSI-X: each message's address is a 4-byte slot in a page of guest RAM below that window, its
  data non-zero.  QEMU's MSI-X write lands in RAM (only 0xFEExxxxx would reach the APIC);
  :meth:`QtestMsi.poll` reads the slots, clears the ones that fired, and runs their handlers.
* Interrupt lines (virtio-mmio): ``irq_intercept_in ioapic`` makes QEMU report the IOAPIC's input
  pins as asynchronous ``IRQ raise/lower N`` lines; a window's line is its GSI.
* INTx# of a PCI function is read from the Interrupt Status bit of its PCI Status register,
  which a virtio device keeps equal to "ISR is non-zero" (4.1.4.5.1) — no interrupt routing needed.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from ..alloc import GuestAllocator
from ..errors import UsageError
from ..mmio.discovery import MmioWindow
from ..platform.interface import check_access
from ..pci.scan import PciAddress
from ..spec.mmio import MAGIC_VALUE
from ..spec.pci import PciCfg, PciStatus
from ..virtq.kinds import RingLayout
from .client import QtestClient
from .memory import QtestMemory

log = logging.getLogger(__name__)

CONFIG_ADDRESS, CONFIG_DATA = 0xCF8, 0xCFC
DEFAULT_RAM_BASE = 0x100_0000
DEFAULT_RAM_SIZE = 16 << 20
MSI_AREA = 0x1000
#: The start of the 32-bit MMIO hole a q35 guest's firmware would use; we assign BARs from here.
Q35_MMIO_WINDOW = (0xE000_0000, 0xFEC0_0000)
IO_WINDOW = (0xC000, 0x1_0000)
#: microvm: virtio-mmio transports every 512 bytes from 0xfeb00000 (QEMU hw/i386/microvm.c).
MICROVM_MMIO_BASE = 0xFEB0_0000
MICROVM_MMIO_STRIDE = 0x200
#: Polling backoff while waiting for an MSI-X message to land in RAM (seconds).
POLL_MIN, POLL_MAX = 0.0002, 0.005


class QtestMsi:
    """MSI messages written into a page of guest RAM, found by polling."""

    def __init__(self, client: QtestClient, base: int, size: int = MSI_AREA):
        self._client = client
        self.base = base
        self.slots = size // 4
        self._handlers: dict[int, Callable[[], None]] = {}
        self.delivered = 0

    def allocate(self, handler: Callable[[], None]) -> tuple[int, int]:
        slot = next((s for s in range(self.slots) if s not in self._handlers), None)
        if slot is None:
            raise UsageError("no MSI slots left")
        self._handlers[slot] = handler
        self._client.mem_write(self.base + 4 * slot, 4, 0)
        return self.base + 4 * slot, 0x5650_0000 | slot  # data: non-zero, names the slot

    def release(self, address: int, data: int) -> None:
        self._handlers.pop((address - self.base) // 4, None)

    def poll(self) -> int:
        if not self._handlers:
            return 0
        top = max(self._handlers) + 1
        raw = self._client.read_bytes(self.base, 4 * top)
        fired = [s for s in range(top) if raw[4 * s:4 * s + 4] != b"\0\0\0\0"]
        if not fired:
            return 0
        self._client.pipeline([f"writel {self.base + 4 * s:#x} 0x0" for s in fired])
        for slot in fired:
            handler = self._handlers.get(slot)
            if handler is not None:
                self.delivered += 1
                handler()
        return len(fired)


class QtestIrqLine:
    """An IOAPIC input pin reported by ``irq_intercept_in``."""

    def __init__(self, client: QtestClient, pin: int):
        self._client = client
        self.pin = pin

    def level(self) -> bool:
        return self._client.irq_levels.get(self.pin, False)

    def set_handler(self, handler) -> None:
        pass  # levels arrive asynchronously; the transport checks them while it waits


class PolledIntx:
    """A PCI function's INTx# state, read from the Interrupt Status bit of its Status register."""

    def __init__(self, platform: "QtestPlatform", addr: PciAddress):
        self._platform = platform
        self.addr = addr

    def level(self) -> bool:
        return bool(self._platform.pci_config_read(self.addr, PciCfg.STATUS, 2) & PciStatus.INTERRUPT)

    def set_handler(self, handler) -> None:
        pass


class QtestPlatform:
    """The guest side of a QEMU machine under qtest."""

    io_window = IO_WINDOW

    def __init__(self, client: QtestClient, *, ram_base: int = DEFAULT_RAM_BASE,
                 ram_size: int = DEFAULT_RAM_SIZE, mmio_window: tuple[int, int] = Q35_MMIO_WINDOW,
                 intercept: str | None = None):
        self.client = client
        self.msi = QtestMsi(client, ram_base)
        self.memory = QtestMemory(client, ram_base + MSI_AREA, ram_size - MSI_AREA)
        self.allocator = GuestAllocator(ram_base + MSI_AREA, ram_size - MSI_AREA)
        self.mmio_window = mmio_window
        self.intercepting = False
        if intercept:
            client.irq_intercept_in(intercept)
            self.intercepting = True
        self._poll = POLL_MIN

    # --- configuration mechanism #1 -------------------------------------------------------------

    def _select(self, addr: PciAddress, offset: int) -> None:
        self.client.port_out(CONFIG_ADDRESS, 4, 0x8000_0000 | addr.bus << 16 | addr.device << 11
                             | addr.function << 8 | (offset & 0xFC))

    def pci_config_read(self, addr: PciAddress, offset: int, size: int) -> int:
        check_access(size)
        if not 0 <= offset <= 0x100 - size or offset % size or size == 8:
            return int.from_bytes(bytes(self._config_byte(addr, offset + i) for i in range(size)), "little")
        self._select(addr, offset)
        return self.client.port_in(CONFIG_DATA + (offset & 3), size)

    def _config_byte(self, addr: PciAddress, offset: int) -> int:
        if not 0 <= offset < 0x100:
            return 0xFF
        self._select(addr, offset)
        return self.client.port_in(CONFIG_DATA + (offset & 3), 1)

    def pci_config_write(self, addr: PciAddress, offset: int, size: int, value: int) -> None:
        check_access(size)
        if not 0 <= offset <= 0x100 - size or offset % size or size == 8:
            for i, b in enumerate(value.to_bytes(size, "little")):
                if 0 <= offset + i < 0x100:
                    self._select(addr, offset + i)
                    self.client.port_out(CONFIG_DATA + ((offset + i) & 3), 1, b)
            return
        self._select(addr, offset)
        self.client.port_out(CONFIG_DATA + (offset & 3), size, value)

    # --- MMIO and ports -------------------------------------------------------------------------

    def mmio_read(self, addr: int, size: int) -> int:
        return self.client.mem_read(addr, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.memory.publish()
        self.client.mem_write(addr, size, value)

    def io_read(self, port: int, size: int) -> int:
        return self.client.port_in(port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.memory.publish()
        self.client.port_out(port, size, value)

    # --- interrupts -----------------------------------------------------------------------------

    def irq_line(self, irq: int) -> QtestIrqLine | None:
        return QtestIrqLine(self.client, irq) if self.intercepting else None

    def intx_line(self, addr: PciAddress) -> PolledIntx:
        return PolledIntx(self, addr)

    def event_epoch(self) -> int:
        return self.client.irq_epoch

    def wait_event(self, epoch: int, timeout: float) -> None:
        """Sleep briefly (an MSI-X write to RAM wakes nobody), returning early on an IRQ line."""
        if self.client.irq_epoch != epoch:
            return
        delay = min(timeout, self._poll)
        self._poll = min(self._poll * 2, POLL_MAX)
        if not self.client.wait_async(delay):
            return
        self._poll = POLL_MIN

    # --- memory coherence -----------------------------------------------------------------------

    def ring_added(self, layout: RingLayout) -> None:
        self.memory.add_ring(layout)

    def buffer_allocated(self, addr: int, size: int) -> None:
        self.memory.fresh(addr, size)

    def buffer_freed(self, addr: int) -> None:
        self.memory.forget(addr)

    def before_wait(self) -> bool:
        self._poll = POLL_MIN
        self.memory.publish()
        return self.memory.acquire_rings()

    def after_wait(self) -> bool:
        return self.memory.acquire_rings()


# --- microvm -------------------------------------------------------------------------------------

def microvm_windows(client: QtestClient, *, acpi: bool = True, ioapic2: bool = False) -> list[MmioWindow]:
    """The virtio-mmio transports QEMU's microvm creates, with their GSIs (hw/i386/microvm.c:
    24 transports on GSI 24.. with a second IOAPIC, else 8 on GSI 16.. with ACPI or 5.. without).
    Each is confirmed by reading its magic value."""
    count, irq_base = (24, 24) if ioapic2 else (8, 16 if acpi else 5)
    windows = []
    for i in range(count):
        base = MICROVM_MMIO_BASE + i * MICROVM_MMIO_STRIDE
        if client.mem_read(base, 4) != MAGIC_VALUE:
            break
        windows.append(MmioWindow(base, MICROVM_MMIO_STRIDE, irq_base + i))
    return windows


def microvm_options(machine: str) -> dict[str, str]:
    opts = {}
    for part in machine.split(",")[1:]:
        key, _, value = part.partition("=")
        opts[key] = value
    return opts


def microvm_machine(machine: str = "microvm") -> str:
    """Our microvm: one IOAPIC, so ``irq_intercept_in ioapic`` sees the virtio-mmio lines."""
    return machine if "ioapic2=" in machine else machine + ",ioapic2=off"


def microvm_args(args: Sequence[str]) -> list[str]:
    """QEMU 7.2's microvm transports default to legacy (version 1); ask for version 2."""
    if any("force-legacy" in a for a in args):
        return list(args)
    return ["-global", "virtio-mmio.force-legacy=false", *args]


def _truthy(value: str) -> bool:
    return value.lower() in ("on", "yes", "true", "1", "auto", "")


def microvm_layout(machine: str) -> dict[str, bool]:
    opts = microvm_options(machine)
    return {"acpi": _truthy(opts.get("acpi", "on")), "ioapic2": _truthy(opts.get("ioapic2", "on"))
            and _truthy(opts.get("acpi", "on"))}

