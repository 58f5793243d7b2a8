"""QEMU's built-in virtio devices as the reference, driven from Python through qtest.

:class:`QemuMachine` starts ``qemu-system-x86_64`` (q35 or microvm, TCG, the CPU parked), and
presents it as a driver-side platform: :meth:`QemuMachine.discover` returns a
:class:`~pyvirtio.pci.PciTransport` per virtio PCI function (q35) or a
:class:`~pyvirtio.mmio.MmioTransport` per populated virtio-mmio window (microvm), so pyvirtio's
drivers run unchanged against QEMU's devices.  See :mod:`.memory` for how rings in QEMU's RAM stay
coherent with the driver's view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import VirtioError
from ..mmio.discovery import discover_mmio
from ..pci import scan_pci
from ..transport import DriverTransport
from .client import QtestClient, QtestError
from .memory import QtestMemory
from .platform import (Q35_MMIO_WINDOW, QtestPlatform, microvm_args, microvm_layout, microvm_machine,
                       microvm_windows)
from .qemu import QemuQtest, QemuStartError, machine_type, qemu_available, qemu_binary, split_machine

__all__ = ["Discovered", "QemuMachine", "QemuQtest", "QemuStartError", "QtestClient", "QtestError",
           "QtestMemory", "QtestPlatform", "qemu_available", "qemu_binary", "split_machine"]


@dataclass
class Discovered:
    transports: list[DriverTransport] = field(default_factory=list)
    rejected: list[tuple[str, VirtioError]] = field(default_factory=list)


class QemuMachine:
    """A QEMU process under qtest plus the platform and discovery for its machine type."""

    def __init__(self, device_args: Sequence[str] = (), *, machine: str = "q35", memory: str = "256M",
                 interrupts: str = "auto", qemu: str | None = None, running: bool = True,
                 split_only: bool = False):
        self.kind = machine_type(machine)
        args = list(device_args)
        if self.kind == "microvm":
            machine = microvm_machine(machine)
            args = microvm_args(args)
        self.machine = machine
        self.interrupts = interrupts
        #: Hide VIRTIO_F_RING_PACKED from the drivers on every transport (split rings even with
        #: ``packed=on``), for comparisons; as ``VhostUserTransport(split_only=True)``.
        self.split_only = split_only
        self.qemu = QemuQtest(args, machine=machine, memory=memory, qemu=qemu, running=running)
        self.platform: QtestPlatform | None = None

    def start(self) -> "QemuMachine":
        self.qemu.start()
        try:
            intercept = "ioapic" if self.kind == "microvm" else None
            self.platform = QtestPlatform(self.client, mmio_window=Q35_MMIO_WINDOW, intercept=intercept)
        except BaseException:
            self.qemu.close()
            raise
        return self

    @property
    def client(self) -> QtestClient:
        if self.qemu.client is None:
            raise QemuStartError("QEMU is not started")
        return self.qemu.client

    def discover(self) -> Discovered:
        """Every virtio device of the machine as a DriverTransport."""
        if self.platform is None:
            raise QemuStartError("QEMU is not started")
        found = Discovered()
        if self.kind == "microvm":
            layout = microvm_layout(self.machine)
            mmio = discover_mmio(self.platform, microvm_windows(self.client, **layout),
                                 split_only=self.split_only)
            found.transports.extend(mmio.transports)
            found.rejected.extend((str(w), e) for w, e in mmio.rejected)
        else:
            pci = scan_pci(self.platform, interrupts=self.interrupts, split_only=self.split_only)
            found.transports.extend(pci.transports)
            found.rejected.extend((str(a), e) for a, e in pci.rejected)
        return found

    def close(self) -> None:
        self.qemu.close()
        self.platform = None

    def __enter__(self) -> "QemuMachine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
